"""The built-in reference teachers on Ray Serve, at /teachers/<name>/v1 on the service's own port."""

from __future__ import annotations

from typing import Any

from ray import serve

from services.config import TeacherConfig
from services.teachers.server import build_teacher_app


@serve.deployment(name="ReferenceTeachers")
@serve.ingress()
class ReferenceTeachersDeployment:
    def __init__(self, teachers: list[TeacherConfig]) -> None:
        self._app = build_teacher_app(teachers)

    def __serve_build_asgi_app__(self) -> Any:
        return self._app
