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
    assert isinstance(ok, ChatCompletionRequest)


def test_content_parts_and_stop_normalisation():
    req = parse_body(b'{"model": "m", "messages": [{"role":"user","content":[{"type":"text","text":"a"},'
                     b'{"type":"text","text":"b"}]}], "stop": "x"}', ChatCompletionRequest)
    assert req.messages[0].text() == "ab" and req.stop == ["x"]


def test_context_check_refuses_instead_of_truncating():
    assert check_context(100, 28, 128, "messages") is None
    err = check_context(100, 29, 128, "messages")
    assert err.status == 400 and err.code == "context_length_exceeded" and "129 tokens" in err.message
    assert check_context(128, None, 128, "prompt").status == 400
