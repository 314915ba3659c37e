"""The durable capture sink: finished requests go into the store's capture queue, off the serving path.

`offer()` only puts the item in a bounded in-memory buffer and returns; a writer thread cleans, redacts and
inserts batches (one transaction per batch). The window in which a hard kill can lose an item is the time an item
waits in that buffer (milliseconds); `close()` drains it on a graceful shutdown.

Bounds: each API key has an hourly capture quota, and the queue (the store's waiting items plus the buffer) a cap;
past either, items are shed and counted by reason. A batch the store refuses (not one it cannot reach) is split
until the refused item is found; that item is dead-lettered, the rest stored.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from sqlalchemy.exc import InterfaceError, OperationalError

from services.capture.clean import clean
from services.capture.policy import FinishedRequest
from services.capture.redact import Redactor
from services.config import DEFAULT_TASK
from services.store.controls import Controls
from services.store.debates import CaptureStatus
from services.store.mags import MagStore
from services.tasks.routing import in_holdout

log = logging.getLogger(__name__)


def question_of(messages: list[dict[str, Any]], context_chars: int = 4000) -> str | None:
    """The question a debate is about: the last user message, after the conversation it belongs to.

    A lone user message is the question as sent. Otherwise the system prompt and the earlier turns come first,
    in tags (`<system_prompt>`, `<conversation>`), within `context_chars`: the system prompt takes at most half,
    the newest earlier turns the rest (oldest dropped first, marked `[...]`). The last user message is kept whole.
    """
    last = next((i for i in range(len(messages) - 1, -1, -1)
                 if messages[i].get("role") == "user" and messages[i].get("content")), None)
    if last is None:
        return None
    question = messages[last]["content"]
    system = "\n".join(m["content"] for m in messages[:last] if m.get("role") in {"system", "developer"}
                       and m.get("content"))
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages[:last]
             if m.get("role") in {"user", "assistant"} and m.get("content")]
    parts = []
    room = context_chars
    if system:
        system = system if len(system) <= room // 2 else system[: room // 2].rstrip() + " [...]"
        room -= len(system)
        parts.append(f"<system_prompt>\n{system}\n</system_prompt>")
    kept: list[str] = []
    for turn in reversed(turns):
        if len(turn) > room:
            break
        kept.insert(0, turn)
        room -= len(turn)
    if turns:
        dropped = ["[...]"] if len(kept) < len(turns) else []
        parts.append("<conversation>\n" + "\n".join([*dropped, *kept]) + "\n</conversation>")
    return "\n\n".join([*parts, question])


SHED_REASONS = ("key_quota", "queue_full", "buffer_full", "invalid")  # the fixed values of the `reason` label


class CaptureMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.shed = Counter("distillery_capture_shed", "Finished requests not captured, by reason: `key_quota` (the "
                            "key's hourly quota), `queue_full` (capture.max_queued), `buffer_full` (the writer's "
                            "buffer), `invalid` (no question left to debate).", ["reason"], registry=r)
        for reason in SHED_REASONS:
            self.shed.labels(reason)
        self.cleaned = Counter("distillery_capture_cleaned", "Captured requests whose text held NUL characters or "
                               "undecodable text, stripped before storing.", registry=r)
        self.dead_letters = Counter("distillery_capture_dead_letters", "Captured requests the store refused, kept in "
                                    "the capture_dead_letters table instead of retried.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class KeyQuota:
    """A token bucket per API key: `per_hour` captures an hour, refilled continuously."""

    def __init__(self, per_hour: int, clock: Any = time.monotonic) -> None:
        self.per_hour, self.clock = per_hour, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key_id: str) -> bool:
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(key_id, (float(self.per_hour), now))
            tokens = min(float(self.per_hour), tokens + (now - then) * self.per_hour / 3600)
            ok = tokens >= 1
            self._buckets[key_id] = (tokens - 1 if ok else tokens, now)
            return ok


class StoreSink:
    def __init__(self, store: MagStore, redact: Redactor, *, capacity: int = 10_000, batch: int = 64,
                 linger_s: float = 0.05, controls: Controls | None = None, context_chars: int = 4000,
                 holdout: dict[str, float] | None = None, per_key_per_hour: int = 3600, max_queued: int = 10_000,
                 retry_s: float = 1.0) -> None:
        """`holdout`: per task, the share of its requests held out of training (`tasks[].eval.holdout`).
        `capacity`: the in-memory buffer; `max_queued`: the store's waiting items plus the buffer."""
        self.store, self.redact, self.controls = store, redact, controls
        self.holdout = holdout or {}
        self.context_chars = context_chars
        self.batch, self.linger_s, self.retry_s = batch, linger_s, retry_s
        self.max_queued = max_queued
        self.quota = KeyQuota(per_key_per_hour)
        self.metrics = CaptureMetrics()
        self._q: queue.Queue[FinishedRequest | None] = queue.Queue(maxsize=capacity)
        self._store_queued = 0  # the store's waiting items, read now and after each batch
        self._unwritten = 0  # taken by offer() and not yet through a batch
        self._count_lock = threading.Lock()
        self._refresh_queued()
        self.written = 0
        self.skipped_paused = 0
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def offer(self, item: FinishedRequest) -> bool:
        with self._count_lock:
            if self._store_queued + self._unwritten >= self.max_queued:
                return self._shed("queue_full")
            if not self.quota.take(item.key_id):
                return self._shed("key_quota")
            try:
                self._q.put_nowait(item)
            except queue.Full:
                return self._shed("buffer_full")
            self._unwritten += 1
            return True

    def _shed(self, reason: str) -> bool:
        self.metrics.shed.labels(reason).inc()
        return False

    async def metrics_text(self) -> bytes:
        return self.metrics.render()

    def close(self, timeout: float = 10.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)

    def _row(self, item: FinishedRequest) -> dict[str, Any] | None:
        request, cleaned = clean(item.request)
        outputs, cleaned_out = clean(item.outputs)
        if cleaned or cleaned_out:
            self.metrics.cleaned.inc()
        messages = [{**m, "content": self.redact(m["content"]) if isinstance(m.get("content"), str) else ""}
                    for m in request.get("messages", [])]
        question = question_of(messages, self.context_chars)
        if question is None:
            self._shed("invalid")
            return None
        task = request.get("task") or DEFAULT_TASK
        return {"request_id": item.request_id, "response_id": item.response_id or None, "source": "traffic",
                "task": task, "held_out": in_holdout(item.request_id, self.holdout.get(task, 0.0)),
                "question": question, "messages": messages,
                "served_output": self.redact(outputs[0]) if outputs else None,
                "served_adapter": item.adapter, "key_id": item.key_id}

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            items = [first]
            deadline = time.monotonic() + self.linger_s
            while len(items) < self.batch and (left := deadline - time.monotonic()) > 0:
                try:
                    items.append(self._q.get(timeout=left))
                except queue.Empty:
                    break
            stop = any(i is None for i in items)
            batch = [i for i in items if i is not None]
            try:
                self._store_batch(batch)
            except Exception:  # whatever one batch does, the writer goes on with the next
                log.exception("capture batch dropped")
            self._refresh_queued(written=len(batch))

    def _store_batch(self, items: list[FinishedRequest]) -> None:
        rows = [r for i in items if (r := self._row(i)) is not None]
        if rows and self.controls is not None and self.controls.paused():
            self.skipped_paused += len(rows)  # distillation is paused: nothing is captured
            rows = []
        if rows:
            self._write(rows)

    def _refresh_queued(self, written: int = 0) -> None:
        try:
            queued = self.store.queue_counts().get(CaptureStatus.QUEUED, 0)
        except Exception:  # unreachable: the last count stands, the writes retry
            log.exception("capture queue count failed")
            queued = self._store_queued + written
        with self._count_lock:
            self._store_queued, self._unwritten = queued, self._unwritten - written

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """Store `rows`; while the store is unreachable, keep them and retry. A batch it refuses is halved until
        the refused row is alone: that row is dead-lettered, every other one stored."""
        while True:
            try:
                self.written += self.store.enqueue(rows)
                return
            except (OperationalError, InterfaceError):  # the store is briefly unavailable: keep the batch
                log.exception("capture write failed; retrying")
                time.sleep(self.retry_s)
            except Exception as e:
                if len(rows) > 1:
                    half = len(rows) // 2
                    self._write(rows[:half])
                    self._write(rows[half:])
                    return
                self._dead_letter(rows[0], e)
                return

    def _dead_letter(self, row: dict[str, Any], error: Exception) -> None:
        self.metrics.dead_letters.inc()
        log.error("capture of %s refused by the store, dead-lettered: %r", row.get("request_id"), error)
        try:
            self.store.dead_letter(row, repr(error))
        except Exception:
            log.exception("dead-lettering %s failed; the item is dropped", row.get("request_id"))
