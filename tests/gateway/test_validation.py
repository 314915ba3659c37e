"""Request parsing: which malformed inputs become 400 and which 422, with the offending parameter named."""

from __future__ import annotations

from services.gateway.errors import ApiError
from services.gateway.protocol import ChatCompletionRequest, CompletionRequest
from services.gateway.validation import check_context, parse_body


def test_json_and_schema_errors():
    assert parse_body(b"{", ChatCompletionRequest).status == 400
    assert parse_body(b"[1]", ChatCompletionRequest).status == 400
    err = parse_body(b'{"model": "m", "messages": []}', ChatCompletionRequest)
    assert isinstance(err, ApiError) and err.status == 422 and err.param == "messages"
    err = parse_body(b'{"model": "m", "prompt": "x", "stop": ["a","b","c","d","e"]}', CompletionRequest)
    assert err.status == 422 and err.param == "stop"


def test_unsupported_extras_are_named_and_noop_values_pass():
    err = parse_body(b'{"model": "m", "messages": [{"role":"user","content":"x"}], "echo": true}',
                     ChatCompletionRequest)
    assert err.status == 400 and err.param == "echo" and err.body()["error"]["code"] == "unsupported_parameter"
    ok = parse_body(b'{"model": "m", "messages": [{"role":"user","content":"x"}], "logprobs": false, '
                    b'"metadata": {"a": "b"}}', ChatCompletionRequest)
    assert isinstance(ok, ChatCompletionRequest)  # the request as sent, its no-op extra and metadata kept
    assert ok.model_dump(exclude_unset=True) == {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                 "metadata": {"a": "b"}, "logprobs": False}


def test_content_parts_and_stop_normalisation():
    req = parse_body(b'{"model": "m", "messages": [{"role":"user","content":[{"type":"text","text":"a"},'
                     b'{"type":"text","text":"b"}]}], "stop": "x"}', ChatCompletionRequest)
    assert req.messages[0].text() == "ab" and req.stop == ["x"]


def test_context_check_refuses_instead_of_truncating():
    assert check_context(100, 28, 128, "messages") is None
    err = check_context(100, 29, 128, "messages")
    assert err.status == 400 and err.code == "context_length_exceeded" and "129 tokens" in err.message
    assert check_context(128, None, 128, "prompt").status == 400


def chat_body(metadata: object) -> bytes:
    import json

    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata": metadata}).encode()


def test_metadata_within_openais_limits_is_kept():
    meta = {f"k{i}": "v" for i in range(16)}
    meta.update({"task": "intent", "k" * 64: "v" * 512})
    del meta["k0"], meta["k1"]
    assert len(meta) == 16
    req = parse_body(chat_body(meta), ChatCompletionRequest)
    assert isinstance(req, ChatCompletionRequest) and req.metadata == meta and req.metadata["task"] == "intent"
    assert parse_body(chat_body(None), ChatCompletionRequest).metadata is None
    assert parse_body(chat_body({}), ChatCompletionRequest).metadata == {}


def test_metadata_past_openais_limits_is_a_422_naming_the_limit():
    cases = {
        "at most 16 key-value pairs, got 17": {f"k{i}": "v" for i in range(17)},
        "keys may be at most 64 characters, got one of 65": {"k" * 65: "v"},
        "values may be at most 512 characters, got one of 513": {"task": "v" * 513},
    }
    for message, meta in cases.items():
        err = parse_body(chat_body(meta), ChatCompletionRequest)
        assert isinstance(err, ApiError), message
        assert err.status == 422 and err.param == "metadata" and message in err.message
        body = err.body()["error"]
        assert body == {"message": err.message, "type": "invalid_request_error", "param": "metadata",
                        "code": "validation_error"}


def test_metadata_values_must_be_strings():
    err = parse_body(chat_body({"task": 5}), ChatCompletionRequest)
    assert isinstance(err, ApiError) and err.status == 422 and err.param == "metadata.task"
    err = parse_body(chat_body(["task", "intent"]), ChatCompletionRequest)
    assert isinstance(err, ApiError) and err.status == 422 and err.param == "metadata"


def test_a_thousand_metadata_keys_are_refused_fast():
    import time

    raw = chat_body({f"key-{i}": "x" * 500 for i in range(1000)})
    t0 = time.perf_counter()
    err = parse_body(raw, ChatCompletionRequest)
    elapsed = time.perf_counter() - t0
    assert isinstance(err, ApiError) and err.status == 422 and "got 1000" in err.message
    assert len(err.message) < 2000  # the refusal does not echo the whole mapping back
    assert elapsed < 0.5, elapsed
