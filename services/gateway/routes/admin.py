"""The operators' API: adapter versions (promote, roll back), training jobs, pausing distillation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path
from fastapi.responses import JSONResponse, Response

from services.gateway.auth import Auth
from services.gateway.errors import ApiError
from services.gateway.protocol import PromoteRequest
from services.gateway.routes.openai_api import respond
from services.gateway.serving_adapters import AdapterService
from services.gateway.serving_distillation import DistillationService
from services.gateway.serving_jobs import JobsService

# A training job's id: the store's 64-bit key (a larger number would fail in the database, not as a 4xx).
JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def attach_router(app: FastAPI, auth: Auth, adapters: AdapterService, jobs: JobsService,
                  distillation: DistillationService) -> None:
    router = APIRouter(prefix="/admin", dependencies=[Depends(auth.require_admin)])

    @router.get("/adapters")
    async def list_adapters() -> Response:
        return JSONResponse(await adapters.list())

    @router.post("/adapters/rollback")
    async def rollback(body: PromoteRequest | None = None) -> Response:
        return respond(await adapters.rollback(body.reason if body else None))

    @router.post("/adapters/{version}/promote")
    async def promote(version: str, body: PromoteRequest | None = None) -> Response:
        return respond(await adapters.promote(version, body.reason if body else None))

    @router.post("/train", status_code=202)
    async def train() -> Response:
        result = await jobs.train()
        return result.response() if isinstance(result, ApiError) else JSONResponse(result, status_code=202)

    @router.get("/jobs")
    async def list_jobs(limit: int = 20) -> Response:
        return respond(await jobs.list(max(1, min(limit, 500))))

    @router.get("/jobs/{job_id}")
    async def get_job(job_id: JobId) -> Response:
        return respond(await jobs.get(job_id))

    @router.post("/jobs/{job_id}/cancel")
    async def cancel_job(job_id: JobId) -> Response:
        return respond(await jobs.cancel(job_id))

    @router.get("/distillation")
    async def distillation_state() -> Response:
        return respond(await distillation.state())

    @router.post("/distillation/pause")
    async def pause_distillation(body: PromoteRequest | None = None) -> Response:
        return respond(await distillation.pause(body.reason if body else None))

    @router.post("/distillation/resume")
    async def resume_distillation(body: PromoteRequest | None = None) -> Response:
        return respond(await distillation.resume(body.reason if body else None))

    app.include_router(router)
