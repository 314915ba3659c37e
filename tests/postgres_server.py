"""A throwaway PostgreSQL server (Debian's `postgresql`, installed by scripts/test-deps.sh) for store tests:
initdb into a temporary folder, listen on a free loopback port, one fresh database per test."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or ([shutil.which(name)] if shutil.which(name)
                                                                         else [])
    assert found, f"PostgreSQL's {name} is not installed: `make test` installs it (scripts/test-deps.sh)"
    return found[-1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # The server refuses to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server(port: int) -> Iterator[str]:
    """Yields the server's admin URL (trust auth on loopback); stops the server and removes its files."""
    # Not under pytest's tmp folder: that is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="distillery-pg-"))
    data, sock = root / "pgdata", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    subprocess.run(_as_postgres([pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w",
                                 "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server; its SQLAlchemy URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url.replace("postgresql+psycopg", "postgresql") + "/postgres",
                         autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"
