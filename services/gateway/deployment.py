"""Ray Serve ingress deployment: the FastAPI gateway, talking to the Student deployment by handle."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from services.capture.redact import build_redactor
from services.capture.sink import StoreSink
from services.cluster import replica_identity
from services.config import Settings
from services.gateway.exposure import is_loopback
from services.gateway.metrics import ServingMetrics
from services.gateway.replica_metrics import ReplicaMetricsServer
from services.gateway.serving_jobs import JobsService
from services.gateway.student_client import RayStudentClient
from services.registry import AdapterRegistry
from services.store.controls import Controls
from services.store.db import Database
from services.store.jobs import JobStore
from services.store.mags import MagStore
from services.store.replicas import ReplicaBoard, ScrapeTargets


def _metrics_host(settings: Settings) -> str:
    """Loopback while the service listens on loopback; else this node's address, where Prometheus reaches it."""
    import ray

    return "127.0.0.1" if is_loopback(settings.server.host) else ray.util.get_node_ip_address()


class RaySchedulerClient:
    """The scheduler deployment behind the gateway's JobsService."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def trigger(self, trigger: str) -> dict[str, Any]:
        return await self.handle.trigger.remote(trigger)  # type: ignore[no-any-return]

    async def cancel(self, job_id: int) -> bool:
        return await self.handle.cancel.remote(job_id)  # type: ignore[no-any-return]


@serve.deployment(name="Gateway")
@serve.ingress()
class GatewayDeployment:
    def __init__(self, student: Any, debate: Any | None, scheduler: Any | None, settings: Settings, model_path: str,
                 base_id: str) -> None:
        # Here, not at the top: the process that binds the deployments (`distillery serve`) imports this module,
        # and the app's request models import vLLM's (~13 s on 2 cores) before any replica could start.
        from services.gateway.app import build_app

        logging.basicConfig(level=settings.log_level)
        registry = AdapterRegistry.from_settings(settings, base_id=base_id, model_path=model_path)
        store = sink = None
        db = Database(settings.db_url)
        db.create_all()
        controls = Controls(db)
        if settings.capture.enabled:
            store = MagStore(db)
            sink = self._sink = StoreSink(store, build_redactor(settings.capture), controls=controls,
                                         context_chars=settings.capture.context_chars,
                                         holdout={t.name: t.eval.holdout for t in settings.tasks},
                                         per_key_per_hour=settings.capture.per_key_per_hour,
                                         max_queued=settings.capture.max_queued)
        metrics = ServingMetrics()
        targets = ScrapeTargets(db)
        self._metrics_server = ReplicaMetricsServer(metrics, targets, replica_identity()[0], _metrics_host(settings))
        self._app = build_app(
            settings,
            metrics=metrics,
            student=RayStudentClient(student),
            registry=registry,
            sink=sink,
            store=store,
            extra_metrics=[h.metrics_text.remote for h in (debate, scheduler) if h is not None]
            + ([sink.metrics_text] if sink is not None else []),
            jobs=JobsService(JobStore(db), RaySchedulerClient(scheduler)) if scheduler is not None else None,
            controls=controls,
            echo_request_id=False,  # Ray Serve's proxy sets x-request-id (the client's, or a new uuid)
            replicas=ReplicaBoard(db),
            targets=targets,
        )

    def __del__(self) -> None:
        if getattr(self, "_metrics_server", None) is not None:
            self._metrics_server.close()
        if getattr(self, "_sink", None) is not None:
            self._sink.close()  # graceful shutdown: what the writer still buffers reaches the store

    def __serve_build_asgi_app__(self) -> Any:
        return self._app
