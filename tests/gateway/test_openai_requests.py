"""Reading a generation request (services/gateway/openai_requests.py): the body as vLLM's own request model, held to
OpenAI's limits, the batch caps, tool schemas, what capture records and the task route. Pure functions: no engine."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from services.config import ServerConfig, TaskMatch, TaskProfile
from services.gateway.errors import ApiError
from services.gateway.openai_requests import Generation, prompt_count, read_chat, read_completion
from services.tasks.routing import TaskRouter

SERVER = ServerConfig(max_prompts_per_request=4, max_sequences_per_request=8)
ROUTER = TaskRouter([TaskProfile(name="math", answer_type="number", match=TaskMatch(system_prompt_prefix="Solve")),
                     TaskProfile(name="intent", answer_type="label", labels=["a", "b"]),
                     TaskProfile(name="default")])
ADD_TOOL = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def chat(**fields: Any) -> Generation | ApiError:
    body = {"model": "student", "messages": [{"role": "user", "content": "What is 2+2?"}], **fields}
    return read_chat(json.dumps(body).encode(), SERVER, ROUTER)


def completion(**fields: Any) -> Generation | ApiError:
    body = {"model": "student", "prompt": "2+2=", **fields}
    return read_completion(json.dumps(body).encode(), SERVER)


def refused(result: Generation | ApiError, status: int, code: str, param: str | None) -> ApiError:
    assert isinstance(result, ApiError), result
    assert (result.status, result.code, result.param) == (status, code, param), result
    return result


def served(result: Generation | ApiError) -> Generation:
    assert isinstance(result, Generation), result
    return result


# ---- the body ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"{", b'{"model": "student",}', b"", b"\xff\xfe{}", b"NaN-ish"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_body_that_is_not_json_is_400_invalid_json(raw: bytes, endpoint: str) -> None:
    result = read_chat(raw, SERVER, ROUTER) if endpoint == "chat" else read_completion(raw, SERVER)
    err = refused(result, 400, "invalid_json", None)
    assert "not valid JSON" in err.message


@pytest.mark.parametrize("raw", [b"[]", b'["model", "student"]', b'"hello"', b"42", b"null", b"true"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_json_body_that_is_not_an_object_is_400_invalid_json(raw: bytes, endpoint: str) -> None:
    result = read_chat(raw, SERVER, ROUTER) if endpoint == "chat" else read_completion(raw, SERVER)
    err = refused(result, 400, "invalid_json", None)
    assert err.message == "Request body must be a JSON object"


def test_a_body_without_model_or_messages_is_422() -> None:
    refused(read_chat(b'{"messages": [{"role": "user", "content": "x"}]}', SERVER, ROUTER), 422,
            "validation_error", "model")
    refused(read_chat(b'{"model": "student"}', SERVER, ROUTER), 422, "validation_error", "messages")
    refused(chat(messages=[]), 422, "validation_error", "messages")
    refused(read_completion(b'{"model": "student"}', SERVER), 422, "validation_error", "prompt")


# ---- OpenAI's limits -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"temperature": 7}, "temperature", "less than or equal to 2"),
    ({"temperature": -0.1}, "temperature", "greater than or equal to 0"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"n": 17}, "n", "less than or equal to 16"),
    ({"presence_penalty": 2.5}, "presence_penalty", "less than or equal to 2"),
    ({"messages": [{"role": "wizard", "content": "abracadabra"}]}, "messages.0.role", "'system'"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]}, "messages.1.role", "'tool'"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences"),
    ({"stop": ""}, "stop", "must not be empty"),
    ({"stop": ["ok", ""]}, "stop", "must not be empty"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16 key-value pairs, got 17"),
    ({"metadata": {"k" * 65: "v"}}, "metadata", "at most 64 characters, got one of 65"),
    ({"metadata": {"note": "v" * 513}}, "metadata", "at most 512 characters, got one of 513 ('note')"),
    ({"metadata": {"task": 3}}, "metadata.task", "valid string"),
])
def test_chat_beyond_openai_limits_is_422_naming_the_param(fields: dict[str, Any], param: str, says: str) -> None:
    err = refused(chat(**fields), 422, "validation_error", param)
    assert says in err.message
    assert err.type == "invalid_request_error"


@pytest.mark.parametrize("fields", [
    {"temperature": 2, "top_p": 1, "n": 8, "presence_penalty": -2, "frequency_penalty": 2},
    {"stop": ["a", "b", "c", "d"]},
    {"stop": "\n"},
    {"metadata": {**{f"k{i}": "v" for i in range(15)}, "k" * 64: "v" * 512}},
])
def test_chat_at_openai_limits_is_accepted(fields: dict[str, Any]) -> None:
    served(chat(**fields))


@pytest.mark.parametrize(("fields", "param"), [
    ({"temperature": 7}, "temperature"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": ""}, "prompt"),
])
def test_completions_beyond_openai_limits_is_422_naming_the_param(fields: dict[str, Any], param: str) -> None:
    err = completion(**fields)
    assert isinstance(err, ApiError), err
    assert (err.status, err.code) == (422, "validation_error"), err
    assert err.param is not None and err.param.split(".")[0] == param, err


def test_a_thousand_metadata_keys_are_refused_fast() -> None:
    body = json.dumps({"model": "student", "messages": [{"role": "user", "content": "x"}],
                       "metadata": {f"key-{i}": "v" * 512 for i in range(1000)}}).encode()
    started = time.perf_counter()
    err = refused(read_chat(body, SERVER, ROUTER), 422, "validation_error", "metadata")
    assert time.perf_counter() - started < 0.5
    assert "got 1000" in err.message


def test_a_field_only_vllm_knows_is_held_to_vllms_schema() -> None:
    refused(chat(min_tokens="many"), 422, "validation_error", "min_tokens")
    refused(completion(seed="seven"), 422, "validation_error", "seed")


def test_a_value_vllms_own_checks_refuse_is_400_naming_the_param() -> None:
    err = refused(chat(top_logprobs=3), 400, "invalid_request", "top_logprobs")  # without logprobs: true
    assert "top_logprobs" in err.message


def test_the_batch_caps_come_before_vllm_reads_the_request() -> None:
    refused(completion(prompt=["a"] * 1000, seed="seven"), 400, "too_many_prompts", "prompt")
    refused(chat(n=9, min_tokens="many"), 400, "too_many_sequences", "n")


# ---- vLLM's fields, carried on the request -------------------------------------------------------------
def test_chat_carries_vllms_fields_on_its_request() -> None:
    gen = served(chat(tools=[ADD_TOOL], tool_choice={"type": "function", "function": {"name": "add"}},
                      response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
                      logprobs=True, top_logprobs=3, seed=7, max_completion_tokens=12, stream=True, top_k=5))
    request = gen.request
    assert isinstance(request, ChatCompletionRequest)
    assert (gen.endpoint, gen.model, gen.sequences, gen.stream) == ("chat", "student", 1, True)
    assert request.tools[0].function.name == "add"
    assert request.tools[0].function.parameters == ADD_TOOL["function"]["parameters"]
    assert request.tool_choice.function.name == "add"
    assert request.response_format.type == "json_schema"
    assert request.response_format.json_schema.json_schema == SCHEMA
    assert (request.logprobs, request.top_logprobs, request.seed) == (True, 3, 7)
    assert (request.max_completion_tokens, request.top_k) == (12, 5)


def test_chat_accepts_json_object_and_auto_tool_choice() -> None:
    gen = served(chat(response_format={"type": "json_object"}, tools=[ADD_TOOL], tool_choice="auto"))
    assert gen.request.response_format.type == "json_object"
    assert gen.request.tool_choice == "auto"
    assert not gen.stream


def test_completions_carry_vllms_fields_on_its_request() -> None:
    gen = served(completion(logprobs=2, seed=3, max_tokens=9, echo=True, n=2))
    assert isinstance(gen.request, CompletionRequest)
    assert (gen.request.logprobs, gen.request.seed, gen.request.max_tokens, gen.request.echo) == (2, 3, 9, True)
    assert (gen.endpoint, gen.sequences) == ("completions", 2)


@pytest.mark.parametrize("parameters", [{"type": "bogus"}, {"type": "object", "properties": {"a": {"type": 3}}},
                                        {"type": "object", "required": "a"}])
def test_tool_parameters_that_are_not_a_json_schema_are_400(parameters: dict[str, Any]) -> None:
    good = ADD_TOOL
    bad = {"type": "function", "function": {"name": "broken", "parameters": parameters}}
    refused(chat(tools=[bad]), 400, "invalid_tool_schema", "tools[0].function.parameters")
    err = refused(chat(tools=[good, bad]), 400, "invalid_tool_schema", "tools[1].function.parameters")
    assert "not a valid JSON Schema" in err.message


def test_a_tool_without_parameters_is_accepted() -> None:
    gen = served(chat(tools=[{"type": "function", "function": {"name": "now"}}]))
    assert gen.request.tools[0].function.parameters is None


# ---- batch caps ----------------------------------------------------------------------------------------
def test_completions_with_more_prompts_than_allowed_are_400_too_many_prompts() -> None:
    assert served(completion(prompt=["a"] * 4)).sequences == 4
    err = refused(completion(prompt=["a"] * 5), 400, "too_many_prompts", "prompt")
    assert "At most 4 prompts" in err.message and "got 5" in err.message
    refused(completion(prompt=[[1, 2]] * 5), 400, "too_many_prompts", "prompt")


def test_completions_with_more_sequences_than_allowed_are_400_too_many_sequences() -> None:
    assert served(completion(prompt=["a"] * 4, n=2)).sequences == 8
    err = refused(completion(prompt=["a"] * 3, n=3), 400, "too_many_sequences", "n")
    assert "3 x 3 = 9" in err.message


def test_chat_n_is_capped_by_sequences() -> None:
    assert served(chat(n=8)).sequences == 8
    refused(chat(n=9), 400, "too_many_sequences", "n")


def test_the_sequence_cap_is_never_above_what_may_be_in_flight() -> None:
    server = ServerConfig(max_prompts_per_request=4, max_sequences_per_request=32, max_sequences_in_flight=6)
    body = json.dumps({"model": "student", "prompt": ["a", "b"], "n": 4}).encode()
    err = refused(read_completion(body, server), 400, "too_many_sequences", "n")
    assert "At most 6 sequences" in err.message
    body = json.dumps({"model": "student", "prompt": ["a", "b"], "n": 3}).encode()
    assert served(read_completion(body, server)).sequences == 6


@pytest.mark.parametrize(("prompt", "count"), [
    ("one text", 1), (["a"], 1), (["a", "b", "c"], 3), ([1, 2, 3, 4], 1), ([[1, 2], [3], [4, 5, 6]], 3), ([[7]], 1),
])
def test_prompt_count(prompt: Any, count: int) -> None:
    assert prompt_count(prompt) == count
    assert served(completion(prompt=prompt)).sequences == count


# ---- what capture records, and the task ----------------------------------------------------------------
def test_capture_records_the_conversation_normalised() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
    gen = served(chat(messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ], tools=[ADD_TOOL]))
    assert gen.capture["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
    ]


def test_capture_records_sampling_tools_and_response_format() -> None:
    gen = served(chat(temperature=0.5, top_p=0.9, seed=11, stop=["\n\n"], tools=[ADD_TOOL],
                      tool_choice={"type": "function", "function": {"name": "add"}}, max_completion_tokens=20,
                      response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}))
    capture = gen.capture
    assert (capture["temperature"], capture["top_p"], capture["seed"], capture["stop"]) == (0.5, 0.9, 11, ["\n\n"])
    assert capture["max_tokens"] == 20
    assert capture["tools"] == [ADD_TOOL]
    assert capture["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert capture["response_format"]["type"] == "json_schema"
    assert SCHEMA in capture["response_format"]["json_schema"].values()
    assert capture["task"] == "default"
    json.dumps(capture)  # what a capture records is stored as JSON


def test_capture_leaves_out_what_the_request_did_not_set() -> None:
    gen = served(chat(max_tokens=5))
    assert gen.capture["max_tokens"] == 5
    for key in ("temperature", "top_p", "seed", "stop", "tools", "response_format"):
        assert key not in gen.capture
    assert gen.capture.get("tool_choice", "none") == "none"  # vLLM's default without tools


def test_completions_capture_records_the_prompt() -> None:
    gen = served(completion(prompt=["2+2=", "3+3="], temperature=0, max_tokens=4))
    assert gen.capture["prompt"] == ["2+2=", "3+3="]
    assert (gen.capture["temperature"], gen.capture["max_tokens"]) == (0, 4)
    assert gen.task is None and "task" not in gen.capture


@pytest.mark.parametrize(("fields", "task", "via"), [
    ({"metadata": {"task": "intent"}}, "intent", "metadata"),
    ({"metadata": {"task": "nonesuch"}}, "default", "unknown"),
    ({"messages": [{"role": "developer", "content": "Solve: 2+2"}, {"role": "user", "content": "?"}]}, "math", "rule"),
    ({"messages": [{"role": "system", "content": [{"type": "text", "text": "Solve "}, {"type": "text", "text": "x"}]},
                   {"role": "user", "content": "?"}]}, "math", "rule"),
    ({}, "default", "default"),
])
def test_the_task_route(fields: dict[str, Any], task: str, via: str) -> None:
    gen = served(chat(**fields))
    assert (gen.task, gen.via, gen.capture["task"]) == (task, via, task)


# ---- ids -----------------------------------------------------------------------------------------------
def test_for_request_gives_distinct_engine_ids_for_the_same_client_id() -> None:
    first, second = served(chat()).for_request("client-1"), served(chat()).for_request("client-1")
    assert first.request.request_id != second.request.request_id
    assert first.request.request_id.startswith("client-1-") and second.request.request_id.startswith("client-1-")
    assert first.response_id == f"chatcmpl-{first.request.request_id}"


def test_response_ids_are_prefixed_by_endpoint() -> None:
    gen = served(completion()).for_request("r")
    assert gen.response_id == f"cmpl-{gen.request.request_id}"
    assert gen.response_id.startswith("cmpl-r-")
