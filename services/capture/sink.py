"""The durable capture sink: finished requests go into the store's capture queue, off the serving path.

`offer()` only puts the item in a bounded in-memory buffer and returns; a writer thread redacts and inserts
batches (one transaction per batch). The window in which a hard kill can lose an item is the time an item
waits in that buffer (milliseconds); `close()` drains it on a graceful shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from services.capture.policy import FinishedRequest
from services.capture.redact import Redactor
from services.config import DEFAULT_TASK
from services.store.controls import Controls
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


class StoreSink:
    def __init__(self, store: MagStore, redact: Redactor, *, capacity: int = 10_000, batch: int = 64,
                 linger_s: float = 0.05, controls: Controls | None = None, context_chars: int = 4000,
                 holdout: dict[str, float] | None = None) -> None:
        """`holdout`: per task, the share of its requests held out of training (`tasks[].eval.holdout`)."""
        self.store, self.redact, self.controls = store, redact, controls
        self.holdout = holdout or {}
        self.context_chars = context_chars
        self.batch, self.linger_s = batch, linger_s
        self._q: queue.Queue[FinishedRequest | None] = queue.Queue(maxsize=capacity)
        self.written = 0
        self.skipped_paused = 0
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def offer(self, item: FinishedRequest) -> bool:
        try:
            self._q.put_nowait(item)
            return True
        except queue.Full:
            return False

    def close(self, timeout: float = 10.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)

    def _row(self, item: FinishedRequest) -> dict[str, Any] | None:
        messages = [{**m, "content": self.redact(m["content"]) if isinstance(m.get("content"), str) else ""}
                    for m in item.request.get("messages", [])]
        question = question_of(messages, self.context_chars)
        if question is None:
            return None
        task = item.request.get("task") or DEFAULT_TASK
        return {"request_id": item.request_id, "response_id": item.response_id or None, "source": "traffic",
                "task": task, "held_out": in_holdout(item.request_id, self.holdout.get(task, 0.0)),
                "question": question, "messages": messages,
                "served_output": self.redact(item.outputs[0]) if item.outputs else None,
                "served_adapter": item.adapter}

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
            rows = [r for i in items if i is not None and (r := self._row(i)) is not None]
            if rows and self.controls is not None and self.controls.paused():
                self.skipped_paused += len(rows)  # distillation is paused: nothing is captured
                rows = []
            while rows:
                try:
                    self.written += self.store.enqueue(rows)
                    break
                except Exception:  # the store is briefly unavailable: keep the batch, try again
                    log.exception("capture write failed; retrying")
                    time.sleep(1.0)
