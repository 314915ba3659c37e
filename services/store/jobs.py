"""Training jobs: one row per cycle, its phase while it runs, its outcome and error when it ends.

"Never two runs at once" is the database's rule, not a convention: a partial unique index allows one row with
status `running` per kind, so two schedulers (or a scheduler and `distillery train --once`) cannot both start.
A job whose process died (killed, OOM, host lost) stops heartbeating and is recorded `failed` by `reap`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from services.store.db import Base, Database
from services.store.debates import utcnow


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("one_running_job", "kind", unique=True, sqlite_where=text("status = 'running'"),
              postgresql_where=text("status = 'running'")),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), default="train")
    trigger: Mapped[str] = mapped_column(String(32))  # schedule | api | cli | experiment
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)  # running|succeeded|failed
    outcome: Mapped[str | None] = mapped_column(String(32))  # promoted | not_promoted | skipped | failed
    phase: Mapped[str] = mapped_column(String(32), default="starting")
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    candidate: Mapped[str | None] = mapped_column(String(160))  # student@vN it registered
    incumbent: Mapped[str | None] = mapped_column(String(160))  # what `student` served when it was judged
    reason: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # MAGs, trees, pairs, SFT items
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # training and evaluation


class JobRunning(RuntimeError):
    def __init__(self, job_id: int | None) -> None:
        super().__init__(f"training job {job_id} is already running; one at a time")
        self.job_id = job_id


@dataclass
class Job:
    id: int
    kind: str
    trigger: str
    status: str
    outcome: str | None
    phase: str
    host: str | None
    pid: int | None
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None
    candidate: str | None
    incumbent: str | None
    reason: str | None
    error: str | None
    data: dict[str, Any]
    metrics: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("started_at", "heartbeat_at", "finished_at"):
            d[k] = d[k].isoformat() + "Z" if d[k] else None
        return d


_FIELDS = list(Job.__dataclass_fields__)


def _job(row: JobRow) -> Job:
    return Job(**{k: getattr(row, k) for k in _FIELDS})


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def start(self, trigger: str, kind: str = "train", pid: int | None = None) -> int:
        """A new running job; JobRunning if one of this kind runs already."""
        try:
            with self.db.session() as s:
                row = JobRow(kind=kind, trigger=trigger, host=socket.gethostname(), pid=pid or os.getpid())
                s.add(row)
                s.flush()
                return row.id
        except IntegrityError:
            running = self.running(kind)
            raise JobRunning(running.id if running else None) from None

    def set(self, job_id: int, **values: Any) -> None:
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow(), **values))

    def heartbeat(self, job_id: int) -> None:
        self.set(job_id)

    def finish(self, job_id: int, *, status: str, outcome: str, **values: Any) -> None:
        """Close a job once: a row already closed (e.g. reaped) keeps its first ending."""
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "running").values(
                status=status, outcome=outcome, finished_at=utcnow(), heartbeat_at=utcnow(), **values))

    def reap(self, stale_s: float, timeout_s: float | None = None) -> list[int]:
        """Record as failed the running jobs whose process is gone: no heartbeat for `stale_s`, a dead pid on
        this host, or running past `timeout_s`. Returns their ids (the caller kills what is left of them)."""
        now, host = utcnow(), socket.gethostname()
        reaped = []
        with self.db.session() as s:
            for row in s.scalars(select(JobRow).where(JobRow.status == "running")):
                why = None
                if row.heartbeat_at < now - timedelta(seconds=stale_s):
                    why = f"no heartbeat for {stale_s:.0f}s: the job process died"
                elif row.host == host and row.pid and not _alive(row.pid):
                    why = f"the job process (pid {row.pid}) exited without recording an outcome"
                elif timeout_s is not None and row.started_at < now - timedelta(seconds=timeout_s):
                    why = f"ran past the {timeout_s / 60:.0f} minute limit"
                if why is not None:
                    row.status, row.outcome, row.error, row.finished_at = "failed", "failed", why, now
                    reaped.append(row.id)
        return reaped

    def get(self, job_id: int) -> Job | None:
        with self.db.session() as s:
            row = s.get(JobRow, job_id)
            return _job(row) if row else None

    def running(self, kind: str = "train") -> Job | None:
        with self.db.session() as s:
            row = s.scalar(select(JobRow).where(JobRow.kind == kind, JobRow.status == "running"))
            return _job(row) if row else None

    def list(self, limit: int = 20) -> list[Job]:
        with self.db.session() as s:
            return [_job(r) for r in s.scalars(select(JobRow).order_by(JobRow.id.desc()).limit(limit))]

    def last(self, kind: str = "train", status: str | None = None) -> Job | None:
        q = select(JobRow).where(JobRow.kind == kind)
        if status is not None:
            q = q.where(JobRow.status == status)
        with self.db.session() as s:
            row = s.scalar(q.order_by(JobRow.id.desc()).limit(1))
            return _job(row) if row else None

    def counts(self) -> dict[str, int]:
        with self.db.session() as s:
            return {o or "running": n for o, n in s.execute(
                select(JobRow.outcome, func.count()).group_by(JobRow.outcome))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet waited for by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
