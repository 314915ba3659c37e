"""Soak: the real service under a hostile mix for a long run, with 100% capture and debates on.

    python bench/soak.py [--minutes 30] [--concurrency 16]

`distillery serve` (Ray Serve + vLLM CPU, client and admin keys, every chat request captured, the debate worker
on with the built-in teachers) gets `concurrency` closed-loop clients, each picking its next request from a
fixed mix:

    chat       a normal chat completion (the only kind whose answer must be 200)
    stream     a streaming chat completion the client drops after the first frame, or before any frame
    oversize   a chunked 2 MB body (no Content-Length), to a generation, an admin and the feedback route
    malformed  broken JSON, wrong types, a text/plain body, an unknown model
    feedback   a label on the client's own request, then on another key's request, and relabels of one request

Every 10 s it samples, from outside the service: the resident memory of the service's whole process tree
(psutil), `distillery_requests_in_flight`, `distillery_sequences_in_flight`, the capture queue
(`distillery_capture_queue{state="queued"}`) and `distillery_capture_shed_total` from /metrics. At the end it waits
for the in-flight gauges to settle.

Pass criteria (issue 15): zero 5xx on valid requests (5xx of any kind are counted too); in-flight requests and
sequences back to zero; resident memory flat (mean of the
last 5 minutes within 10% of the first 5 minutes'); the capture queue never above its cap. Prints a table and
writes bench/results/soak-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from bench.common import QUESTIONS, machine, start, stop, table, wait_ready, write_json
from services.config import Settings
from services.student.model_prep import resolve_base_model

CLIENT_KEYS = ["sk-soak-client-a-5f1e2d", "sk-soak-client-b-9c8b7a"]  # labeller keys: may label their own
ADMIN_KEY = "sk-soak-admin-0a1b2c"
QUEUE_CAP = 200
MIX = {"chat": 45, "stream": 15, "oversize": 10, "malformed": 15, "feedback": 15}
BIG = 2_000_000


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*{re.escape(labels)}[^}}]*\}})?\s+(\S+)$", re.M)
    return sum(float(m.group(2)) for m in pattern.finditer(text))


def tree_rss(pid: int) -> int:
    """Resident bytes of the service and every process under it (Ray's workers, the vLLM engine)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


class Soak:
    def __init__(self, url: str, pid: int, seconds: float, seed: int = 0) -> None:
        self.url, self.pid, self.seconds = url, pid, seconds
        self.rng = random.Random(seed)
        self.status: dict[str, Counter[int]] = {k: Counter() for k in MIX}
        self.valid_5xx = 0
        self.server_errors: Counter[str] = Counter()  # 5xx of any kind: a refusal must be a 4xx
        self.transport_errors: Counter[str] = Counter()
        self.samples: list[dict[str, float]] = []
        self.request_ids: dict[str, list[str]] = {k: [] for k in CLIENT_KEYS}

    def _auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def _chat_body(self, stream: bool = False) -> dict[str, Any]:
        return {"model": "student", "max_tokens": 16, "temperature": 0, "stream": stream,
                "messages": [{"role": "user", "content": self.rng.choice(QUESTIONS)}]}

    async def chat(self, c: httpx.AsyncClient, key: str) -> int:
        r = await c.post(f"{self.url}/v1/chat/completions", json=self._chat_body(), headers=self._auth(key))
        if r.status_code == 200:
            self.request_ids[key].append(r.headers.get("x-request-id", ""))
        if r.status_code >= 500:
            self.valid_5xx += 1
        return r.status_code

    async def stream(self, c: httpx.AsyncClient, key: str) -> int:
        before_first = self.rng.random() < 0.5
        async with c.stream("POST", f"{self.url}/v1/chat/completions", json=self._chat_body(stream=True),
                            headers=self._auth(key)) as r:
            if r.status_code >= 500:
                self.valid_5xx += 1
            if not before_first and r.status_code == 200:
                async for _ in r.aiter_lines():
                    break  # the first frame, then the client vanishes
        return r.status_code

    async def oversize(self, c: httpx.AsyncClient, key: str) -> int:
        async def chunks():
            for _ in range(BIG // 65536 + 1):
                yield b" " * 65536

        path = self.rng.choice(["/v1/chat/completions", "/admin/adapters/rollback", "/v1/feedback"])
        r = await c.post(f"{self.url}{path}", content=chunks(),
                         headers={**self._auth(key), "content-type": "application/json"})
        return r.status_code

    async def malformed(self, c: httpx.AsyncClient, key: str) -> int:
        kind = self.rng.randrange(4)
        h = {**self._auth(key), "content-type": "application/json"}
        if kind == 0:
            r = await c.post(f"{self.url}/v1/chat/completions", content=b'{"model": "student", "messages": [',
                             headers=h)
        elif kind == 1:
            r = await c.post(f"{self.url}/v1/chat/completions", headers=h,
                             json={"model": "student", "messages": "hi", "max_tokens": "many"})
        elif kind == 2:
            r = await c.post(f"{self.url}/v1/chat/completions", content=b'{"model":"student","messages":[]}',
                             headers={**self._auth(key), "content-type": "text/plain"})
        else:
            r = await c.post(f"{self.url}/v1/chat/completions", headers=h,
                             json={**self._chat_body(), "model": f"no-such-model-{self.rng.randrange(10**6)}"})
        return r.status_code

    async def feedback(self, c: httpx.AsyncClient, key: str) -> int:
        other = CLIENT_KEYS[1 - CLIENT_KEYS.index(key)]
        own, theirs = self.request_ids[key][-20:], self.request_ids[other][-20:]
        pick = self.rng.random()
        if pick < 0.4 and own:
            rid = self.rng.choice(own)
        elif pick < 0.7 and theirs:
            rid = self.rng.choice(theirs)
        else:
            rid = f"req-unknown-{self.rng.randrange(10**9)}"
        r = await c.post(f"{self.url}/v1/feedback", headers=self._auth(key),
                         json={"request_id": rid, "answer": self.rng.choice(["5", "6", "7"])})
        return r.status_code

    async def client(self, c: httpx.AsyncClient, deadline: float) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        while time.monotonic() < deadline:
            kind = self.rng.choices(kinds, weights)[0]
            key = self.rng.choice(CLIENT_KEYS)
            try:
                code = await getattr(self, kind)(c, key)
            except httpx.HTTPError as e:
                self.transport_errors[f"{kind}:{type(e).__name__}"] += 1
                if kind == "chat":
                    self.valid_5xx += 1  # a valid request with no answer counts as a server failure
                continue
            self.status[kind][code] += 1
            if code >= 500:
                self.server_errors[kind] += 1

    async def sample(self, c: httpx.AsyncClient, t0: float) -> dict[str, float]:
        text = (await c.get(f"{self.url}/metrics", timeout=30)).text
        return {"t": round(time.monotonic() - t0, 1), "rss_mb": round(tree_rss(self.pid) / 2**20, 1),
                "in_flight": _metric(text, "distillery_requests_in_flight"),
                "sequences": _metric(text, "distillery_sequences_in_flight"),
                "queued": _metric(text, "distillery_capture_queue", 'state="queued"'),
                "shed": _metric(text, "distillery_capture_shed_total")}

    async def sampler(self, c: httpx.AsyncClient, t0: float, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                self.samples.append(await self.sample(c, t0))
            except httpx.HTTPError as e:
                self.transport_errors[f"metrics:{type(e).__name__}"] += 1
            await asyncio.sleep(10)

    async def run(self, concurrency: int) -> dict[str, Any]:
        t0 = time.monotonic()
        deadline = t0 + self.seconds
        limits = httpx.Limits(max_connections=concurrency + 8)
        async with httpx.AsyncClient(timeout=120, limits=limits) as c:
            await asyncio.gather(self.sampler(c, t0, deadline), *[self.client(c, deadline) for _ in range(concurrency)])
            settle = time.monotonic() + 60
            final = await self.sample(c, t0)
            while (final["in_flight"] > 0 or final["sequences"] > 0) and time.monotonic() < settle:
                await asyncio.sleep(2)
                final = await self.sample(c, t0)
        return final


def verdict(soak: Soak, final: dict[str, float], seconds: float) -> dict[str, Any]:
    window = min(300.0, seconds / 3)
    first = [s["rss_mb"] for s in soak.samples if s["t"] <= window]
    last = [s["rss_mb"] for s in soak.samples if s["t"] >= seconds - window]
    first_mb, last_mb = sum(first) / max(1, len(first)), sum(last) / max(1, len(last))
    growth = last_mb / first_mb - 1 if first_mb else float("nan")
    max_queued = max((s["queued"] for s in soak.samples), default=0.0)
    return {"valid_5xx": soak.valid_5xx, "any_5xx": sum(soak.server_errors.values()),
            "in_flight_end": final["in_flight"], "sequences_end": final["sequences"], "shed": final["shed"],
            "rss_first_mb": round(first_mb, 1), "rss_last_mb": round(last_mb, 1), "rss_growth": round(growth, 4),
            "max_queued": max_queued, "queue_cap": QUEUE_CAP,
            "passed": soak.valid_5xx == 0 and final["in_flight"] == 0 and final["sequences"] == 0
            and abs(growth) <= 0.10 and max_queued <= QUEUE_CAP}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--port", type=int, default=8102)
    args = ap.parse_args()
    seconds = args.minutes * 60

    model_dir = resolve_base_model(Settings(), print)
    work = Path(tempfile.mkdtemp(prefix="distillery-soak-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DISTILLERY_DATA_DIR": str(work / "data"),
           "DISTILLERY_STUDENT__MODEL": model_dir, "DISTILLERY_SERVER__PORT": str(args.port),
           "DISTILLERY_STUDENT__KV_CACHE_GB": "1", "DISTILLERY_STUDENT__MAX_MODEL_LEN": "1024",
           "DISTILLERY_SERVER__LABELLER_KEYS": "[" + ",".join(f'"{k}"' for k in CLIENT_KEYS) + "]",
           "DISTILLERY_SERVER__ADMIN_KEY": ADMIN_KEY,
           "DISTILLERY_CAPTURE__SAMPLE_RATE": "1.0", "DISTILLERY_CAPTURE__MAX_QUEUED": str(QUEUE_CAP),
           "DISTILLERY_TRAINING__ENABLED": "0"}
    print(f"machine: {machine()}\nwork dir: {work}", flush=True)
    proc = start([sys.executable, "-m", "services.cli", "serve"], env, work / "distillery.log")
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_ready(url, "/ready", 600, proc)
        soak = Soak(url, proc.pid, seconds)
        final = asyncio.run(soak.run(args.concurrency))
    finally:
        stop(proc)
    result = verdict(soak, final, seconds)
    rows = [{"kind": k, "requests": sum(c.values()), **{str(code): n for code, n in sorted(c.items())}}
            for k, c in soak.status.items()]
    codes = sorted({str(code) for c in soak.status.values() for code in c})
    print(f"\nSoak: {args.minutes} min at concurrency {args.concurrency}, 100% capture")
    print(table(rows, ["kind", "requests", *codes]))
    print(table([result], list(result)))
    if soak.transport_errors:
        print(f"transport errors: {dict(soak.transport_errors)}")
    path = write_json("soak", {"machine": machine(), "minutes": args.minutes, "concurrency": args.concurrency,
                               "mix": MIX, "status": {k: dict(c) for k, c in soak.status.items()},
                               "transport_errors": dict(soak.transport_errors), "samples": soak.samples,
                               "verdict": result})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
