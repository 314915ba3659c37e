"""The OpenAI surface vLLM serves, through Distillery, with the official `openai` client: tool calls (named
`tool_choice`, streamed and not), structured outputs (`json_schema`, `json_object`), logprobs; on the `student` alias
and on an exact version `student@vN`. And bad input of those kinds: a 400 in OpenAI's shape naming the parameter,
the service answering afterwards."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import partial_json_parser
import pytest

from tests.lora_factory import train_codeword_adapter

pytestmark = pytest.mark.e2e

# Bounded strings and numbers: the grammar then ends the call within the token limit whatever the weights prefer.
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 14}},
           "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather forecast of a city.",
                                           "parameters": WEATHER}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def client(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def exact(service, model_dir, tmp_path_factory) -> str:
    """An exact version, published from a real adapter lightly trained on the real model (a distilled adapter
    refines the model, it does not replace it: the codeword adapters of the other tests answer every question with
    their codeword), and not promoted: `student` keeps what it serves for the other tests."""
    adapter = train_codeword_adapter(model_dir, tmp_path_factory.mktemp("surface"), "SURFACE-1", steps=3, seed=2)
    r = httpx.post(f"{service.url}/v1/load_lora_adapter", timeout=120,
                   json={"lora_name": "surface", "lora_path": str(adapter)})
    assert r.status_code == 200, r.text
    return str(r.json()["version"])


@pytest.fixture(params=["student", "exact"])
def model(request: pytest.FixtureRequest) -> str:
    return "student" if request.param == "student" else str(request.getfixturevalue("exact"))


def test_a_named_tool_choice_returns_a_parsed_tool_call(client: openai.OpenAI, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=96, temperature=0)
    r = raw.parse()
    assert r.model == model
    if model != "student":
        assert raw.headers["x-distillery-adapter"] == model
    calls = r.choices[0].message.tool_calls
    assert calls and len(calls) == 1, r.choices[0]
    assert calls[0].type == "function" and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
    assert r.choices[0].finish_reason in ("stop", "tool_calls")


def test_a_streamed_named_tool_call_arrives_in_deltas_that_parse(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice=NAMED,
                                            max_tokens=96, temperature=0, stream=True)
    names, arguments, chunks = [], "", 0
    for chunk in stream:
        chunks += 1
        assert chunk.model == model
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function.name:
                    names.append(call.function.name)
                arguments += call.function.arguments or ""
    assert names == ["get_weather"]
    assert chunks > 3, "the call must arrive in several deltas, as it is generated"
    jsonschema.validate(json.loads(arguments), WEATHER)


def test_json_schema_output_validates_against_the_schema(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Invent a person: a name and an age."}], temperature=0,
        max_tokens=96, response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_json_object_output_is_an_object_whole_or_cut_only_by_the_token_limit(client: openai.OpenAI,
                                                                              model: str) -> None:
    """`json_object` holds the output to JSON's grammar, which bounds no length: a 135M model may write keys until
    `max_tokens` (as OpenAI documents, the JSON is then partial and `finish_reason` is `length`). A finished answer
    parses as an object; a cut one is an object's prefix, ended by the token limit and nothing else."""
    r = client.chat.completions.create(
        model=model, temperature=0, max_tokens=160, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Answer in JSON as {"capital": ...}: what is the capital of France?'}])
    content, finish = r.choices[0].message.content or "", r.choices[0].finish_reason
    if finish == "stop":
        assert isinstance(json.loads(content), dict), content
    else:
        assert finish == "length" and r.usage is not None and r.usage.completion_tokens == 160, (finish, r.usage)
        assert content.lstrip().startswith("{") and isinstance(partial_json_parser.loads(content), dict), content


def test_logprobs_with_three_top_logprobs(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    tokens = r.choices[0].logprobs.content
    assert len(tokens) == r.usage.completion_tokens
    for t in tokens:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        best = max(t.top_logprobs, key=lambda x: x.logprob)
        assert best.token == t.token and best.logprob == pytest.approx(t.logprob)  # greedy took the likeliest


def _error(service, body: dict) -> dict:
    r = httpx.post(f"{service.url}/v1/chat/completions", timeout=120,
                   json={"model": "student", "messages": ASK, "max_tokens": 8, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


def test_bad_tool_schemas_grammars_and_logprobs_are_400_naming_the_parameter(service) -> None:
    bad_tool = [{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}]
    assert _error(service, {"tools": bad_tool})["param"] == "tools[0].function.parameters"
    lookbehind = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}
    error = _error(service, {"response_format": {"type": "json_schema",
                                                 "json_schema": {"name": "x", "schema": lookbehind}}})
    assert error["param"] == "response_format" and error["code"] == "invalid_grammar"
    assert _error(service, {"logprobs": True, "top_logprobs": 50})["param"] == "top_logprobs"
    r = httpx.post(f"{service.url}/v1/chat/completions", timeout=120,
                   json={"model": "student", "messages": ASK, "max_tokens": 2})
    assert r.status_code == 200, "the service must keep answering after the bad requests"
