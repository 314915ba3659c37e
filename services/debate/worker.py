"""The background loop: claim captured requests from the store, debate them, close them.

Leases make it crash-safe: a claimed item carries `lease_until`, renewed while its debate runs. When a worker
dies (a killed service), its items' leases lapse; the next worker to start (or any live one) marks their
half-recorded debates `interrupted` (kept for audit, never used for training) and re-queues the items, up to
`max_attempts` (a question longer than the student's context fails at once: another attempt would fail alike). No
captured request is dropped silently: it ends `done` or `failed` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable

from services.config import DebateConfig, TaskProfile
from services.debate.engine import DebateEngine, DebateInput
from services.debate.spend import TeacherBudget
from services.store.controls import Controls
from services.store.debates import DebateOutcome
from services.store.mags import CaptureItem, MagStore
from services.tasks.answers import canonical_answer, is_valid

log = logging.getLogger(__name__)


class DebateWorker:
    def __init__(self, engine: DebateEngine, store: MagStore, cfg: DebateConfig, owner: str | None = None,
                 controls: Controls | None = None, task_of: Callable[[str], TaskProfile] | None = None) -> None:
        """`task_of`: a task's profile by name (`Settings.task`); None debates every item without a profile."""
        self.engine, self.store, self.cfg, self.controls = engine, store, cfg, controls
        self.task_of = task_of
        self.budget = TeacherBudget(store, cfg.teacher_tokens_per_hour, cfg.teacher_usd_per_hour)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.running: dict[int, asyncio.Task[None]] = {}
        self.finished = 0

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        last_maintenance = 0.0
        while not stop.is_set():
            try:
                if loop.time() - last_maintenance > self.cfg.lease_s / 3:
                    last_maintenance = loop.time()
                    await asyncio.to_thread(self.store.heartbeat, self.owner, list(self.running), self.cfg.lease_s)
                    requeued, failed = await asyncio.to_thread(self.store.reclaim_expired, self.cfg.max_attempts)
                    if requeued or failed:
                        log.warning("reclaimed items of a stopped worker: %d re-queued, %d failed", requeued, failed)
                free = self.cfg.concurrency - len(self.running)
                paused = self.controls is not None and await asyncio.to_thread(self.controls.paused)
                if free > 0 and not paused and await asyncio.to_thread(self.budget.allows):
                    for item in await asyncio.to_thread(self.store.claim, self.owner, free, self.cfg.lease_s):
                        self.running[item.id] = asyncio.create_task(self._debate(item))
            except Exception:  # the store is unreachable for a moment: serving goes on, so do we
                log.exception("debate worker loop")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.poll_s)
        for task in self.running.values():
            task.cancel()

    async def _checked_label(self, item: CaptureItem, task: TaskProfile | None) -> None:
        """The item's label in its task's canonical form; one the task does not allow is dropped (recorded)."""
        if task is None or item.label is None:
            return
        label: str | None = canonical_answer(item.label, task.spec)
        error = None
        if not is_valid(label, task.spec):
            label, error = None, f"label {item.label[:80]!r} is not a valid answer for task {task.name}: dropped"
            log.warning("capture item %d: %s", item.id, error)
        if label != item.label:
            await asyncio.to_thread(self.store.set_label, item.id, label, error)
            item.label, item.label_source = label, item.label_source if label is not None else None

    async def _debate(self, item: CaptureItem) -> None:
        ok, error = True, None
        task = self.task_of(item.task) if self.task_of is not None else None
        await self._checked_label(item, task)
        # A held-out request a client labelled has its gold already: a debate would only cost teacher calls for
        # data that is never trained on.
        if not (item.held_out and item.label_source == "feedback"):
            try:
                result = await self.engine.run(DebateInput(item.question, item.label, item.label_source, item.id,
                                                           task=task, held_out=item.held_out))
                ok, error = result.outcome != DebateOutcome.FAILED, result.error
            except Exception as e:
                log.exception("debate of capture item %d failed", item.id)
                ok, error = False, f"{type(e).__name__}: {e}"[:500]
        try:
            # A question the student's context cannot hold fails the same way every time: no second attempt.
            permanent = error is not None and "context_length_exceeded" in error
            await asyncio.to_thread(self.store.finish_item, item.id, ok=ok, error=error,
                                    max_attempts=1 if permanent else self.cfg.max_attempts)
        finally:
            self.running.pop(item.id, None)
            self.finished += 1

    async def drain(self) -> None:
        """Run until nothing is queued or running (batch mode and tests)."""
        while True:
            await asyncio.gather(*self.running.values(), return_exceptions=True)
            items = await asyncio.to_thread(self.store.claim, self.owner, self.cfg.concurrency, self.cfg.lease_s)
            if not items and not self.running:
                return
            for item in items:
                self.running[item.id] = asyncio.create_task(self._debate(item))
