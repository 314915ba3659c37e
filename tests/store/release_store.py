"""The previous release's store (tests/store/fixtures, written by release df9b829's own code) loaded into a fresh
SQLite file or Postgres database, as that release left it: no `alembic_version`, real debates in it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from sqlalchemy import make_url

from tests.postgres_server import pg_bin

FIXTURES = Path(__file__).parent / "fixtures"


def load_release_store(db_url: str) -> None:
    """Fill the empty database at `db_url` (a SQLite file not yet made, or a fresh Postgres database)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        shutil.copyfile(FIXTURES / "release_df9b829.db", url.database)  # type: ignore[arg-type]
        return
    subprocess.run([pg_bin("psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", str(url.host), "-p", str(url.port),
                    "-U", str(url.username), "-d", str(url.database), "-f", str(FIXTURES / "release_df9b829.pg.sql")],
                   check=True, capture_output=True)
