"""Ray Serve ingress deployment: the FastAPI gateway, talking to the Student deployment by handle."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from services.config import Settings
from services.gateway.app import build_app
from services.gateway.student_client import RayStudentClient
from services.gateway.tokenizer import PromptTokenizer
from services.registry import AdapterRegistry


@serve.deployment(name="Gateway")
@serve.ingress()
class GatewayDeployment:
    def __init__(self, student: Any, settings: Settings, model_path: str, base_id: str) -> None:
        logging.basicConfig(level=settings.log_level)
        registry = AdapterRegistry.from_settings(settings, base_id=base_id, model_path=model_path)
        self._app = build_app(
            settings,
            student=RayStudentClient(student),
            tokenizer=PromptTokenizer(model_path),
            registry=registry,
            echo_request_id=False,  # Ray Serve's proxy sets x-request-id (the client's, or a new uuid)
        )

    def __serve_build_asgi_app__(self) -> Any:
        return self._app
