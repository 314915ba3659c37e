"""Load generation and reporting shared by the benchmarks: closed-loop clients over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

RESULTS_DIR = Path(__file__).parent / "results"

QUESTIONS = [
    "What is the capital of France?", "Name three primary colors.", "What is 12 plus 7?",
    "Why is the sky blue?", "Give me a synonym for happy.", "What do bees make?",
    "How many days are in a week?", "What is the boiling point of water?", "Who wrote Hamlet?",
    "What is photosynthesis?", "Name a large ocean.", "What is the opposite of cold?",
    "How many legs does a spider have?", "What color is grass?", "What is 9 times 3?",
    "Which planet is the largest?",
]


@dataclass
class LoadResult:
    label: str
    concurrency: int
    requests: int
    failed: int
    seconds: float
    rps: float
    p50_s: float
    p99_s: float
    completion_tokens: int
    tokens_per_s: float


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, round(q / 100 * (len(xs) - 1))))
    return xs[k]


async def run_load(url: str, *, label: str, concurrency: int, requests: int, model: str = "student",
                   max_tokens: int = 32, duration_s: float | None = None, headers: dict[str, str] | None = None,
                   questions: list[str] | None = None,
                   fixed_length: bool = False) -> tuple[LoadResult, list[tuple[float, float, int, str]]]:
    """`concurrency` clients send chat requests back to back until `requests` are done (or `duration_s`).
    `fixed_length`: every answer runs to `max_tokens` (vLLM's `ignore_eos`), so models that stop at different
    points are compared on the same work."""
    lat: list[float] = []
    rows: list[tuple[float, float, int, str]] = []
    failed = 0
    tokens = 0
    counter = iter(range(10**9))
    pool = questions or QUESTIONS
    t_start = time.monotonic()

    async def worker(c: httpx.AsyncClient) -> None:
        nonlocal failed, tokens
        while True:
            i = next(counter)
            if duration_s is None and i >= requests:
                return
            if duration_s is not None and time.monotonic() - t_start > duration_s:
                return
            body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": pool[i % len(pool)]}],
                    **({"ignore_eos": True} if fixed_length else {})}
            t0 = time.monotonic()
            try:
                r = await c.post(f"{url}/v1/chat/completions", json=body, headers=headers)
                ok = r.status_code == 200
                adapter = r.headers.get("x-distillery-adapter", "")
                if ok:
                    tokens += r.json()["usage"]["completion_tokens"]
            except httpx.HTTPError:
                ok, adapter = False, ""
            t1 = time.monotonic()
            rows.append((t0, t1, 200 if ok else 0, adapter))
            if ok:
                lat.append(t1 - t0)
            else:
                failed += 1

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as c:
        await asyncio.gather(*[worker(c) for _ in range(concurrency)])
    elapsed = time.monotonic() - t_start
    done = len(rows)
    return LoadResult(label, concurrency, done, failed, round(elapsed, 2), round((done - failed) / elapsed, 3),
                      round(percentile(lat, 50), 3), round(percentile(lat, 99), 3), tokens,
                      round(tokens / elapsed, 1)), rows


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A server in its own process group, so `stop` reaches everything it started (Ray, the engine)."""
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(3)  # let the OS reclaim the engine's memory and cores before the next server


def wait_ready(url: str, path: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url}{path} not ready after {timeout}s")


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "processor": platform.processor() or platform.machine()}


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    fmt = lambda r: " | ".join(str(r.get(c, "")).rjust(w) for c, w in zip(cols, widths, strict=True))  # noqa: E731
    return "\n".join([" | ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)),
                      "-|-".join("-" * w for w in widths), *map(fmt, rows)])


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)))
    return path
