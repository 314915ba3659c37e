"""Operations: liveness, readiness (the student engine answers; every student replica serves the promoted version)
and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from services.gateway.errors import ApiError
from services.gateway.metrics import ServingMetrics
from services.gateway.student_client import StudentClient
from services.registry import AdapterRegistry
from services.store.replicas import ReplicaBoard, ReplicaState, ScrapeTargets

log = logging.getLogger(__name__)


def attach_router(app: FastAPI, student: StudentClient, registry: AdapterRegistry, metrics: ServingMetrics,
                  extra_metrics: list[Callable[[], Awaitable[bytes]]], replicas: ReplicaBoard | None = None,
                  targets: ScrapeTargets | None = None, stale_s: float = 10.0) -> None:
    """`replicas`: the board the student replicas report to (None: a single in-process student); `targets`: where
    the gateway replicas' own metrics are (None: this one only); a replica silent for `stale_s` is gone."""
    router = APIRouter()

    async def live_replicas() -> list[ReplicaState] | None:
        if replicas is None:
            return None
        try:
            return await asyncio.to_thread(replicas.live, stale_s)
        except Exception as e:  # the store unreachable: readiness is the engine's answer alone
            log.warning("replica board unavailable: %r", e)
            return None

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
        body = {"status": "ready", "serving": m["promoted"], "base_model": m["base"], "merged": m.get("merged")}
        live = await live_replicas()
        if live is not None:
            body["replicas"] = [r.as_dict() for r in live]
            unready = [r for r in live if not r.ready]
            if unready and len(unready) == len(live):
                reasons = "; ".join(f"{r.replica}: {r.error or 'not yet on ' + str(r.promoted)}" for r in unready)
                return ApiError(503, f"no student replica serves the promoted version ({reasons})", None,
                                "not_ready").response()
            if unready:  # the others serve: traffic goes on, the unready ones refuse `student`
                body["status"] = "degraded"
        return JSONResponse(body)

    @router.get("/metrics", response_class=PlainTextResponse)
    async def prometheus(part: Literal["all", "shared"] = "all") -> Response:
        """Every series (`all`), or all but this gateway replica's own (`shared`: for a Prometheus that reads each
        replica's own at its scrape target, so nothing is counted twice)."""
        # Read from the registry at scrape time: promotions by a training job or another replica show too.
        promoted = await asyncio.to_thread(registry.promoted)
        metrics.set_promoted(promoted.name if promoted else registry.base_model)
        live = await live_replicas()
        if live is not None:
            metrics.set_replicas(live)
        body = metrics.render(shared_only=part == "shared")
        for extra in extra_metrics:
            try:
                body += await asyncio.wait_for(extra(), timeout=5)
            except Exception as e:  # the debate worker restarting must not break the serving metrics
                log.warning("extra metrics unavailable: %r", e)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    @router.get("/metrics/targets")
    async def scrape_targets() -> Response:
        """Each gateway replica's own metrics endpoint, in Prometheus' HTTP service discovery format."""
        found = await asyncio.to_thread(targets.live, stale_s) if targets is not None else []
        return JSONResponse([{"targets": [address], "labels": {"replica": replica}} for replica, address in found])

    app.include_router(router)
