"""The teachers' hourly spend, and whether the debates may start another one."""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta

from services.store.debates import utcnow
from services.store.mags import MagStore

log = logging.getLogger(__name__)


class TeacherBudget:
    """The debates' hourly teacher budget (`debate.teacher_tokens_per_hour`, `debate.teacher_usd_per_hour`): what
    the teachers used in the last rolling hour, read from the store (so every worker sees the same spend) at most
    every `refresh_s`. While it is spent, no new debate starts."""

    def __init__(self, store: MagStore, tokens_per_hour: int, usd_per_hour: float, refresh_s: float = 10.0) -> None:
        self.store, self.tokens_per_hour, self.usd_per_hour = store, tokens_per_hour, usd_per_hour
        self.refresh_s = refresh_s
        self._checked_at = -math.inf
        self._allows = True

    def allows(self) -> bool:
        if time.monotonic() - self._checked_at >= self.refresh_s:
            tokens, usd = self.store.teacher_spend_since(utcnow() - timedelta(hours=1))
            self._allows = tokens < self.tokens_per_hour and usd < self.usd_per_hour
            self._checked_at = time.monotonic()
            if not self._allows:
                log.warning("teacher budget spent (%d tokens, $%.2f in the last hour): debates paused", tokens, usd)
        return self._allows
