"""`distillery db copy`: a SQLite store with real recorded debates moved into a real Postgres, as the runbook
"Moving from SQLite to Postgres" does it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from services.store.db import Base, Database
from services.store.jobs import JobStore
from services.store.mags import MagStore
from tests.postgres_server import fresh_database
from tests.ray_jobs.mags import debate_mags


@pytest.fixture
def db_url(tmp_path) -> str:  # this test moves from SQLite to Postgres, not one backend at a time
    return f"sqlite:///{tmp_path / 'distillery.db'}"


def copy(env: dict[str, str], target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", "db", "copy", "--to", target], env=env,
                          capture_output=True, text=True, timeout=300)


def counts(db: Database) -> dict[str, int]:
    with db.engine.connect() as c:
        return {t.name: c.execute(select(func.count()).select_from(t)).scalar_one()
                for t in Base.metadata.sorted_tables}


def test_copy_sqlite_store_into_postgres(db_url: str, postgres: str, tmp_path) -> None:
    source = Database(db_url)
    source.create_all()
    mags = MagStore(source)
    debate_mags(mags, 3, simple=True)
    jobs = JobStore(source)
    jobs.finish(jobs.start("cli"), status="succeeded", outcome="not_promoted", reason="gate")
    target_url = fresh_database(postgres)

    env = {**os.environ, "DISTILLERY_DATA_DIR": str(tmp_path), "DISTILLERY_DATABASE_URL": db_url}
    out = copy(env, target_url)
    assert out.returncode == 0, out.stderr
    assert "postgres@127.0.0.1" in out.stdout and "mag_nodes:" in out.stdout

    target = Database(target_url)
    before, after = counts(source), counts(target)
    assert after == before and before["mag_nodes"] > 0 and before["mag_edges"] > 0 and before["jobs"] == 1
    src_mags, dst_mags = mags.usable_since(None), MagStore(target).usable_since(None)
    assert [(m.id, m.question, m.gold, len(m.nodes)) for m in dst_mags] == \
           [(m.id, m.question, m.gold, len(m.nodes)) for m in src_mags]

    # The copy is a working store: new rows get fresh ids past the copied ones.
    new_job = JobStore(target).start("api")
    assert new_job > max(j.id for j in jobs.list(10))
    debate_mags(MagStore(target), 1, seed=5, simple=True)
    assert counts(target)["debates"] == before["debates"] + 1

    again = copy(env, target_url)
    assert again.returncode != 0 and "already holds rows" in again.stderr
