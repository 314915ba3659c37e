"""Bounded work per generation request, each tested with the attack itself against the real gateway app on a real
HTTP server (tests/gateway_app.py), with the real StudentEngine's adapter resolution behind it. What stands in is
the student replica's `serve` (services/student/serving.py `StudentOpenAI.serve`, which runs vLLM's serving
classes): a token source that resolves the model as the replica does and answers with events shaped as vLLM's
serving classes make them. The gateway is what is under test here; the real vLLM path is tested end to end in
tests/e2e/. Under test: batch caps, admission charged by sequences, streaming clients that vanish or stop reading,
metric labels that never take the client's spelling of a model, and the caller's key id on what is captured. After
each attack the service still answers, with every in-flight slot given back (read from /metrics)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.capture.redact import build_redactor
from services.capture.sink import StoreSink
from services.config import Settings
from services.gateway.auth import key_id_of
from services.gateway.openai_requests import prompt_count
from services.store.db import Database
from services.store.debates import CaptureRow
from services.store.mags import MagStore
from services.student.engine import StudentEngine
from services.student.events import Body, Chunks, Failed, Finished, Started, StudentEvent
from tests.gateway_app import Gateway, serve_gateway

MAX_PROMPTS, MAX_SEQUENCES = 4, 8
SEND_TIMEOUT_S = 1.0


def _frame(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"  # compact, as vLLM's model_dump_json writes it


class TokenStudent:
    """The student replica's `serve(endpoint, request)` with vLLM's serving classes replaced by a token source:
    the model resolved by the real `engine.adapters.pinned` (an unknown name is its 404), then `max_tokens` tokens
    of `text` per choice (prompts x n). In the order vLLM's serving classes give them: a stream is `Started` as
    soon as its request is prepared (`prepare_s`, the time vLLM takes to render and tokenise it), and its first
    token (with, for chat, the role) waits until `release` is set; a request without `stream` is answered once it
    is generated, in one `Body`. Records the request ids it starts and those aborted (closing or
    cancelling `serve` is how the gateway aborts a generation)."""

    def __init__(self) -> None:
        self.engine: StudentEngine | None = None
        self.text = "x"
        self.prepare_s = 0.0
        self.release = threading.Event()
        self.release.set()
        self.started: list[str] = []
        self.aborted: list[str] = []

    def bind(self, engine: StudentEngine) -> TokenStudent:
        self.engine = engine
        return self

    async def serve(self, endpoint: str, request: Any, version: str | None = None) -> AsyncIterator[StudentEvent]:
        assert self.engine is not None
        asked = request.model or self.engine.settings.student.served_name
        async with self.engine.adapters.pinned(asked) as resolved:
            if isinstance(resolved, Failed):
                yield resolved
                return
            rid = request.request_id
            self.started.append(rid)
            try:
                async for event in self._generate(endpoint, request, asked, resolved.adapter):
                    yield event
            except (GeneratorExit, asyncio.CancelledError):
                self.aborted.append(rid)
                raise

    async def _released(self) -> None:
        while not self.release.is_set():
            await asyncio.sleep(0.01)

    async def _generate(self, endpoint: str, request: Any, asked: str, adapter: str) -> AsyncIterator[StudentEvent]:
        chat = endpoint == "chat"
        choices = (1 if chat else prompt_count(request.prompt)) * (request.n or 1)
        max_tokens = getattr(request, "max_completion_tokens", None) or request.max_tokens or 16
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{request.request_id}", "created": int(time.time()),
                "model": asked}
        await asyncio.sleep(self.prepare_s)
        if not request.stream:
            await self._released()
            text = self.text * max_tokens
            yield Body({**head, "object": "chat.completion" if chat else "text_completion", "choices": [
                {"index": i, "finish_reason": "length",
                 **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
                for i in range(choices)]}, adapter, Finished([text] * choices, 0, max_tokens * choices, time.time()))
            return
        yield Started(adapter)
        await self._released()
        first_token_wall = time.time()
        for step in range(max_tokens):
            reason = "length" if step == max_tokens - 1 else None
            frames = []
            for i in range(choices):
                if chat and step == 0:  # vLLM's first chunk of a choice names the role, with its first output
                    frames.append(_frame({**head, "object": "chat.completion.chunk", "choices": [
                        {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}))
                frames.append(_frame({**head, "object": "chat.completion.chunk", "choices": [
                    {"index": i, "delta": {"content": self.text}, "finish_reason": reason}]} if chat else
                    {**head, "object": "text_completion", "choices": [
                        {"index": i, "text": self.text, "finish_reason": reason}]}))
            yield Chunks(frames)
            await asyncio.sleep(0)
        yield Chunks(["data: [DONE]\n\n"])
        yield Finished([self.text * max_tokens] * choices, 0, max_tokens * choices, first_token_wall)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_dir: str) -> Iterator[tuple[Gateway, TokenStudent]]:
    server = {"max_prompts_per_request": MAX_PROMPTS, "max_sequences_per_request": MAX_SEQUENCES,
              "max_sequences_in_flight": MAX_SEQUENCES, "stream_send_timeout_s": SEND_TIMEOUT_S}
    settings = Settings(data_dir=tmp_path_factory.mktemp("bounds"), server=server)
    student = TokenStudent()
    with serve_gateway(settings, model_dir, openai=student.bind) as g:
        yield g, student


@pytest.fixture(scope="module")
def gateway(served: tuple[Gateway, TokenStudent]) -> Gateway:
    return served[0]


@pytest.fixture
def student(served: tuple[Gateway, TokenStudent]) -> Iterator[TokenStudent]:
    s = served[1]
    s.text, s.prepare_s, s.started, s.aborted = "x", 0.0, [], []
    s.release.set()
    yield s
    s.release.set()


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


def test_ten_thousand_prompts_are_refused_before_tokenisation(gateway: Gateway, student: TokenStudent) -> None:
    for prompt in (["Tell me a story about a dragon."] * 10_000, [[1, 2, 3]] * 10_000):
        started = time.monotonic()
        r = httpx.post(f"{gateway.url}/v1/completions", json={"model": "student", "prompt": prompt}, timeout=30)
        elapsed = time.monotonic() - started
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "prompt" and r.json()["error"]["code"] == "too_many_prompts"
        assert "10000" in r.json()["error"]["message"]
        print(f"10,000 prompts refused in {elapsed:.3f}s")
    assert student.started == []  # counted, never tokenised: the replica (where vLLM tokenises) never saw them
    r = httpx.post(f"{gateway.url}/v1/completions", json={"model": "student", "prompt": ["a"] * MAX_PROMPTS,
                                                         "max_tokens": 2}, timeout=30)
    assert r.status_code == 200 and len(r.json()["choices"]) == MAX_PROMPTS
    assert_still_serves(gateway)


def test_prompts_times_n_is_capped(gateway: Gateway, student: TokenStudent) -> None:
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
    assert student.started == []
    r = httpx.post(f"{url}/v1/completions", json={"model": "student", "prompt": ["a", "b"], "n": 4,
                                                 "max_tokens": 1, "temperature": 1}, timeout=30)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2 * 4, r.text
    assert_still_serves(gateway)


async def _flood(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=b) for b in bodies))


def test_admission_is_charged_by_sequences_and_refuses_at_once(gateway: Gateway, student: TokenStudent) -> None:
    url = gateway.url
    before = count_status(url, 429)
    student.release.clear()  # admitted requests hold their sequences until released
    results: list[httpx.Response] = []
    flood = threading.Thread(target=lambda: results.extend(asyncio.run(
        _flood(url, [chat(n=2, temperature=1)] * 20))))
    flood.start()
    deadline = time.monotonic() + 30
    while count_status(url, 429) - before < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_status(url, 429) - before == 16  # 4 requests x 2 sequences fill the 8 slots, 16 refused
    assert in_flight(url) == (4, MAX_SEQUENCES)
    # A 1 MB conversation is refused while the slots are full, before it reaches the student replica (where vLLM
    # would template and tokenise it).
    big = chat(messages=[{"role": "user", "content": "word " * 190_000}])
    started = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=big, timeout=30)
    print(f"a {len(json.dumps(big)):,}-byte body got {r.status_code} in {time.monotonic() - started:.3f}s")
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error", r.text
    student.release.set()
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


def test_a_client_gone_before_the_first_frame_releases_its_slot(gateway: Gateway, student: TokenStudent) -> None:
    url = gateway.url
    student.release.clear()  # no token comes: the client leaves before any frame of the body
    before = count_status(url, 499)
    # Gone while its stream waits for the first token (vLLM sends no frame before it), then gone while the replica
    # still prepares its request (vLLM rendering and tokenising a long prompt, here 0.5s): its response then starts
    # after the client left.
    for path, body, prepare_s in (("/v1/completions", {"model": "student", "prompt": "hi", "stream": True}, 0.0),
                                  ("/v1/chat/completions", chat(stream=True), 0.5)):
        student.prepare_s = prepare_s
        sock = _raw_request(url, path, body)
        time.sleep(0.05)
        sock.close()
        assert settled(url) == (0, 0)
    assert count_status(url, 499) - before == 2
    # The student's generations were aborted, none left running.
    assert student.aborted == student.started and len(student.started) == 2
    student.release.set()
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
    gateway: Gateway, student: TokenStudent, spec: str
) -> None:
    url = gateway.url
    student.release.clear()  # no token comes
    before = count_status(url, 499)
    for path, body in (("/v1/completions", {"model": "student", "prompt": "hi", "stream": True}),
                       ("/v1/chat/completions", chat(stream=True))):
        sent = asyncio.run(_asgi_post_then_leave(gateway, path, body, spec))
        assert [m["status"] for m in sent if m["type"] == "http.response.start"] in ([], [200]), sent
        assert in_flight(url) == (0, 0)  # released as the response ended, not later
    assert count_status(url, 499) - before == 2
    assert student.aborted == student.started and len(student.started) == 2
    student.release.set()
    assert_still_serves(gateway)


def test_a_client_that_stops_reading_releases_its_slot(gateway: Gateway, student: TokenStudent) -> None:
    url = gateway.url
    student.text = "y" * 16_384  # 16 MB in 1,000 tokens: more than every socket buffer on the way holds
    sock = _raw_request(url, "/v1/chat/completions", chat(stream=True, max_tokens=1000), rcvbuf=4096)
    try:
        deadline = time.monotonic() + 2
        while in_flight(url) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        assert settled(url, timeout_s=SEND_TIMEOUT_S + 10) == (0, 0)
        print(f"a client that stopped reading lost its slot after {time.monotonic() - started:.2f}s")
        assert student.aborted == student.started != []
    finally:
        sock.close()
    student.text = "x"
    assert_still_serves(gateway)


async def _spellings(url: str, models: list[str]) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as client:
        gate = asyncio.Semaphore(8)

        async def one(model: str) -> int:
            async with gate:
                return (await client.post(f"{url}/v1/chat/completions", json=chat(model))).status_code

        return await asyncio.gather(*(one(m) for m in models))


def test_metric_labels_never_take_the_clients_spelling_of_a_model(gateway: Gateway, student: TokenStudent) -> None:
    url = gateway.url
    spellings = ["Student", "student ", " student", "STUDENT", "student\t", gateway.base_id.upper(),
                 *(f"no-such-model-{i}" for i in range(994))]
    assert len(set(spellings)) == 1000
    statuses = asyncio.run(_spellings(url, spellings))
    assert set(statuses) == {404}
    # The same spellings refused at admission, before any model is resolved.
    student.release.clear()
    holders = threading.Thread(target=asyncio.run, args=(_flood(url, [chat(n=2, temperature=1)] * 4),))
    holders.start()
    deadline = time.monotonic() + 30
    while in_flight(url) != (4, MAX_SEQUENCES) and time.monotonic() < deadline:
        time.sleep(0.02)
    statuses = asyncio.run(_spellings(url, spellings))
    student.release.set()
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

    with serve_gateway(settings, model_dir, sink=sink, openai=TokenStudent().bind) as g:
        auth = {"Authorization": f"Bearer {key}"}
        for stream in (False, True):
            r = httpx.post(f"{g.url}/v1/chat/completions", json=chat(stream=stream), headers=auth, timeout=30)
            assert r.status_code == 200, r.text
        sinks[0].close()
    with Database(settings.db_url).session() as s:
        assert [row.key_id for row in s.scalars(select(CaptureRow))] == [key_id_of(key)] * 2
