"""Training jobs: one row per cycle, its phase while it runs, its outcome and error when it ends.

"Never two runs at once" is the database's rule, not a convention: a partial unique index allows one row with
status `running` per kind, so two schedulers (or a scheduler and `distillery train --once`) cannot both start.
A job whose process died (killed, OOM, host lost) stops heartbeating and is recorded `failed` by `reap`.

A running job holds a fenced lease: `start` gives it the next fence of its kind, and it may act (publish a version,
promote one) only while `Lease.renew` finds its row still running with the newest fence. A process that was only
stalled (a long pause, a partition from the database) and was reaped meanwhile, perhaps with a second job started,
finds its lease lost when it wakes and must stop without acting: `renew` raises LeaseLost. The renewal is also the
heartbeat, so a renewing job is not reaped as stale (it still is past its `timeout_s` or when its pid is gone). The
cycle renews on entering each phase: a cycle reaped while it trains stops at its next phase, before it publishes.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, aliased, mapped_column

from services.store.db import Base, Database
from services.store.debates import utcnow


class JobStatus(StrEnum):
    """A job's `status`: running until it ends, then succeeded (it reached an outcome) or failed."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobOutcome(StrEnum):
    """How a job ended (its `outcome`; NULL while it runs)."""

    PROMOTED = "promoted"
    NOT_PROMOTED = "not_promoted"
    SKIPPED = "skipped"
    FAILED = "failed"
    LOST_LEASE = "lost_lease"  # reaped or superseded while it ran: it stopped without acting


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("one_running_job", "kind", unique=True, sqlite_where=text("status = 'running'"),
              postgresql_where=text("status = 'running'")),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), default="train")
    trigger: Mapped[str] = mapped_column(String(32))  # schedule | api | cli | experiment
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.RUNNING, index=True)  # JobStatus
    outcome: Mapped[str | None] = mapped_column(String(32))  # JobOutcome
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
    fence: Mapped[int | None] = mapped_column(Integer)  # its lease's fence: 1 + the last one of its kind


class JobRunning(RuntimeError):
    def __init__(self, job_id: int | None) -> None:
        super().__init__(f"training job {job_id} is already running; one at a time")
        self.job_id = job_id


class LeaseLost(RuntimeError):
    """The job may no longer act: it was reaped (or ended), or a newer job of its kind holds the fence."""

    def __init__(self, job_id: int, why: str) -> None:
        super().__init__(f"job {job_id} lost its lease: {why}")
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
    fence: int | None

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
                fence = (s.scalar(select(func.max(JobRow.fence)).where(JobRow.kind == kind)) or 0) + 1
                row = JobRow(kind=kind, trigger=trigger, host=socket.gethostname(), pid=pid or os.getpid(),
                             fence=fence)
                s.add(row)
                s.flush()
                return row.id
        except IntegrityError:
            running = self.running(kind)
            raise JobRunning(running.id if running else None) from None

    def set(self, job_id: int, **values: Any) -> None:
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow(), **values))

    def lease(self, job_id: int) -> Lease:
        """The lease job `job_id` was given when it started (whether it still holds it is `Lease.renew`'s)."""
        job = self.get(job_id)
        if job is None:
            raise LeaseLost(job_id, "no such job")
        return Lease(self, job_id, job.fence)

    def renew(self, job_id: int, fence: int | None) -> None:
        """Heartbeat job `job_id` if it still holds the lease with `fence`; LeaseLost, with why, if not."""
        newer = aliased(JobRow)
        with self.db.session() as s:
            held = s.execute(update(JobRow).where(
                JobRow.id == job_id, JobRow.status == JobStatus.RUNNING, JobRow.fence == fence,
                ~select(newer.id).where(newer.kind == JobRow.kind, newer.fence > fence).exists(),
            ).values(heartbeat_at=utcnow()).execution_options(synchronize_session=False)).rowcount
        if held != 1:
            job = self.get(job_id)
            why = ("no such job" if job is None else f"it is {job.status} ({job.error or job.outcome})"
                   if job.status != JobStatus.RUNNING else f"a newer job of kind {job.kind} holds a later fence")
            raise LeaseLost(job_id, why)

    def lost(self, job_id: int, error: LeaseLost) -> None:
        """Record on the job's own row that it stopped because it had lost its lease (its row stays failed)."""
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status != JobStatus.SUCCEEDED).values(
                status=JobStatus.FAILED, outcome=JobOutcome.LOST_LEASE, reason=str(error),
                finished_at=func.coalesce(JobRow.finished_at, utcnow())))

    def finish(self, job_id: int, *, status: JobStatus, outcome: JobOutcome, **values: Any) -> None:
        """Close a job once: a row already closed (e.g. reaped) keeps its first ending."""
        with self.db.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == JobStatus.RUNNING).values(
                status=status, outcome=outcome, finished_at=utcnow(), heartbeat_at=utcnow(), **values))

    def reap(self, stale_s: float, timeout_s: float | None = None) -> list[int]:
        """Record as failed the running jobs whose process is gone: no heartbeat for `stale_s`, a dead pid on
        this host, or running past `timeout_s`. Returns their ids (the caller kills what is left of them).
        A reaped job has lost its lease. Each row is reaped only if it has not heartbeated since it was read: a job
        whose renewal won the race keeps its lease, one whose renewal lost finds it gone."""
        now, host = utcnow(), socket.gethostname()
        reaped = []
        with self.db.session() as s:
            running = s.execute(select(JobRow.id, JobRow.host, JobRow.pid, JobRow.started_at, JobRow.heartbeat_at)
                                .where(JobRow.status == JobStatus.RUNNING)).all()
        for job_id, job_host, pid, started_at, heartbeat_at in running:
            why = None
            if heartbeat_at < now - timedelta(seconds=stale_s):
                why = f"no heartbeat for {stale_s:.0f}s: the job process died or stalled"
            elif job_host == host and pid and not _alive(pid):
                why = f"the job process (pid {pid}) exited without recording an outcome"
            elif timeout_s is not None and started_at < now - timedelta(seconds=timeout_s):
                why = f"ran past the {timeout_s / 60:.0f} minute limit"
            if why is None:
                continue
            with self.db.session() as s:
                done = s.execute(update(JobRow).where(
                    JobRow.id == job_id, JobRow.status == JobStatus.RUNNING, JobRow.heartbeat_at == heartbeat_at,
                ).values(status=JobStatus.FAILED, outcome=JobOutcome.FAILED, error=why, finished_at=now)).rowcount
            if done == 1:
                reaped.append(job_id)
        return reaped

    def get(self, job_id: int) -> Job | None:
        with self.db.session() as s:
            row = s.get(JobRow, job_id)
            return _job(row) if row else None

    def running(self, kind: str = "train") -> Job | None:
        with self.db.session() as s:
            row = s.scalar(select(JobRow).where(JobRow.kind == kind, JobRow.status == JobStatus.RUNNING))
            return _job(row) if row else None

    def list(self, limit: int = 20) -> list[Job]:
        with self.db.session() as s:
            return [_job(r) for r in s.scalars(select(JobRow).order_by(JobRow.id.desc()).limit(limit))]

    def last(self, kind: str = "train", status: JobStatus | None = None) -> Job | None:
        q = select(JobRow).where(JobRow.kind == kind)
        if status is not None:
            q = q.where(JobRow.status == status)
        with self.db.session() as s:
            row = s.scalar(q.order_by(JobRow.id.desc()).limit(1))
            return _job(row) if row else None

    def counts(self) -> dict[str, int]:
        with self.db.session() as s:
            return {o or JobStatus.RUNNING.value: n for o, n in s.execute(
                select(JobRow.outcome, func.count()).group_by(JobRow.outcome))}


@dataclass(frozen=True)
class Lease:
    jobs: JobStore
    job_id: int
    fence: int | None

    def renew(self) -> None:
        self.jobs.renew(self.job_id, self.fence)


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
