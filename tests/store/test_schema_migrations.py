"""Schema migrations on real SQLite and Postgres: a store written by the previous release (df9b829, with real
debates) upgrades at start with nothing lost, a new store goes straight to head, migrations match the models,
several processes starting at once migrate once."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect, select

from services.registry import AdapterRegistry
from services.store import migrations
from services.store.controls import Controls
from services.store.db import Database
from services.store.jobs import JobStore
from services.store.mags import MagStore
from tests.store.release_store import load_release_store


def release_schema() -> MetaData:
    """Revision 0001's frozen copy of the previous release's schema."""
    [path] = (migrations.SCRIPTS / "versions").glob("0001_*.py")
    spec = importlib.util.spec_from_file_location("revision_0001", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SCHEMA


def differences(db: Database, metadata: MetaData) -> list[Any]:
    with db.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)


def rows(db: Database, schema: MetaData) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of `schema`, its columns only, in primary-key order."""
    with db.engine.connect() as conn:
        return {t.name: [tuple(r) for r in conn.execute(select(*t.columns).order_by(*t.primary_key.columns))]
                for t in schema.sorted_tables}


def test_a_new_store_goes_to_head_and_matches_the_models(db_url: str) -> None:
    db = Database(db_url)
    db.create_all()
    assert migrations.current(db.engine) == migrations.head()
    # Fails when a model changed without a revision: `python scripts/new_migration.py "what changed"`.
    assert differences(db, migrations.target_metadata()) == []


def test_revision_0001_is_the_previous_releases_schema(db_url: str) -> None:
    db = Database(db_url)
    load_release_store(db_url)
    assert migrations.current(db.engine) is None and "alembic_version" not in inspect(db.engine).get_table_names()
    assert differences(db, release_schema()) == []


def test_the_previous_releases_store_upgrades_at_start_with_nothing_lost(db_url: str, tmp_path) -> None:
    load_release_store(db_url)
    schema = release_schema()
    before = rows(Database(db_url), schema)
    assert len(before["debates"]) == 5 and len(before["mag_nodes"]) == 67 and len(before["mag_edges"]) == 97

    db = Database(db_url)
    db.create_all()  # what every process does at start
    assert migrations.current(db.engine) == migrations.head()
    assert rows(db, schema) == before  # every row, every value the previous release wrote
    assert differences(db, migrations.target_metadata()) == []

    # Readable and usable through today's APIs.
    mags = MagStore(db)
    listed = mags.list(limit=10, with_graph=True)
    assert sorted(m.id for m in listed) == [1, 2, 3, 4, 5]
    assert sum(len(m.nodes) for m in listed) == 67 and sum(len(m.edges) for m in listed) == 97
    first = mags.get(1)
    assert first is not None and first.gold_source == "feedback" and first.request_id == "chatcmpl-0"
    assert first.answers(0) and all(n.text for n in first.answers(0))
    assert {m.gold_source for m in listed} == {"feedback", "consensus", "dataset"}
    assert [m.id for m in mags.usable_since(None)] == [m.id for m in mags.list(limit=10, usable=True,
                                                                                 newest_first=False)]
    assert mags.queue_counts() == {"done": 5, "queued": 1}
    [claimed] = mags.claim("upgraded-worker", 5, 60)
    assert claimed.request_id == "chatcmpl-queued" and claimed.question == "What is 2 + 2?"
    assert mags.finish_item(claimed.id, ok=True, error=None, max_attempts=3) == "done"
    mags.enqueue([{"request_id": "chatcmpl-after", "question": "What is 3 + 4?", "messages": []}])
    assert mags.queue_counts() == {"done": 6, "queued": 1}

    jobs = JobStore(db)
    assert [(j.id, j.outcome, j.candidate) for j in jobs.list()] == [(3, "skipped", None), (2, "failed", None),
                                                                    (1, "promoted", "student@v1")]
    assert jobs.get(1).metrics == {"eval": {"accuracy": 0.5}}  # type: ignore[union-attr]
    new_job = jobs.start("api")
    assert new_job == 4 and jobs.lease(new_job).fence == 1

    registry = AdapterRegistry(db, tmp_path / "adapters", served_name="student", base_model="embedded-base",
                               base_model_dir=None, max_rank=16)
    assert [(v.name, v.status, v.label) for v in registry.list()] == [("student@v1", "promoted", None),
                                                                      ("student@v2", "registered", "experiment")]
    promoted = registry.promoted()
    assert promoted is not None and promoted.name == "student@v1" and promoted.lineage == {"job": 1, "mags": [1, 2]}
    assert [h["kind"] for h in registry.history()] == ["promote"]
    assert Controls(db, cache_s=0).state()["reason"] == "new month" and not Controls(db, cache_s=0).paused()

    again = rows(db, schema)
    Database(db_url).create_all()  # the next start: nothing to do, nothing changed
    assert rows(db, schema) == again


def test_several_processes_starting_at_once_migrate_the_store_once(db_url: str) -> None:
    load_release_store(db_url)
    before = rows(Database(db_url), release_schema())
    start = f"from services.store.db import Database; Database({db_url!r}).create_all()"
    procs = [subprocess.Popen([sys.executable, "-c", start], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, errors
    db = Database(db_url)
    assert migrations.current(db.engine) == migrations.head()
    assert rows(db, release_schema()) == before
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
