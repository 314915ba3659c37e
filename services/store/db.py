"""Database plumbing: engine creation, SQLite pragmas, sessions.

Every Distillery table derives from `Base`; `Database.create_all` migrates the store to the newest schema revision
(services/store/migrations), as every process does at start. SQLite runs in WAL mode so the serving processes can
read while a writer (a training job, the debate queue) commits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    pass


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")  # writers from several processes wait instead of failing
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"timeout": 10})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @staticmethod
    def describe(url: str) -> str:
        """The URL without its password (in the user part or the query), for logs and CLI output."""
        from services.config import masked_url

        return masked_url(url)

    def create_all(self) -> None:
        """Upgrade the store to the newest schema revision: every table on a new database, the revisions it lacks
        on a store of an earlier release. Safe from several processes at once, and a no-op when already there."""
        from services.store import migrations

        migrations.upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s
