"""The store's own tests run on both backends the service supports: SQLite and PostgreSQL."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "postgres":
        from tests.postgres_server import fresh_database

        return fresh_database(request.getfixturevalue("postgres"))
    return f"sqlite:///{tmp_path / 'distillery.db'}"
