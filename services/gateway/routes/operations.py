"""Operations: liveness, readiness (the student engine answers) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from services.gateway.errors import ApiError
from services.gateway.metrics import ServingMetrics
from services.gateway.student_client import StudentClient
from services.registry import AdapterRegistry

log = logging.getLogger(__name__)


def attach_router(app: FastAPI, student: StudentClient, registry: AdapterRegistry, metrics: ServingMetrics,
                  extra_metrics: list[Callable[[], Awaitable[bytes]]]) -> None:
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @router.get("/ready")
    async def ready() -> Response:
        try:
            await asyncio.wait_for(student.check_health(), timeout=10)
            m = await student.models()
        except Exception as e:
            return ApiError(503, f"student engine not ready: {type(e).__name__}", None, "not_ready").response()
        return JSONResponse({"status": "ready", "serving": m["promoted"], "base_model": m["base"],
                             "merged": m.get("merged")})

    @router.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        # Read from the registry at scrape time: promotions by a training job or another replica show too.
        promoted = await asyncio.to_thread(registry.promoted)
        metrics.set_promoted(promoted.name if promoted else registry.base_model)
        body = metrics.render()
        for extra in extra_metrics:
            try:
                body += await asyncio.wait_for(extra(), timeout=5)
            except Exception as e:  # the debate worker restarting must not break the serving metrics
                log.warning("extra metrics unavailable: %r", e)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    app.include_router(router)
