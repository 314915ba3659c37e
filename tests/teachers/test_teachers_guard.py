"""The built-in reference teachers' app as deployed: the internal bearer token (401 without it), bounded `n`,
messages and body size; the debate agents send the token. Attacked over real HTTP, then asked a real question."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.config import DebateConfig, ReferenceProfile, Settings, TeacherConfig
from services.debate.agents import build_teacher
from services.teachers.server import MAX_MESSAGES, MAX_N, build_teacher_app
from services.teachers.token import teachers_token
from tests.http_servers import serve_app

TOKEN = "internal-teachers-token-unit"
LIMIT = 32 * 1024
TEACHER = TeacherConfig(name="exact", reference=ReferenceProfile())
QUESTION = {"model": "exact", "messages": [{"role": "user", "content": "What is 17 + 25?"}]}


@pytest.fixture(scope="module")
def teachers() -> Iterator[str]:
    with serve_app(build_teacher_app([TEACHER], token=TOKEN, max_body_bytes=LIMIT)) as url:
        yield url


def ask(url: str, body: object, token: str | None = TOKEN, **kw: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/exact/v1/chat/completions", json=body, headers=headers, timeout=30, **kw)


def assert_still_answers(url: str) -> None:
    assert httpx.get(f"{url}/health").status_code == 200
    r = ask(url, QUESTION)
    assert r.status_code == 200 and "Final answer: 42" in r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x"])
def test_without_the_token_every_teacher_route_is_401(teachers: str, token: str | None) -> None:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    for method, path in (("POST", "/exact/v1/chat/completions"), ("POST", "/v1/chat/completions"),
                         ("GET", "/v1/models"), ("GET", "/exact/v1/models")):
        r = httpx.request(method, f"{teachers}{path}", json=QUESTION, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (method, path)
    assert_still_answers(teachers)


@pytest.mark.parametrize("n", [10000, 0, -1, MAX_N + 1, "8", 2.5, True])
def test_n_out_of_bounds_is_400(teachers: str, n: object) -> None:
    r = ask(teachers, {**QUESTION, "n": n})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_n"
    assert_still_answers(teachers)


def test_n_within_bounds_answers_n_choices(teachers: str) -> None:
    assert len(ask(teachers, {**QUESTION, "n": MAX_N}).json()["choices"]) == MAX_N


def test_too_many_messages_are_400(teachers: str) -> None:
    messages = [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)
    r = ask(teachers, {"model": "exact", "messages": messages})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_messages"
    assert_still_answers(teachers)


def test_an_oversize_body_chunked_or_declared_is_413(teachers: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": ['
        for _ in range(32):
            yield b'{"role": "user", "content": "' + b"x" * 65536 + b'"},'

    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    r = httpx.post(f"{teachers}/exact/v1/chat/completions", content=chunks(), headers=headers, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = ask(teachers, {**QUESTION, "padding": "x" * LIMIT})
    assert r.status_code == 413
    assert_still_answers(teachers)


def test_the_debate_agents_send_the_token_and_get_answers(teachers: str, caplog: pytest.LogCaptureFixture) -> None:
    async def answer(token: str | None) -> tuple[str | None, str | None]:
        agent = build_teacher(TEACHER, DebateConfig(), teachers, token)
        try:
            reply = await agent.ask("What is 17 + 25?", "answer")
        finally:
            await agent.aclose()
        return reply.text, reply.error

    text, error = asyncio.run(answer(TOKEN))
    assert error is None and text is not None and "Final answer: 42" in text
    assert asyncio.run(answer(None))[1] == "misconfigured: http_401: Missing or incorrect teachers token"
    assert "refused the request with HTTP 401" in caplog.text and TOKEN not in caplog.text


def test_the_token_is_configured_derived_from_the_admin_key_or_generated_once(tmp_path: Path) -> None:
    configured = Settings(data_dir=tmp_path, server={"teachers_token": "set", "admin_key": "adm"})
    assert teachers_token(configured) == "set"
    derived = Settings(data_dir=tmp_path / "a", server={"admin_key": "adm"})
    assert teachers_token(derived) == teachers_token(derived) and "adm" not in teachers_token(derived)
    assert teachers_token(derived) != teachers_token(Settings(data_dir=tmp_path, server={"admin_key": "adm2"}))
    assert not (tmp_path / "a").exists()  # nothing written when derived
    loopback = Settings(data_dir=tmp_path / "b")
    first = teachers_token(loopback)
    assert len(first) >= 32 and teachers_token(loopback) == first  # every process reads the same one
    token_file = tmp_path / "b" / "teachers-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["teachers-token"]  # no draft left behind
    assert teachers_token(Settings(data_dir=tmp_path / "c")) != first
