"""Schema migrations of the store (Alembic), configured in code: no alembic.ini, so they run from an installed wheel.

`upgrade(engine)` brings any store to the newest revision ("head") and is what `Database.create_all` does at every
start: a brand new database gets every table, a store made by an earlier release gets the revisions it lacks. The
first revision (0001) is the schema of release df9b829, which made its tables without Alembic; on such a store it
records the revision without recreating anything (and adds the columns an even older store lacks). Several
processes start at once (replicas, the scheduler, a cycle): the upgrade runs under a lock (a Postgres advisory
lock, held by the transaction that migrates; a file lock next to a SQLite file), so one migrates and the others then
find the store at head. A new revision is generated from the models with `scripts/new_migration.py "message"`.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, MetaData, text

SCRIPTS = Path(__file__).parent
# pg_advisory_xact_lock's key: any constant of our own; "distillery migrate" as a signed 64-bit number.
PG_LOCK_KEY = int.from_bytes(b"dstlmigr", "big", signed=True)


def target_metadata() -> MetaData:
    """Every Distillery table: the models the migrations must match."""
    import services.store.adapters
    import services.store.controls
    import services.store.debates
    import services.store.jobs
    import services.store.replicas  # noqa: F401
    from services.store.db import Base

    return Base.metadata


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the store, migrating over `connection` (env.py reads it)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":  # a private in-memory store: nobody to race with
        yield
        return
    with open(f"{database}.migrate-lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other process migrates through at the same time."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # Postgres DDL is transactional: the whole upgrade commits or none of it
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            yield conn
    elif engine.dialect.name == "sqlite":
        with _sqlite_file_lock(engine), engine.begin() as conn:
            yield conn
    else:
        with engine.begin() as conn:
            yield conn


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the store to `revision` (idempotent: a store already there is left as it is)."""
    with migrating(engine) as conn:
        command.upgrade(alembic_config(conn), revision)


def current(engine: Engine) -> str | None:
    """The store's revision; None for a store Alembic never migrated (new, or made by release df9b829)."""
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str:
    from alembic.script import ScriptDirectory

    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None, f"no revisions in {SCRIPTS / 'versions'}"
    return found
