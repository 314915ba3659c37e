"""Bounded work per generation request, each tested with the attack itself against the real gateway app on a real
HTTP server (tests/gateway_app.py), the real StudentEngine behind it and only vLLM's engine replaced by a token
source: batch caps, admission charged by sequences, streaming clients that vanish or stop reading, metric labels
that never take the client's spelling of a model, and the caller's key id on what is captured. After each attack
the service still answers, with every in-flight slot given back (read from /metrics)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.capture.redact import build_redactor
from services.capture.sink import StoreSink
from services.config import Settings
from services.gateway.auth import key_id_of
from services.store.db import Database
from services.store.debates import CaptureRow
from services.store.mags import MagStore
from tests.gateway_app import AdapterEngine, Gateway, serve_gateway

MAX_PROMPTS, MAX_SEQUENCES = 4, 8
SEND_TIMEOUT_S = 1.0


class TokenEngine(AdapterEngine):
    """vLLM's AsyncLLM.generate as the student sees it: `max_tokens` deltas of `text` per sample, the first once
    `release` is set; records the requests it aborts (closing the generator is how vLLM aborts one)."""

    def __init__(self) -> None:
        super().__init__()
        self.text = "x"
        self.release = threading.Event()
        self.release.set()
        self.started: list[str] = []
        self.aborted: list[str] = []

    async def generate(self, prompt: Any, params: Any, request_id: str, lora_request: Any = None) -> Any:
        self.started.append(request_id)
        try:
            while not self.release.is_set():
                await asyncio.sleep(0.01)
            for step in range(params.max_tokens):
                last = step == params.max_tokens - 1
                yield SimpleNamespace(outputs=[
                    SimpleNamespace(index=i, text=self.text, token_ids=[1], finish_reason="length" if last else None)
                    for i in range(params.n)])
                await asyncio.sleep(0)
        except (GeneratorExit, asyncio.CancelledError):
            self.aborted.append(request_id)
            raise


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, model_dir: str) -> Iterator[Gateway]:
    server = {"max_prompts_per_request": MAX_PROMPTS, "max_sequences_per_request": MAX_SEQUENCES,
              "max_sequences_in_flight": MAX_SEQUENCES, "stream_send_timeout_s": SEND_TIMEOUT_S}
    # A context long enough that a 150,000-word prompt is served (it is tokenised for a while first).
    settings = Settings(data_dir=tmp_path_factory.mktemp("bounds"), server=server,
                        student={"max_model_len": 1_000_000})
    with serve_gateway(settings, model_dir, TokenEngine()) as g:
        yield g


@pytest.fixture
def vllm(gateway: Gateway) -> Iterator[TokenEngine]:
    engine = gateway.vllm
    assert isinstance(engine, TokenEngine)
    engine.text, engine.started, engine.aborted = "x", [], []
    engine.release.set()
    yield engine
    engine.release.set()


def series(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of metric `name` in /metrics: labels -> value."""
    out = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))
            out[labels] = float(m.group(2))
    return out


def gauge(url: str, name: str) -> float:
    return series(url, name)[()]


def in_flight(url: str) -> tuple[float, float]:
    return gauge(url, "distillery_requests_in_flight"), gauge(url, "distillery_sequences_in_flight")


def settled(url: str, timeout_s: float = 10) -> tuple[float, float]:
    """The in-flight gauges once they reach zero, or as they stand at the deadline."""
    deadline = time.monotonic() + timeout_s
    while (now := in_flight(url)) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def count_status(url: str, status: int) -> float:
    return sum(v for k, v in series(url, "distillery_requests_total").items() if ("status", str(status)) in k)


def chat(model: str = "student", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 3, **extra}


def assert_still_serves(g: Gateway) -> None:
    r = httpx.post(f"{g.url}/v1/chat/completions", json=chat(), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "xxx"
    assert settled(g.url) == (0, 0)


def test_ten_thousand_prompts_are_refused_before_tokenisation(gateway: Gateway, vllm: TokenEngine) -> None:
    for prompt in (["Tell me a story about a dragon."] * 10_000, [[1, 2, 3]] * 10_000):
        started = time.monotonic()
        r = httpx.post(f"{gateway.url}/v1/completions", json={"model": "student", "prompt": prompt}, timeout=30)
        elapsed = time.monotonic() - started
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "prompt" and r.json()["error"]["code"] == "too_many_prompts"
        assert "10000" in r.json()["error"]["message"]
        print(f"10,000 prompts refused in {elapsed:.3f}s")
    assert vllm.started == []
    r = httpx.post(f"{gateway.url}/v1/completions", json={"model": "student", "prompt": ["a"] * MAX_PROMPTS,
                                                         "max_tokens": 2}, timeout=30)
    assert r.status_code == 200 and len(r.json()["choices"]) == MAX_PROMPTS
    assert_still_serves(gateway)


def test_prompts_times_n_is_capped(gateway: Gateway, vllm: TokenEngine) -> None:
    url = gateway.url
    r = httpx.post(f"{url}/v1/completions", json={"model": "student", "prompt": ["a"] * 16, "n": 128}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "n", r.text  # n is at most 16 in the schema
    r = httpx.post(f"{url}/v1/completions", json={"model": "student", "prompt": ["a"] * MAX_PROMPTS, "n": 16},
                   timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"message": r.json()["error"]["message"], "type": "invalid_request_error",
                                 "param": "n", "code": "too_many_sequences"}
    r = httpx.post(f"{url}/v1/chat/completions", json=chat(n=MAX_SEQUENCES + 1), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    assert vllm.started == []
    r = httpx.post(f"{url}/v1/completions", json={"model": "student", "prompt": ["a", "b"], "n": 4,
                                                 "max_tokens": 1, "temperature": 1}, timeout=30)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2 * 4, r.text
    assert_still_serves(gateway)


async def _flood(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=b) for b in bodies))


def test_admission_is_charged_by_sequences_and_refuses_at_once(gateway: Gateway, vllm: TokenEngine) -> None:
    url = gateway.url
    before = count_status(url, 429)
    vllm.release.clear()  # admitted requests hold their sequences until released
    results: list[httpx.Response] = []
    flood = threading.Thread(target=lambda: results.extend(asyncio.run(
        _flood(url, [chat(n=2, temperature=1)] * 20))))
    flood.start()
    deadline = time.monotonic() + 30
    while count_status(url, 429) - before < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_status(url, 429) - before == 16  # 4 requests x 2 sequences fill the 8 slots, 16 refused
    assert in_flight(url) == (4, MAX_SEQUENCES)
    # A 1 MB conversation is refused while the slots are full, before it is templated or tokenised.
    big = chat(messages=[{"role": "user", "content": "word " * 190_000}])
    started = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=big, timeout=30)
    print(f"a {len(json.dumps(big)):,}-byte body got {r.status_code} in {time.monotonic() - started:.3f}s")
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error", r.text
    vllm.release.set()
    flood.join(timeout=30)
    assert sorted(r.status_code for r in results) == [200] * 4 + [429] * 16
    assert count_status(url, 429) - before == 17
    assert_still_serves(gateway)


def _raw_request(url: str, path: str, body: dict[str, Any], rcvbuf: int | None = None) -> socket.socket:
    """A client socket that has sent `body` to `path` and reads nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_client_gone_before_the_first_frame_releases_its_slot(gateway: Gateway, vllm: TokenEngine) -> None:
    url = gateway.url
    vllm.release.clear()  # no token comes: the client leaves before any frame of the body
    before = count_status(url, 499)
    # Gone while its stream waits for the first token (a completion has no frame before it), then gone while its
    # prompt is tokenised (its response then starts after the client left).
    for path, body in (("/v1/completions", {"model": "student", "prompt": "hi", "stream": True}),
                       ("/v1/chat/completions", chat(messages=[{"role": "user", "content": "word " * 150_000}],
                                                     stream=True))):
        sock = _raw_request(url, path, body)
        time.sleep(0.05)
        sock.close()
        assert settled(url) == (0, 0)
    assert count_status(url, 499) - before == 2
    assert len(vllm.aborted) == len(vllm.started)  # the student's generations were aborted, none left running
    vllm.release.set()
    assert_still_serves(gateway)


async def _asgi_post_then_leave(g: Gateway, path: str, body: dict[str, Any], spec: str) -> list[dict[str, Any]]:
    """POST `body` through the app's ASGI interface (version `spec`) with the client's disconnect already waiting
    when the response starts (a race over real HTTP, made certain here); the messages the app sent."""
    data = json.dumps(body).encode()
    host, port = g.url.removeprefix("http://").split(":")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": (host, int(port)),
             "headers": [(b"host", f"{host}:{port}".encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(data)).encode())]}
    messages = iter([{"type": "http.request", "body": data, "more_body": False}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(g.app(scope, receive, send), timeout=10)
    return sent


# ASGI 2.4 servers send no disconnect to a response that is not reading (Starlette then stops watching for one):
# a stream waiting for its first token would hold its slot until a token came and its send failed.
@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_stream_whose_client_left_before_it_started_releases_its_slot(
    gateway: Gateway, vllm: TokenEngine, spec: str
) -> None:
    url = gateway.url
    vllm.release.clear()  # no token comes
    before = count_status(url, 499)
    for path, body in (("/v1/completions", {"model": "student", "prompt": "hi", "stream": True}),
                       ("/v1/chat/completions", chat(stream=True))):
        sent = asyncio.run(_asgi_post_then_leave(gateway, path, body, spec))
        assert [m["status"] for m in sent if m["type"] == "http.response.start"] in ([], [200]), sent
        assert in_flight(url) == (0, 0)  # released as the response ended, not later
    assert count_status(url, 499) - before == 2
    assert len(vllm.aborted) == len(vllm.started)
    vllm.release.set()
    assert_still_serves(gateway)


def test_a_client_that_stops_reading_releases_its_slot(gateway: Gateway, vllm: TokenEngine) -> None:
    url = gateway.url
    vllm.text = "y" * 16_384  # 16 MB in 1,000 tokens: more than every socket buffer on the way holds
    sock = _raw_request(url, "/v1/chat/completions", chat(stream=True, max_tokens=1000), rcvbuf=4096)
    try:
        deadline = time.monotonic() + 2
        while in_flight(url) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        assert settled(url, timeout_s=SEND_TIMEOUT_S + 10) == (0, 0)
        print(f"a client that stopped reading lost its slot after {time.monotonic() - started:.2f}s")
        assert vllm.aborted == vllm.started != []
    finally:
        sock.close()
    vllm.text = "x"
    assert_still_serves(gateway)


async def _spellings(url: str, models: list[str]) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as client:
        gate = asyncio.Semaphore(8)

        async def one(model: str) -> int:
            async with gate:
                return (await client.post(f"{url}/v1/chat/completions", json=chat(model))).status_code

        return await asyncio.gather(*(one(m) for m in models))


def test_metric_labels_never_take_the_clients_spelling_of_a_model(gateway: Gateway, vllm: TokenEngine) -> None:
    url = gateway.url
    spellings = ["Student", "student ", " student", "STUDENT", "student\t", gateway.base_id.upper(),
                 *(f"no-such-model-{i}" for i in range(994))]
    assert len(set(spellings)) == 1000
    statuses = asyncio.run(_spellings(url, spellings))
    assert set(statuses) == {404}
    # The same spellings refused at admission, before any model is resolved.
    vllm.release.clear()
    holders = threading.Thread(target=asyncio.run, args=(_flood(url, [chat(n=2, temperature=1)] * 4),))
    holders.start()
    deadline = time.monotonic() + 30
    while in_flight(url) != (4, MAX_SEQUENCES) and time.monotonic() < deadline:
        time.sleep(0.02)
    statuses = asyncio.run(_spellings(url, spellings))
    vllm.release.set()
    holders.join(timeout=30)
    assert set(statuses) == {429}
    assert asyncio.run(_spellings(url, ["student", gateway.base_id])) == [200, 200]
    models = {dict(k)["model"] for k in series(url, "distillery_requests_total")}
    assert models <= {"student", gateway.base_id, "unknown", "-"}, models
    assert {"student", gateway.base_id, "unknown"} <= models
    assert len(series(url, "distillery_requests_total")) < 20
    assert_still_serves(gateway)


def test_the_callers_key_id_reaches_the_capture_record(tmp_path: Path, model_dir: str) -> None:
    key = "sk-client-bounds-unit"
    settings = Settings(data_dir=tmp_path, server={"api_keys": [key]})
    sinks: list[StoreSink] = []

    def sink(db: Database) -> StoreSink:
        sinks.append(StoreSink(MagStore(db), build_redactor(settings.capture), linger_s=0.01))
        return sinks[0]

    with serve_gateway(settings, model_dir, TokenEngine(), sink) as g:
        auth = {"Authorization": f"Bearer {key}"}
        for stream in (False, True):
            r = httpx.post(f"{g.url}/v1/chat/completions", json=chat(stream=stream), headers=auth, timeout=30)
            assert r.status_code == 200, r.text
        sinks[0].close()
    with Database(settings.db_url).session() as s:
        assert [row.key_id for row in s.scalars(select(CaptureRow))] == [key_id_of(key)] * 2
