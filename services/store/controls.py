"""Operator switches that every process must agree on, kept in the store: today, pausing distillation.

While distillation is paused, finished requests are not captured, debate workers claim nothing new (debates
already running finish), and no training cycle starts by itself (an operator's `POST /admin/train` still does).
Serving is untouched. Readers cache the switch for `cache_s`, so a pause reaches every replica within seconds
without a query per request.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from services.store.db import Base, Database
from services.store.debates import utcnow

PAUSED = "distillation_paused"


class ControlRow(Base):
    __tablename__ = "controls"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Controls:
    def __init__(self, db: Database, cache_s: float = 2.0) -> None:
        self.db, self.cache_s = db, cache_s
        self._cached: tuple[float, bool] = (-1e9, False)
        self._lock = threading.Lock()

    def _set(self, paused: bool, reason: str | None) -> dict[str, Any]:
        with self.db.session() as s:
            s.merge(ControlRow(name=PAUSED, value=paused, reason=reason, at=utcnow()))
        with self._lock:
            self._cached = (time.monotonic(), paused)
        return self.state()

    def pause(self, reason: str | None = None) -> dict[str, Any]:
        return self._set(True, reason)

    def resume(self, reason: str | None = None) -> dict[str, Any]:
        return self._set(False, reason)

    def state(self) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(ControlRow, PAUSED)
            return {"paused": bool(row and row.value), "reason": row.reason if row else None,
                    "since": row.at.isoformat() if row else None}

    def paused(self) -> bool:
        """The switch, at most `cache_s` old; False if the store cannot be read (serving never waits on it)."""
        with self._lock:
            at, value = self._cached
        if time.monotonic() - at < self.cache_s:
            return value
        try:
            with self.db.session() as s:
                value = bool(s.scalar(select(ControlRow.value).where(ControlRow.name == PAUSED)))
        except Exception:
            return value
        with self._lock:
            self._cached = (time.monotonic(), value)
        return value
