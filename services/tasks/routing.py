"""Which task a request belongs to: the one its `metadata.task` names, else the first profile whose `match` rule
fits, else `default`. A named task that is not configured is `default` too, reported as `unknown` so it can be
counted (a typo in a client must not mint a new task, a metric series or a training bucket)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.config import DEFAULT_TASK, TaskProfile

Via = Literal["metadata", "rule", "default", "unknown"]


@dataclass(frozen=True)
class TaskRoute:
    task: str
    via: Via


class TaskRouter:
    def __init__(self, tasks: Sequence[TaskProfile]) -> None:
        self.names = {t.name for t in tasks}
        self.rules = [(t.name, t.match.system_prompt_prefix) for t in tasks if t.match.system_prompt_prefix]

    def route(self, metadata: dict[str, Any] | None, messages: Sequence[dict[str, Any]]) -> TaskRoute:
        named = (metadata or {}).get("task")
        if isinstance(named, str) and named:
            return TaskRoute(named, "metadata") if named in self.names else TaskRoute(DEFAULT_TASK, "unknown")
        system = next((m.get("content") for m in messages if m.get("role") in {"system", "developer"}), None)
        if isinstance(system, str):
            for name, prefix in self.rules:
                if system.startswith(prefix):
                    return TaskRoute(name, "rule")
        return TaskRoute(DEFAULT_TASK, "default")


def in_holdout(request_id: str, share: float) -> bool:
    """Whether a request is in its task's held-out slice: a stable function of its id, so a request never moves
    between training and evaluation, whichever process asks."""
    if share <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") % 10_000
    return bucket < share * 10_000
