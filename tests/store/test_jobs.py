"""The jobs table on real SQLite and Postgres: one running cycle at a time, and dead jobs recorded as failed."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import update

from services.store.db import Database
from services.store.debates import utcnow
from services.store.jobs import JobRow, JobRunning, JobStore, LeaseLost


@pytest.fixture
def jobs(db_url: str) -> JobStore:
    db = Database(db_url)
    db.create_all()
    return JobStore(db)


def test_the_database_allows_one_running_job(jobs: JobStore, db_url: str) -> None:
    first = jobs.start("api")
    with pytest.raises(JobRunning) as e:
        jobs.start("schedule")
    assert e.value.job_id == first
    other = JobStore(Database(db_url))  # another process's view of the same database
    with pytest.raises(JobRunning):
        other.start("cli")
    jobs.finish(first, status="succeeded", outcome="promoted", reason="better")
    jobs.finish(first, status="failed", outcome="failed", error="late")  # an ended job keeps its first ending
    assert jobs.get(first).outcome == "promoted"  # type: ignore[union-attr]
    second = other.start("cli")
    assert second > first and jobs.running().id == second  # type: ignore[union-attr]  # (Postgres skips ids)
    assert jobs.counts() == {"promoted": 1, "running": 1}


def test_reap_fails_dead_silent_and_overdue_jobs(jobs: JobStore) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = jobs.start("api", pid=proc.pid)  # its process is gone
    assert jobs.reap(stale_s=60) == [dead]
    assert "exited without recording" in jobs.get(dead).error  # type: ignore[operator, union-attr]

    silent = jobs.start("api")  # this process: alive, but stops heartbeating
    with jobs.db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == silent).values(heartbeat_at=utcnow() - timedelta(seconds=300)))
    assert jobs.reap(stale_s=120) == [silent]
    assert "no heartbeat" in jobs.get(silent).error  # type: ignore[operator, union-attr]

    overdue = jobs.start("api")
    with jobs.db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == overdue).values(started_at=utcnow() - timedelta(hours=4)))
    assert jobs.reap(stale_s=120) == []  # no limit given
    assert jobs.reap(stale_s=120, timeout_s=3600) == [overdue]
    assert jobs.get(overdue).status == "failed"  # type: ignore[union-attr]


def test_each_job_holds_the_next_fence_of_its_kind_and_a_reaped_one_loses_its_lease(jobs: JobStore) -> None:
    first = jobs.start("api")
    lease = jobs.lease(first)
    lease.renew()  # the holder renews, and that is its heartbeat
    with jobs.db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == first).values(heartbeat_at=utcnow() - timedelta(seconds=300)))
    lease.renew()  # a renewal before the reaper looks: not stale any more
    assert jobs.reap(stale_s=120) == []
    with jobs.db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == first).values(heartbeat_at=utcnow() - timedelta(seconds=300)))
    assert jobs.reap(stale_s=120) == [first]
    with pytest.raises(LeaseLost, match="failed"):
        lease.renew()
    second = jobs.start("schedule")
    assert jobs.lease(second).fence == (lease.fence or 0) + 1 and jobs.start("eval", kind="eval") is not None
    assert jobs.lease(jobs.running("eval").id).fence == 1  # type: ignore[union-attr]  # fences count per kind
    jobs.lost(first, LeaseLost(first, "reaped"))
    assert (jobs.get(first).status, jobs.get(first).outcome) == ("failed", "lost_lease")  # type: ignore[union-attr]
    jobs.lost(second, LeaseLost(second, "superseded"))  # a running job told it lost its lease ends too
    assert jobs.get(second).status == "failed" and jobs.running() is None  # type: ignore[union-attr]
