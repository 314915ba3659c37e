"""Ray Serve deployment of the training scheduler and the rollout watch: one replica, no CPU reserved (the
training itself reserves its CPUs as a Ray Train job). The gateway reaches it for /admin/train and metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray import serve

from services.config import Settings
from services.registry import AdapterRegistry
from services.scheduler.metrics import TrainingMetrics
from services.scheduler.retention import Retention
from services.scheduler.scheduler import STALE_S, TrainingScheduler
from services.scheduler.watch import RolloutWatch
from services.service_client import ServiceClient, service_url
from services.store.controls import Controls
from services.store.db import Database
from services.store.jobs import JobStore
from services.store.mags import MagStore

log = logging.getLogger(__name__)
POLL_S = 15.0


@serve.deployment(name="Scheduler", num_replicas=1)
class SchedulerDeployment:
    def __init__(self, settings: Settings, model_path: str, base_id: str) -> None:
        logging.basicConfig(level=settings.log_level)
        db = Database(settings.db_url)
        db.create_all()
        self.jobs = JobStore(db)
        registry = AdapterRegistry.from_settings(settings, base_id=base_id, model_path=model_path)
        url = service_url(settings)
        controls = Controls(db)
        client = ServiceClient(settings, url)
        self.scheduler = TrainingScheduler(settings, self.jobs, MagStore(db), url=url, ready=client.ready,
                                           ray_address=ray.get_runtime_context().gcs_address, controls=controls)
        labelled = MagStore(db) if settings.capture.enabled else None
        self.watch = RolloutWatch(settings.training.watch, registry, labelled, client.metrics_text, client.rollback,
                                  spec_of=lambda name: settings.task(name).spec)
        self.metrics = TrainingMetrics(self.jobs, registry, labelled, controls,
                                       tasks={t.name for t in settings.tasks},
                                       spec_of=lambda name: settings.task(name).spec)
        self.settings = settings
        # Jobs of an earlier service process cannot report to this one: close them now.
        for job_id in self.jobs.reap(STALE_S):
            log.warning("training job %d was running when the service stopped: recorded as failed", job_id)
        self._loops = [asyncio.create_task(self._every(POLL_S, self.scheduler.poll, "scheduler"))]
        if settings.training.watch.enabled:
            self._loops.append(asyncio.create_task(
                self._every(settings.training.watch.poll_s, self.watch.check, "rollout watch")))
        if settings.retention.enabled:
            self._loops.append(asyncio.create_task(self._every(
                settings.retention.interval_s, Retention(settings, db, registry).run, "retention")))

    async def _every(self, seconds: float, fn: Any, what: str) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(fn)
            except Exception:  # a failing check must not stop the loop (or serving)
                log.exception("%s failed; retrying in %.0fs", what, seconds)

    async def trigger(self, trigger: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.scheduler.request, trigger)

    async def cancel(self, job_id: int) -> bool:
        return await asyncio.to_thread(self.scheduler.cancel, job_id)

    async def metrics_text(self) -> bytes:
        return await asyncio.to_thread(self.metrics.render)

    async def check_health(self) -> None:
        for task in self._loops:
            if task.done():
                raise RuntimeError(f"scheduler loop ended: {task.exception()!r}")
