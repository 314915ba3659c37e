"""The built-in reference teachers on Ray Serve, at /teachers/<name>/v1 on the service's own port, behind the
internal bearer token (`services.teachers.token`) and the service's body limit."""

from __future__ import annotations

from typing import Any

from ray import serve

from services.config import TeacherConfig
from services.teachers.server import build_teacher_app


@serve.deployment(name="ReferenceTeachers")
@serve.ingress()
class ReferenceTeachersDeployment:
    def __init__(self, teachers: list[TeacherConfig], token: str, max_body_bytes: int) -> None:
        self._app = build_teacher_app(teachers, token=token, max_body_bytes=max_body_bytes)

    def __serve_build_asgi_app__(self) -> Any:
        return self._app
