"""The seam to the debate service: each finished request is offered to a sink, never awaited.

The gateway decides *whether* to offer (capture enabled, sample rate, the client's opt-out header);
the sink decides what to do with it and must return at once (`services.capture.sink.StoreSink` queues it
durably in the store for the debate service).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.config import CaptureConfig

OPT_OUT_HEADER = "x-distillery-no-distill"


@dataclass
class FinishedRequest:
    request_id: str
    endpoint: str  # chat | completions
    model: str
    adapter: str
    request: dict[str, Any]  # messages (chat) or prompt (completions), sampling fields
    outputs: list[str]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    headers: dict[str, str] = field(default_factory=dict)
    response_id: str = ""  # the completion's `id` (chatcmpl-...), which POST /v1/feedback also accepts


class CaptureSink(Protocol):
    def offer(self, item: FinishedRequest) -> bool:
        """Take the item without blocking; False if it was dropped (e.g. a full buffer)."""
        ...


class NullSink:
    def offer(self, item: FinishedRequest) -> bool:
        return True


class CapturePolicy:
    def __init__(self, cfg: CaptureConfig, sink: CaptureSink, rng: random.Random | None = None,
                 task_rates: dict[str, float] | None = None) -> None:
        """`task_rates`: a task profile's own capture rate, instead of `cfg.sample_rate`."""
        self.cfg = cfg
        self.sink = sink
        self._rng = rng or random.Random()
        self.task_rates = task_rates or {}

    def wants(self, endpoint: str, headers: dict[str, str], task: str | None = None) -> bool:
        rate = self.task_rates.get(task, self.cfg.sample_rate) if task else self.cfg.sample_rate
        return (
            self.cfg.enabled
            and endpoint == "chat"
            and headers.get(OPT_OUT_HEADER, "").strip() not in {"1", "true", "yes"}
            and self._rng.random() < rate
        )
