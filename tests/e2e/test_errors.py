"""Every bad input gets its HTTP status and an OpenAI-shaped error, and the server keeps answering."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "hi"}]


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code:
        assert err["code"] == code
    if param:
        assert err["param"] == param
    return err


@pytest.fixture(autouse=True)
def still_answers(service):
    yield
    r = httpx.post(f"{service.url}/v1/chat/completions",
                   json={"model": "student", "messages": MSG, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, "the server must keep answering after a bad request"


def post(service, body=None, path="/v1/chat/completions", **kw) -> httpx.Response:
    return httpx.post(f"{service.url}{path}", json=body, timeout=60, **kw)


def test_malformed_json_is_400(service):
    r = httpx.post(f"{service.url}/v1/chat/completions", content=b'{"model": ', timeout=30,
                   headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_json")


def test_schema_violations_are_422_with_param(service):
    assert_error(post(service, {"model": "student"}), 422, "validation_error", "messages")
    assert_error(post(service, {"model": "student", "messages": MSG, "temperature": 7}), 422, param="temperature")
    assert_error(post(service, {"model": "student", "messages": [{"role": "wizard", "content": "x"}]}), 422)
    assert_error(post(service, {"model": "student", "prompt": "x", "max_tokens": 0}, "/v1/completions"), 422,
                 param="max_tokens")


def test_unknown_model_is_404(service):
    err = assert_error(post(service, {"model": "gpt-9", "messages": MSG}), 404, "model_not_found", "model")
    assert "gpt-9" in err["message"]
    assert_error(post(service, {"model": "student@v999", "messages": MSG}), 404)


def test_prompt_over_context_is_400_not_truncated(service):
    long = "word " * 3000  # far beyond the test service's 1024-token context
    err = assert_error(post(service, {"model": "student", "messages": [{"role": "user", "content": long}]}),
                       400, "context_length_exceeded", "messages")
    assert "maximum context length is 1024" in err["message"]
    # prompt fits, prompt + max_tokens does not
    assert_error(post(service, {"model": "student", "messages": MSG, "max_tokens": 5000}), 400,
                 "context_length_exceeded")
    assert_error(post(service, {"model": "student", "prompt": long}, "/v1/completions"), 400,
                 "context_length_exceeded", "prompt")


def test_sampling_and_prompt_errors_from_vllm_are_400(service):
    # n > 1 with greedy sampling is refused by vLLM's sampling validation
    assert_error(post(service, {"model": "student", "messages": MSG, "n": 2, "temperature": 0}), 400)
    assert_error(post(service, {"model": "student", "prompt": [99999999]}, "/v1/completions"), 400, param="prompt")


def test_body_over_limit_is_413(service):
    big = {"model": "student", "messages": [{"role": "user", "content": "x" * 1_200_000}]}
    assert_error(post(service, big), 413, "request_too_large")


def test_unknown_route_is_404_in_openai_shape(service):
    assert_error(httpx.get(f"{service.url}/v1/nothing-here"), 404)


async def test_over_concurrency_limit_is_429(service):
    """The test service admits 6 generations at once; 14 at once must see 429s, and the rest succeed."""
    body = {"model": "student", "messages": [{"role": "user", "content": "Count to fifty."}], "max_tokens": 48,
            "temperature": 0}
    async with httpx.AsyncClient(timeout=180) as c:
        rs = await asyncio.gather(*[c.post(f"{service.url}/v1/chat/completions", json=body) for _ in range(14)])
    statuses = sorted(r.status_code for r in rs)
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) >= 6
    for r in rs:
        if r.status_code == 429:
            assert_error(r, 429, "rate_limit_exceeded")
