"""Deleting the store's rows past their retention: captures (with client labels and dead letters), MAGs, jobs.

One transaction, children before parents, so every reference stays whole: a MAG's edges, then its nodes, then the
debate (a capture that pointed at it forgets it); a debate that pointed at a deleted capture keeps its graph and
forgets the capture. Nothing still in flight is touched: queued or running captures, running debates, running
jobs, and no MAG at all while a training job runs (it reads them). The newest job of each kind is kept, however
old: the scheduler counts the fresh MAGs that make a cycle due from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from services.store.db import Database
from services.store.debates import (
    CaptureRow,
    CaptureStatus,
    DeadLetterRow,
    DebateRow,
    DebateStatus,
    EdgeRow,
    LabelRow,
    NodeRow,
)
from services.store.jobs import JobRow, JobStatus

FINISHED_CAPTURES = (CaptureStatus.DONE, CaptureStatus.FAILED)
CHUNK = 500  # ids per IN (...) list: within every database's bound on parameters


@dataclass
class StorePurge:
    """What was (or, in a dry run, would be) deleted, by id."""

    captures: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    dead_letters: list[int] = field(default_factory=list)
    mags: list[int] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)
    mags_skipped: str | None = None  # why no MAG was considered


def _chunks(ids: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i:i + CHUNK]


def purge_store(db: Database, *, captures_before: datetime | None, mags_before: datetime | None,
                jobs_before: datetime | None, dry_run: bool = False) -> StorePurge:
    """Delete (unless `dry_run`) the rows older than each cutoff (naive UTC; None keeps that kind)."""
    out = StorePurge()
    with db.session() as s:
        if captures_before is not None:
            out.captures = list(s.scalars(select(CaptureRow.id).where(
                CaptureRow.created_at < captures_before, CaptureRow.status.in_(FINISHED_CAPTURES))
                .order_by(CaptureRow.id)))
            out.labels = list(s.scalars(select(LabelRow.request_id).where(LabelRow.created_at < captures_before)
                                        .order_by(LabelRow.request_id)))
            out.dead_letters = list(s.scalars(select(DeadLetterRow.id).where(
                DeadLetterRow.created_at < captures_before).order_by(DeadLetterRow.id)))
        if mags_before is not None:
            if s.scalar(select(JobRow.id).where(JobRow.status == JobStatus.RUNNING).limit(1)) is not None:
                out.mags_skipped = "a training job is running"
            else:
                out.mags = list(s.scalars(select(DebateRow.id).where(
                    DebateRow.status != DebateStatus.RUNNING,
                    func.coalesce(DebateRow.finished_at, DebateRow.created_at) < mags_before).order_by(DebateRow.id)))
        if jobs_before is not None:
            newest = select(func.max(JobRow.id)).group_by(JobRow.kind)  # the scheduler counts fresh MAGs from it
            out.jobs = list(s.scalars(select(JobRow.id).where(
                JobRow.status != JobStatus.RUNNING, JobRow.finished_at < jobs_before, JobRow.id.not_in(newest))
                .order_by(JobRow.id)))
        if not dry_run:
            _delete(s, out)
    return out


def _delete(s: Session, out: StorePurge) -> None:
    for ids in _chunks(out.mags):
        s.execute(delete(EdgeRow).where(EdgeRow.debate_id.in_(ids)))
        s.execute(delete(NodeRow).where(NodeRow.debate_id.in_(ids)))
        s.execute(update(CaptureRow).where(CaptureRow.debate_id.in_(ids)).values(debate_id=None))
        s.execute(delete(DebateRow).where(DebateRow.id.in_(ids), DebateRow.status != DebateStatus.RUNNING))
    for ids in _chunks(out.captures):
        s.execute(update(DebateRow).where(DebateRow.capture_id.in_(ids)).values(capture_id=None))
        # Re-checked here: a label may have re-queued an item since it was selected.
        s.execute(delete(CaptureRow).where(CaptureRow.id.in_(ids), CaptureRow.status.in_(FINISHED_CAPTURES)))
    for keys in _chunks(out.labels):
        s.execute(delete(LabelRow).where(LabelRow.request_id.in_(keys)))
    for ids in _chunks(out.dead_letters):
        s.execute(delete(DeadLetterRow).where(DeadLetterRow.id.in_(ids)))
    for ids in _chunks(out.jobs):
        s.execute(delete(JobRow).where(JobRow.id.in_(ids), JobRow.status != JobStatus.RUNNING))
