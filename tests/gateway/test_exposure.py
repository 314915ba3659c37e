"""The start refusal: an exposed address needs the admin key, and client keys unless `allow_anonymous`; loopback
without keys keeps working. The real `distillery serve` refuses before anything starts (no Ray, no model)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.config import ServerConfig
from services.gateway.exposure import UnsafeExposure, check_exposure, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "localhost."])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "10.0.0.1", "192.168.1.2", "distillery.example",
                                  "localhost.evil.example", "127.0.0.1.evil.example", ""])
def test_exposed_hosts(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_without_keys_starts(host: str) -> None:
    check_exposure(ServerConfig(host=host))


@pytest.mark.parametrize(("server", "fix"), [
    ({}, "set server.admin_key"),
    ({"api_keys": ["sk-c"]}, "set server.admin_key"),
    ({"allow_anonymous": True}, "set server.admin_key"),
    ({"admin_key": "sk-a"}, "set server.allow_anonymous: true"),
])
def test_an_exposed_host_without_keys_is_refused_naming_the_fix(server: dict, fix: str) -> None:
    with pytest.raises(UnsafeExposure, match=fix):
        check_exposure(ServerConfig(host="0.0.0.0", **server))


@pytest.mark.parametrize("server", [{"admin_key": "sk-a", "api_keys": ["sk-c"]},
                                    {"admin_key": "sk-a", "labeller_keys": ["sk-l"]},
                                    {"admin_key": "sk-a", "allow_anonymous": True}])
def test_an_exposed_host_with_keys_starts(server: dict) -> None:
    check_exposure(ServerConfig(host="0.0.0.0", **server))


def distillery(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**os.environ, "PYTHONPATH": os.getcwd(), **env})


def test_distillery_serve_on_an_exposed_host_exits_with_the_fix_before_starting(tmp_path: Path) -> None:
    env = {"DISTILLERY_DATA_DIR": str(tmp_path)}
    t0 = time.monotonic()
    r = distillery("serve", "--host", "0.0.0.0", "--port", "18999", env=env, cwd=tmp_path)
    assert r.returncode == 1 and "refusing to start" in r.stderr and "server.admin_key" in r.stderr, r.stderr
    r = distillery("serve", env={**env, "DISTILLERY_SERVER__HOST": "0.0.0.0", "DISTILLERY_SERVER__ADMIN_KEY": "a"},
                   cwd=tmp_path)
    assert r.returncode == 1 and "server.allow_anonymous: true" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Ray" not in r.stdout + r.stderr
    assert time.monotonic() - t0 < 20  # refused at once: no Ray, no model conversion
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written
