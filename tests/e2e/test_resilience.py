"""A crashed engine never takes serving down for good: the stream in flight ends with an SSE error frame,
Ray Serve's health check replaces the replica, and `student` comes back on the same promoted version."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import psutil
import pytest

pytestmark = pytest.mark.e2e

BODY = {"model": "student", "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
        "max_tokens": 600, "temperature": 0, "stream": True}


def engine_cores(pid: int) -> list[psutil.Process]:
    procs = psutil.Process(pid).children(recursive=True)
    return [p for p in procs if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline()[:1])]


def chat_ok(url: str) -> httpx.Response | None:
    try:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
            "model": "student", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        return r if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def test_engine_crash_mid_stream_then_recovery(service):
    before = chat_ok(service.url)
    assert before is not None
    serving = before.headers["x-distillery-adapter"]
    cores = engine_cores(service.proc.pid)
    assert len(cores) == 1, cores
    lines = []
    with httpx.stream("POST", f"{service.url}/v1/chat/completions", json=BODY, timeout=120) as r:
        assert r.status_code == 200
        it = r.iter_lines()
        while len([ln for ln in lines if ln]) < 4:  # the stream is under way
            lines.append(next(it))
        os.kill(cores[0].pid, signal.SIGKILL)
        lines.extend(it)
    data = [ln[6:] for ln in lines if ln.startswith("data: ")]
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])
    assert set(error) == {"error"} and error["error"]["type"] == "server_error", error
    # Ray Serve's health check (check_health -> vLLM) replaces the dead replica; no one restarts anything.
    deadline = time.monotonic() + 300
    after = None
    while after is None and time.monotonic() < deadline:
        time.sleep(3)
        after = chat_ok(service.url)
    assert after is not None, f"service did not recover:\n{service.log_tail()}"
    assert after.headers["x-distillery-adapter"] == serving
    assert httpx.get(f"{service.url}/ready", timeout=30).status_code == 200
    assert service.proc.poll() is None
