"""/admin/train and /admin/jobs logic (JobsService) over a real scheduler, real job processes, real SQLite."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.config import Settings
from services.gateway.errors import ApiError
from services.gateway.serving_jobs import JobsService
from services.scheduler.scheduler import TrainingScheduler
from services.store.db import Database
from services.store.jobs import JobStore
from services.store.mags import MagStore


class InProcessScheduler:
    """What the Scheduler deployment does for the gateway, without Ray."""

    def __init__(self, sched: TrainingScheduler) -> None:
        self.sched = sched

    async def trigger(self, trigger: str) -> dict[str, Any]:
        return self.sched.request(trigger)

    async def cancel(self, job_id: int) -> bool:
        return self.sched.cancel(job_id)


def sleeper(job_id: int, url: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


def test_train_list_get_cancel(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'd.db'}")
    db.create_all()
    jobs = JobStore(db)
    sched = TrainingScheduler(Settings(data_dir=tmp_path), jobs, MagStore(db), url="http://x", ready=lambda: True,
                              launcher=sleeper)
    svc = JobsService(jobs, InProcessScheduler(sched))

    async def scenario() -> None:
        started = await svc.train()
        assert isinstance(started, dict) and started["status"] == "running" and started["trigger"] == "api"
        conflict = await svc.train()
        assert isinstance(conflict, ApiError) and conflict.status == 409 and conflict.code == "job_running"
        assert f"training job {started['id']} is already running" in conflict.message
        listed = await svc.list(10)
        assert [j["id"] for j in listed["data"]] == [started["id"]]  # type: ignore[index]
        cancelled = await svc.cancel(started["id"])
        assert isinstance(cancelled, dict) and cancelled["status"] == "failed"
        assert cancelled["error"] == "cancelled by an operator"
        again = await svc.cancel(started["id"])
        assert isinstance(again, ApiError) and again.status == 409
        missing = await svc.get(999)
        assert isinstance(missing, ApiError) and missing.status == 404

    asyncio.run(scenario())


def test_without_a_scheduler_the_endpoints_say_so() -> None:
    svc = JobsService(None, None)
    out = asyncio.run(svc.train())
    assert isinstance(out, ApiError) and out.status == 404 and out.code == "training_disabled"
