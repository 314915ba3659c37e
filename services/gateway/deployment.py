"""Ray Serve ingress deployment: the FastAPI gateway, talking to the Student deployment by handle."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from services.capture.redact import build_redactor
from services.capture.sink import StoreSink
from services.config import Settings
from services.gateway.app import build_app
from services.gateway.student_client import RayStudentClient
from services.registry import AdapterRegistry
from services.store.db import Database
from services.store.mags import MagStore
from services.student.tokenizer import PromptTokenizer


@serve.deployment(name="Gateway")
@serve.ingress()
class GatewayDeployment:
    def __init__(self, student: Any, debate: Any | None, settings: Settings, model_path: str, base_id: str) -> None:
        logging.basicConfig(level=settings.log_level)
        registry = AdapterRegistry.from_settings(settings, base_id=base_id, model_path=model_path)
        store = sink = None
        if settings.capture.enabled:
            db = Database(settings.db_url)
            db.create_all()
            store = MagStore(db)
            sink = self._sink = StoreSink(store, build_redactor(settings.capture))
        self._app = build_app(
            settings,
            student=RayStudentClient(student),
            tokenizer=PromptTokenizer(model_path),
            registry=registry,
            sink=sink,
            store=store,
            extra_metrics=(lambda: debate.metrics_text.remote()) if debate is not None else None,
            echo_request_id=False,  # Ray Serve's proxy sets x-request-id (the client's, or a new uuid)
        )

    def __del__(self) -> None:
        if getattr(self, "_sink", None) is not None:
            self._sink.close()  # graceful shutdown: what the writer still buffers reaches the store

    def __serve_build_asgi_app__(self) -> Any:
        return self._app
