"""Shared fixtures: the real embedded model, real LoRA adapters trained on it, and the real service.

The service fixtures start `distillery serve` (Ray Serve + the vLLM CPU engine) as a subprocess on a free
loopback port with its own data directory, exactly as an operator would, and stop it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.lora_factory import train_codeword_adapter

READY_TIMEOUT_S = 300
E2E_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """An e2e test (a service to start, a training cycle) gets 20 minutes unless it sets its own timeout.

    The tests of the shared `service` (below) run last, in their files' order, the fuzzer's after all others (what
    it sends may load or unload adapters): a session fixture lives until the session ends, and an idle service
    (Serve's controller, proxy, replicas, the engine) takes about a third of a core from every test that runs beside
    it on a 2-core machine."""
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT_S))
    shared = sorted((item for item in items if uses_shared_service(item)),
                    key=lambda item: item.get_closest_marker("fuzz") is not None)
    items[:] = [item for item in items if not uses_shared_service(item)] + shared


def uses_shared_service(item: pytest.Item) -> bool:
    """The test takes `service` and its module does not define a `service` fixture of its own."""
    return "service" in getattr(item, "fixturenames", ()) and getattr(getattr(item, "module", None), "service",
                                                                        None) is None


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL server for the session; tests take a fresh database with `fresh_database`."""
    from tests.postgres_server import postgres_server

    with postgres_server(free_port()) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback (a real S3 protocol server), with AWS test credentials in the environment."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "test")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database (WAL) in a fresh folder (tests/store runs on Postgres too)."""
    return f"sqlite:///{tmp_path / 'distillery.db'}"


@pytest.fixture
def store(db_url: str):
    """A real store on `db_url`."""
    from services.store.db import Database
    from services.store.mags import MagStore

    db = Database(db_url)
    db.create_all()
    return MagStore(db)


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The embedded student converted once into the default data dir (`make test` prepares it)."""
    from services.config import Settings
    from services.student.model_prep import resolve_base_model

    return resolve_base_model(Settings(), print)


@pytest.fixture(scope="session")
def codeword_adapters(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real adapters, each trained to answer the probe prompt with its own codeword."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "ALPHA-7": train_codeword_adapter(model_dir, root / "alpha", "ALPHA-7", seed=0),
        "BRAVO-3": train_codeword_adapter(model_dir, root / "bravo", "BRAVO-3", seed=1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path
    admin_key: str | None = None

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def start_service(model_dir: str, data_dir: Path, extra_env: dict[str, str] | None = None) -> Service:
    """Starts `distillery serve` on `DISTILLERY_SERVER__PORT` of `extra_env`, else a free port."""
    port = int((extra_env or {}).get("DISTILLERY_SERVER__PORT") or free_port())
    env = {
        **os.environ,
        "DISTILLERY_DATA_DIR": str(data_dir),
        "DISTILLERY_STUDENT__MODEL": model_dir,
        "DISTILLERY_SERVER__PORT": str(port),
        "DISTILLERY_STUDENT__KV_CACHE_GB": "1",
        "DISTILLERY_STUDENT__MAX_MODEL_LEN": "1024",
        "DISTILLERY_STUDENT__REGISTRY_POLL_S": "1",
        **(extra_env or {}),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "service.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: teardown reaches Ray's processes too
    )
    svc = Service(f"http://127.0.0.1:{port}", data_dir, proc, log_path, env.get("DISTILLERY_SERVER__ADMIN_KEY"))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{svc.log_tail()}")
        try:
            if httpx.get(f"{svc.url}/ready", timeout=5).status_code == 200:
                return svc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_service(svc)
    raise RuntimeError(f"service not ready after {READY_TIMEOUT_S}s:\n{svc.log_tail()}")


def stop_service(svc: Service) -> None:
    if svc.proc.poll() is None:
        svc.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            svc.proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):  # whatever Ray left behind in the service's process group
        os.killpg(svc.proc.pid, signal.SIGKILL)


# The shared service's tasks: one of each answer type, so feedback on its captured requests reaches every reader.
SHARED_TASKS = [
    {"name": "default", "answer_type": "number"},
    {"name": "intent", "answer_type": "label", "labels": ["card_arrival", "lost_or_stolen_card", "unknown"]},
    {"name": "record", "answer_type": "json", "json_schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
        "required": ["name", "born"]}},
]


@pytest.fixture(scope="session")
def service(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service as `make run` starts it (no auth, capture on), with `SHARED_TASKS`, a concurrency limit of 6 so
    429 is testable, and no debates or scheduled training, so the serving tests measure serving alone
    (tests/e2e/test_debate_service.py runs the defaults with debates)."""
    svc = start_service(model_dir, tmp_path_factory.mktemp("svc"), {
        "DISTILLERY_SERVER__MAX_CONCURRENT_REQUESTS": "6",
        "DISTILLERY_DEBATE__ENABLED": "0",
        "DISTILLERY_TRAINING__ENABLED": "0",
        "DISTILLERY_TASKS": json.dumps(SHARED_TASKS),
    })
    yield svc
    stop_service(svc)
