"""/admin/train and /admin/jobs: start a training cycle now, list and inspect cycles, cancel one."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from services.gateway.errors import ApiError
from services.store.jobs import JobStore


class SchedulerClient(Protocol):
    async def trigger(self, trigger: str) -> dict[str, Any]:
        """{"job": the started job} or {"conflict": why not, "running": its id}."""
        ...
    async def cancel(self, job_id: int) -> bool: ...


class JobsService:
    def __init__(self, jobs: JobStore | None, scheduler: SchedulerClient | None) -> None:
        self.jobs, self.scheduler = jobs, scheduler

    def _disabled(self) -> ApiError:
        return ApiError(404, "The training scheduler is not part of this deployment", None, "training_disabled")

    async def train(self) -> dict[str, Any] | ApiError:
        if self.scheduler is None:
            return self._disabled()
        out = await self.scheduler.trigger("api")
        if "conflict" in out:
            return ApiError(409, out["conflict"], None, "job_running")
        return out["job"]  # type: ignore[no-any-return]

    async def list(self, limit: int) -> dict[str, Any] | ApiError:
        if self.jobs is None:
            return self._disabled()
        jobs = await asyncio.to_thread(self.jobs.list, limit)
        return {"object": "list", "data": [j.as_dict() for j in jobs]}

    async def get(self, job_id: int) -> dict[str, Any] | ApiError:
        if self.jobs is None:
            return self._disabled()
        job = await asyncio.to_thread(self.jobs.get, job_id)
        return job.as_dict() if job else ApiError(404, f"no training job {job_id}", "job_id", "job_not_found")

    async def cancel(self, job_id: int) -> dict[str, Any] | ApiError:
        if self.scheduler is None:
            return self._disabled()
        if not await self.scheduler.cancel(job_id):
            return ApiError(409, f"training job {job_id} is not running in this service", "job_id", "not_running")
        return await self.get(job_id)
