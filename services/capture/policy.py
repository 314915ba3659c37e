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
from services.store.debates import ANONYMOUS_KEY_ID

OPT_OUT_HEADER = "x-distillery-no-distill"
TRUTHY = frozenset({"1", "true", "yes", "on", "y", "t"})


def opted_out(headers: dict[str, str]) -> bool:
    """The client's opt-out header, whatever the case of its name or value (`1`, `true`, `yes`, `on`, ...)."""
    return any(k.lower() == OPT_OUT_HEADER and v.strip().lower() in TRUTHY for k, v in headers.items())


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
    key_id: str = ANONYMOUS_KEY_ID  # who made the request (`services.gateway.auth.Principal.key_id`)


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

    def wants(self, endpoint: str, headers: dict[str, str], task: str | None = None,
              key_id: str = ANONYMOUS_KEY_ID) -> bool:
        """Whether to offer a finished request: capture on, a chat request, neither the client (opt-out header)
        nor its key (`capture.opt_out_keys`) opted out, and sampled in."""
        rate = self.task_rates.get(task, self.cfg.sample_rate) if task else self.cfg.sample_rate
        return (
            self.cfg.enabled
            and endpoint == "chat"
            and key_id not in self.cfg.opt_out_keys
            and not opted_out(headers)
            and self._rng.random() < rate
        )
