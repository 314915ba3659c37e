"""Schemathesis against the real service: every operation of its OpenAPI schema, fed generated requests.

Each operation gets positive requests (valid by the schema) and, where it takes any input, negative ones (a body,
path or query that breaks the schema). Every answer must be a success or a 4xx in OpenAI's error shape, never a
5xx, and match what the schema documents (status, content type, body); the service must still answer afterwards.

Requests are steered where the schema alone rarely goes: two in three generation requests name a served model (a
random name is only a 404), their token limit is capped so the model never runs long, and most feedback names a
request the service really captured, of a `number`, a `label` or a `json` task, so the answer readers check it.
POST /admin/train is left out: it starts a real training cycle, and it takes no input to fuzz.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Service

pytestmark = [pytest.mark.e2e, pytest.mark.fuzz]

BASE = "smollm2-135m-instruct"
MAX_TOKENS = 4
EXAMPLES = 40  # per operation and generation mode
GENERATION_EXAMPLES = 30  # the two generation endpoints run the model
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

sent: Counter[str] = Counter()  # requests by operation
answered: Counter[str] = Counter()  # answers by status class (2xx, 4xx, 5xx)


@pytest.fixture(scope="module")
def fuzzed(service: Service) -> Service:
    """The shared service (tests/conftest.py): capture on (feedback needs its queue), no debates, no scheduled
    training, a task of each answer type; these tests run after its other tests."""
    return service


def captured_requests(url: str) -> list[str]:
    """The request ids of one captured chat request per task, for feedback to name."""
    ids = []
    for task in ("intent", "record", "default"):
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "student", "messages": [{"role": "user", "content": "Which is it?"}], "max_tokens": 2,
            "metadata": {"task": task}})
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-request-id"])
    return ids


def steer(case: schemathesis.Case, model: str | None, request_id: str | None) -> None:
    """Where a valid body can reach the model or a captured request, make it do so, and keep generation short."""
    body = case.body
    if not isinstance(body, dict):
        return
    if "messages" in body or "prompt" in body:
        if model is not None and isinstance(body.get("model"), str):
            body["model"] = model
        limits = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
        for key in limits:
            if isinstance(body[key], int) and body[key] > MAX_TOKENS:
                body[key] = MAX_TOKENS
        if not limits:  # no limit: the model would write up to the context length
            body["max_tokens"] = MAX_TOKENS
    elif "answer" in body and request_id is not None and isinstance(body.get("request_id"), str):
        body["request_id"] = request_id


def problems(case: schemathesis.Case, response: Any) -> list[str]:
    """What is wrong with one answer: a 5xx, an error outside OpenAI's shape, a break with the schema."""
    found = []
    if response.status_code >= 400:
        try:
            error = json.loads(response.content)["error"]
            shaped = isinstance(error["message"], str) and isinstance(error["type"], str)
        except (ValueError, KeyError, TypeError):
            shaped = False
        if not shaped:
            found.append(f"error not in OpenAI's shape: {response.text[:300]!r}")
    try:
        case.validate_response(response, checks=CHECKS)
    except FailureGroup as group:
        found += [f"{type(f).__name__}: {f.title}: {f.message}"[:1500] for f in group.exceptions]
    return found


def fuzz(op: Any, mode: GenerationMode, examples: int, request_ids: list[str], failures: list[str]) -> None:
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode), model=st.sampled_from([None, "student", BASE]),
           request_id=st.sampled_from([None, *request_ids]))
    def run(case: schemathesis.Case, model: str | None, request_id: str | None) -> None:
        steer(case, model, request_id)
        response = case.call(timeout=120)
        sent[op.label] += 1
        answered[f"{response.status_code // 100}xx"] += 1
        failures.extend(f"{op.label} ({mode.value}, {response.status_code}): {p}\n  {case.as_curl_command()[:800]}"
                        for p in problems(case, response))

    try:
        run()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise
        # No request breaks this operation's schema (a path parameter that takes any string): nothing to send.


def test_every_generated_request_is_answered_in_openai_shape_never_with_a_5xx(fuzzed, capsys):
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    request_ids = captured_requests(fuzzed.url)
    failures: list[str] = []
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzed_ops = [op for op in operations if op.label != "POST /admin/train"]
    assert len(fuzzed_ops) >= 19 and len(fuzzed_ops) == len(operations) - 1
    for op in fuzzed_ops:
        has_input = bool(op.body) or any(len(p) for p in (op.path_parameters, op.query, op.headers))
        examples = GENERATION_EXAMPLES if op.path in ("/v1/chat/completions", "/v1/completions") else EXAMPLES
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,):
            fuzz(op, mode, examples, request_ids, failures)
    with capsys.disabled():
        print(f"\nfuzzed {sum(sent.values())} generated requests over {len(sent)} operations in "
              f"{time.monotonic() - started:.0f}s: {dict(sorted(answered.items()))}, {len(failures)} problems")
    assert set(sent) == {op.label for op in fuzzed_ops}
    assert sum(sent.values()) >= 800 and answered["2xx"] >= 150 and answered["4xx"] >= 400
    assert not failures, "\n\n".join(failures[:20])


def test_the_service_still_answers_after_the_fuzzing(fuzzed):
    assert httpx.get(f"{fuzzed.url}/health", timeout=10).json() == {"status": "ok"}
    assert httpx.get(f"{fuzzed.url}/ready", timeout=30).status_code == 200
    r = httpx.post(f"{fuzzed.url}/v1/chat/completions", timeout=60, json={
        "model": "student", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
    assert fuzzed.proc.poll() is None


def test_the_inputs_fuzzing_found_failing_with_a_500_are_refused_with_a_4xx(fuzzed):
    """A job id past the store's 64-bit key; a `lora_path` that no filesystem takes as a path."""
    for method, path in (("GET", f"/admin/jobs/{2**64}"), ("POST", f"/admin/jobs/{2**63}/cancel")):
        r = httpx.request(method, f"{fuzzed.url}{path}", timeout=30)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
    for lora_path in ("adapters/\x00v1", "~no-such-user-7f3a/adapter", "a" * 300):
        r = httpx.post(f"{fuzzed.url}/v1/load_lora_adapter", json={"lora_name": "fz", "lora_path": lora_path},
                       timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == {**r.json()["error"], "code": "invalid_adapter", "param": "lora_path"}
