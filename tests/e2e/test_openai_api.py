"""The OpenAI-compatible API against the real service, through the official `openai` client and raw SSE."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from transformers import AutoTokenizer

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def chat_prompt_tokens(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_chat_non_streaming_real_output_and_exact_usage(client, tokenizer, service):
    raw = client.chat.completions.with_raw_response.create(
        model="student", messages=QUESTION, max_tokens=12, temperature=0
    )
    r = raw.parse()
    assert raw.headers["x-distillery-adapter"] == "smollm2-135m-instruct"
    assert raw.headers["x-request-id"]
    assert r.object == "chat.completion" and r.model == "student"
    assert r.choices[0].message.role == "assistant"
    assert "Paris" in r.choices[0].message.content  # the real model knows this one
    assert r.usage.prompt_tokens == chat_prompt_tokens(tokenizer, QUESTION)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 12


def test_length_finish_counts_exactly_max_tokens(client):
    r = client.chat.completions.create(
        model="student", messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=7, temperature=0,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7


def test_chat_streaming_wire_format(service, client, tokenizer):
    body = {"model": "student", "messages": QUESTION, "max_tokens": 12, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{service.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-distillery-adapter"] == "smollm2-135m-instruct"
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["prompt_tokens"] == chat_prompt_tokens(
        tokenizer, QUESTION)
    assert all(c["usage"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] in {"stop", "length"}
    # Streaming and non-streaming greedy runs agree on text and usage.
    full = client.chat.completions.create(model="student", messages=QUESTION, max_tokens=12, temperature=0)
    assert text == full.choices[0].message.content
    assert usage_chunk["usage"] == full.usage.model_dump(exclude_none=True)


def test_openai_client_streaming(client):
    stream = client.chat.completions.create(
        model="student", messages=QUESTION, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_completions_non_streaming_and_streaming(client, tokenizer):
    r = client.completions.create(model="student", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion"
    assert r.usage.prompt_tokens == len(tokenizer("The capital of France is").input_ids)
    assert r.usage.completion_tokens == 6 or r.choices[0].finish_reason == "stop"
    stream = client.completions.create(
        model="student", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_completions_batch_of_prompts_and_token_ids(client, tokenizer):
    ids = tokenizer("One, two, three,").input_ids
    r = client.completions.create(model="student", prompt=["Hello", "Goodbye"], max_tokens=4, temperature=0)
    assert sorted(c.index for c in r.choices) == [0, 1]
    r2 = client.completions.create(model="student", prompt=ids, max_tokens=4, temperature=0)
    assert r2.usage.prompt_tokens == len(ids)


def test_n_seed_and_stop(client):
    kwargs = dict(model="student", messages=[{"role": "user", "content": "Tell me a word."}], max_tokens=10,
                  temperature=1.0, n=3, seed=1234)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    assert 3 <= a.usage.completion_tokens <= 30  # usage covers all n choices, each 1..10 tokens
    s = client.chat.completions.create(
        model="student", messages=QUESTION, max_tokens=20, temperature=0, stop=["Paris"]
    )
    assert "Paris" not in s.choices[0].message.content
    assert s.choices[0].finish_reason == "stop"


def test_models_list_and_get(client, service):
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == ["smollm2-135m-instruct", "student"]
    student = client.models.retrieve("student")
    assert student.id == "student"
    assert student.model_extra["parent"] == "smollm2-135m-instruct"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_health_ready_and_metrics(service, client):
    assert httpx.get(f"{service.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/ready").json()
    assert ready["status"] == "ready"
    client.chat.completions.create(model="student", messages=QUESTION, max_tokens=3)
    text = httpx.get(f"{service.url}/metrics").text
    for name in ["distillery_requests_total", "distillery_request_latency_seconds_bucket",
                 "distillery_time_to_first_token_seconds_bucket", "distillery_prompt_tokens_total",
                 "distillery_generation_tokens_total", "distillery_tokens_per_query_bucket",
                 "distillery_promoted_adapter_info", "distillery_adapter_load_seconds"]:
        assert name in text, name
    assert 'distillery_requests_total{adapter="smollm2-135m-instruct",endpoint="chat",model="student",' \
           'status="200"}' in text
