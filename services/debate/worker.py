"""The background loop: claim captured requests from the store, debate them, close them.

Leases make it crash-safe: a claimed item carries `lease_until`, renewed while its debate runs. When a worker
dies (a killed service), its items' leases lapse; the next worker to start (or any live one) marks their
half-recorded debates `interrupted` (kept for audit, never used for training) and re-queues the items, up to
`max_attempts`. No captured request is dropped silently: it ends `done` or `failed` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from services.config import DebateConfig
from services.debate.engine import DebateEngine, DebateInput
from services.store.controls import Controls
from services.store.mags import CaptureItem, MagStore

log = logging.getLogger(__name__)


class DebateWorker:
    def __init__(self, engine: DebateEngine, store: MagStore, cfg: DebateConfig, owner: str | None = None,
                 controls: Controls | None = None) -> None:
        self.engine, self.store, self.cfg, self.controls = engine, store, cfg, controls
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
                if free > 0 and not paused:
                    for item in await asyncio.to_thread(self.store.claim, self.owner, free, self.cfg.lease_s):
                        self.running[item.id] = asyncio.create_task(self._debate(item))
            except Exception:  # the store is unreachable for a moment: serving goes on, so do we
                log.exception("debate worker loop")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.poll_s)
        for task in self.running.values():
            task.cancel()

    async def _debate(self, item: CaptureItem) -> None:
        try:
            result = await self.engine.run(DebateInput(item.question, item.label, item.label_source, item.id))
            ok, error = result.outcome != "failed", result.error
        except Exception as e:
            log.exception("debate of capture item %d failed", item.id)
            ok, error = False, f"{type(e).__name__}: {e}"[:500]
        try:
            await asyncio.to_thread(self.store.finish_item, item.id, ok=ok, error=error,
                                    max_attempts=self.cfg.max_attempts)
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
