"""The FastAPI application: Distillery's cross-cutting layers, and thin routers by area over the serving classes.

`build_app` takes its collaborators (student client, registry, capture sink) as arguments, so the same app runs
inside the Ray Serve ingress or, in tests, in-process around any student. The routes live in `routes/`: the OpenAI
API, the operators' admin API, and operations (health, readiness, metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.capture.policy import CapturePolicy, CaptureSink, NullSink
from services.config import Settings
from services.gateway.auth import Auth
from services.gateway.errors import ApiError
from services.gateway.front_door import install_front_door
from services.gateway.generation import GenerationService
from services.gateway.metrics import ServingMetrics
from services.gateway.openapi import ERRORS, install_openapi
from services.gateway.request_ids import RequestIds
from services.gateway.routes import admin, openai_api, operations
from services.gateway.serving_adapters import AdapterService
from services.gateway.serving_distillation import DistillationService
from services.gateway.serving_feedback import FeedbackService
from services.gateway.serving_jobs import JobsService
from services.gateway.student_client import StudentClient
from services.registry import AdapterRegistry
from services.store.controls import Controls
from services.store.mags import MagStore
from services.store.replicas import ReplicaBoard, ScrapeTargets, stale_after

log = logging.getLogger(__name__)


def build_app(
    settings: Settings,
    *,
    student: StudentClient,
    registry: AdapterRegistry,
    sink: CaptureSink | None = None,
    metrics: ServingMetrics | None = None,
    store: MagStore | None = None,
    extra_metrics: list[Callable[[], Awaitable[bytes]]] | None = None,
    jobs: JobsService | None = None,
    controls: Controls | None = None,
    echo_request_id: bool = True,
    replicas: ReplicaBoard | None = None,
    targets: ScrapeTargets | None = None,
) -> FastAPI:
    """`store`: the capture queue, for /v1/feedback. `extra_metrics`: more exposition appended to /metrics (the
    debate worker's, the training scheduler's). `jobs`: /admin/train and /admin/jobs. `echo_request_id=False`
    behind Ray Serve, whose proxy already returns x-request-id. `replicas`: the board the student replicas report
    to, read by /ready, /metrics and promotions (None: one student in this process). `targets`: where each gateway
    replica's own metrics are, listed at /metrics/targets."""
    app = FastAPI(title="Distillery", version="0.1.0", docs_url="/docs", redoc_url=None, responses=ERRORS)
    install_openapi(app)
    metrics = metrics or ServingMetrics()
    auth = Auth(settings.server)
    capture = CapturePolicy(settings.capture, sink or NullSink(), task_rates={
        t.name: t.sample_rate for t in settings.tasks if t.sample_rate is not None})
    generation = GenerationService(settings, student, metrics, capture, registry.base_model)
    adapters = AdapterService(registry, student, metrics, replicas, settings.student.promotion_wait_s,
                              stale_after(settings.student.registry_poll_s))
    app.state.metrics, app.state.generation = metrics, generation

    # ---- cross-cutting: the front door (body limit, cross-site refusal), request ids, errors in the OpenAI shape
    install_front_door(app, settings.server.max_body_bytes, settings.server.host)
    app.add_middleware(RequestIds, echo=echo_request_id)  # added last: outermost, so refusals carry the id too

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err["loc"] if p != "body"]
        return ApiError(422, f"Invalid request: {'.'.join(loc)}: {err['msg']}", ".".join(loc) or None,
                        "validation_error").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return ApiError(500, f"Internal server error: {type(exc).__name__}", None, "internal_error").response()

    # ---- the routes, by area
    openai_api.attach_router(app, settings, auth, generation, student, registry, adapters,
                             FeedbackService(store, settings))
    admin.attach_router(app, auth, adapters, jobs or JobsService(None, None), DistillationService(controls))
    operations.attach_router(app, student, registry, metrics, extra_metrics or [], replicas, targets,
                             stale_after(settings.student.registry_poll_s))
    return app
