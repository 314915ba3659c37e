"""The student's helpers around vLLM's serving classes (services/student/serving.py): a stream's frames batched
for Ray, the model renamed in each frame, and vLLM's errors as Distillery's. No engine: real vLLM response and
error models, fake frame sources."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionRequest,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.exceptions import VLLMNotFoundError, VLLMServerError, VLLMValidationError

from services.student.events import Failed
from services.student.serving import _batched, _client_frames, _failed, _until_error

# ---- _batched ------------------------------------------------------------------------------------------


class Frames:
    """A stream's frames: bursts produced together, a pause between bursts; records whether it was closed."""

    def __init__(self, *bursts: list[str], pause_s: float = 0.0, forever: bool = False) -> None:
        self.bursts = bursts
        self.pause_s = pause_s
        self.forever = forever
        self.produced: list[str] = []
        self.closed = False
        self.finished = False

    async def __call__(self) -> AsyncIterator[str]:
        try:
            while True:
                for i, burst in enumerate(self.bursts):
                    if i:
                        await asyncio.sleep(self.pause_s)
                    for frame in burst:
                        self.produced.append(frame)
                        yield frame
                        await asyncio.sleep(0)  # another task may run between two frames of a burst
                if not self.forever:
                    break
                await asyncio.sleep(self.pause_s)
            self.finished = True
        finally:
            self.closed = True


async def collect(batches: AsyncIterator[list[str]]) -> list[list[str]]:
    return [batch async for batch in batches]


async def test_a_zero_window_sends_each_frame_alone() -> None:
    frames = Frames(["a", "b", "c"], ["d"], pause_s=0.01)
    assert await collect(_batched(frames(), 0)) == [["a"], ["b"], ["c"], ["d"]]
    assert frames.finished


async def test_frames_produced_together_arrive_in_one_list() -> None:
    frames = Frames(["a", "b", "c"], ["d", "e"], ["f"], pause_s=0.5)
    batches = await asyncio.wait_for(collect(_batched(frames(), 0.1)), 10)
    assert batches == [["a", "b", "c"], ["d", "e"], ["f"]]
    assert frames.finished


async def test_every_frame_arrives_once_in_order_and_the_batches_end() -> None:
    sent = [f"data: {i}\n\n" for i in range(200)]
    frames = Frames(sent[:120], sent[120:], pause_s=0.05)
    batches = await asyncio.wait_for(collect(_batched(frames(), 0.02)), 10)
    assert [frame for batch in batches for frame in batch] == sent
    assert all(batches)  # no empty list crosses Ray
    assert len(batches) >= 2  # the pause is longer than the window
    assert frames.finished


async def test_a_window_longer_than_the_stream_sends_it_whole() -> None:
    frames = Frames(["a", "b"], ["c"], pause_s=0.01)
    assert await asyncio.wait_for(collect(_batched(frames(), 5)), 10) == [["a", "b", "c"]]


async def test_an_empty_stream_sends_nothing() -> None:
    assert await collect(_batched(Frames()(), 0.05)) == []
    assert await collect(_batched(Frames()(), 0)) == []


async def test_a_stream_that_fails_delivers_its_frames_then_raises() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        raise RuntimeError("engine died")

    got: list[list[str]] = []
    with pytest.raises(RuntimeError, match="engine died"):
        async for batch in _batched(failing(), 0.05):
            got.append(batch)
    assert [f for batch in got for f in batch] == ["a", "b"]


@pytest.mark.parametrize("window_s", [0.05, 0])
async def test_a_consumer_that_stops_early_closes_the_source(window_s: float) -> None:
    frames = Frames(["a", "b"], pause_s=0.01, forever=True)
    source = frames()
    batches = _batched(source, window_s)
    first = await asyncio.wait_for(anext(batches), 5)
    assert first[0] == "a"
    await batches.aclose()  # the client went away
    await asyncio.sleep(0.05)
    assert frames.closed and not frames.finished
    produced = len(frames.produced)
    await asyncio.sleep(0.05)
    assert len(frames.produced) == produced  # nothing is produced for nobody


# ---- _client_frames ------------------------------------------------------------------------------------------
def chat_frame(model: str, text: str) -> str:
    chunk = ChatCompletionStreamResponse(id="chatcmpl-1", created=1, model=model, choices=[
        ChatCompletionResponseStreamChoice(index=0, delta=DeltaMessage(content=text))])
    return f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"


def completion_frame(model: str, text: str) -> str:
    chunk = CompletionStreamResponse(id="cmpl-1", created=1, model=model, choices=[
        CompletionResponseStreamChoice(index=0, text=text)])
    return f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"


def body(frame: str) -> dict[str, Any]:
    return json.loads(frame.removeprefix("data: "))


@pytest.mark.parametrize("make", [chat_frame, completion_frame])
def test_client_frames_names_the_model_as_asked(make: Any) -> None:
    frames = [make("student@v3", "Hel"), make("student@v3", "lo"), "data: [DONE]\n\n"]
    renamed = _client_frames(frames, "student@v3", "student", usage=False)
    assert [body(f)["model"] for f in renamed[:2]] == ["student", "student"]
    assert [body(f) for f in renamed[:2]] == [{**body(f), "model": "student"} for f in frames[:2]]
    assert renamed[2] == "data: [DONE]\n\n"


@pytest.mark.parametrize("make", [chat_frame, completion_frame])
def test_client_frames_leaves_text_that_mentions_the_model_alone(make: Any) -> None:
    text = 'I am {"model":"student@v3"} and "model":"student@v3" too'
    renamed = _client_frames([make("student@v3", text)], "student@v3", "student", usage=False)
    out = body(renamed[0])
    assert out["model"] == "student"
    content = out["choices"][0]["delta"]["content"] if "delta" in out["choices"][0] else out["choices"][0]["text"]
    assert content == text


def test_client_frames_is_a_no_op_when_served_as_asked() -> None:
    frames = [chat_frame("student@v2", "x")]
    assert _client_frames(frames, "student@v2", "student@v2", usage=False) == frames


def test_with_include_usage_every_chunk_but_the_usage_one_says_usage_null() -> None:
    usage = 'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":3,"total_tokens":5}}\n\n'
    frames = [chat_frame("student", "Hel"), chat_frame("student", "lo"), usage, "data: [DONE]\n\n"]
    out = _client_frames(frames, "student", "student", usage=True)
    assert [body(f)["usage"] for f in out[:2]] == [None, None]
    assert [{k: v for k, v in body(f).items() if k != "usage"} for f in out[:2]] == [body(f) for f in frames[:2]]
    assert out[2:] == frames[2:]
    assert all("usage" not in body(f) for f in _client_frames(frames[:2], "student", "student", usage=False))


# ---- _failed -------------------------------------------------------------------------------------------
CHAT = ChatCompletionRequest(model="student", messages=[{"role": "user", "content": "hi"}])
COMPLETION = CompletionRequest(model="student", prompt="hi")
CONTEXT = ("This model's maximum context length is 512 tokens. However, your prompt contains 900 input tokens, which "
           "exceeds this limit even without any output tokens. Please reduce the length of the input prompt.")


def error(exc: Exception) -> ErrorResponse:
    return create_error_response(exc)  # as vLLM's serving classes make it


def test_chat_logprobs_is_named_top_logprobs() -> None:
    err = error(VLLMValidationError("Requested sample logprobs of 30, which is greater than max allowed: 20",
                                    parameter="logprobs", value=30))
    failed = _failed(err, "chat", CHAT)
    assert (failed.status, failed.param, failed.code) == (400, "top_logprobs", None)
    assert "greater than max allowed" in failed.message
    assert _failed(err, "completions", COMPLETION).param == "logprobs"


def test_other_params_keep_their_names() -> None:
    err = error(VLLMValidationError("temperature must be non-negative", parameter="temperature", value=-1))
    assert _failed(err, "chat", CHAT) == Failed(400, err.error.message, "temperature", None)


@pytest.mark.parametrize(("parameter", "endpoint", "param"), [
    ("input_tokens", "chat", "messages"), ("input_tokens", "completions", "prompt"),
    ("input_text", "chat", "messages"), ("input_text", "completions", "prompt"), (None, "chat", "messages"),
])
def test_context_length_is_context_length_exceeded(parameter: str | None, endpoint: str, param: str) -> None:
    err = error(VLLMValidationError(CONTEXT, parameter=parameter, value=900))
    failed = _failed(err, endpoint, CHAT if endpoint == "chat" else COMPLETION)
    assert (failed.status, failed.param, failed.code) == (400, param, "context_length_exceeded")
    assert failed.message.startswith("This model's maximum context length is 512 tokens")


def test_an_unknown_model_is_404_model_not_found() -> None:
    err = error(VLLMNotFoundError("The model `student@v9` does not exist."))
    assert _failed(err, "chat", CHAT) == Failed(404, "The model `student@v9` does not exist.", "model",
                                                "model_not_found")


def test_another_404_is_not_model_not_found() -> None:
    err = ErrorResponse(error=ErrorInfo(message="Not Found", type="NotFoundError", code=404))
    assert _failed(err, "completions", COMPLETION) == Failed(404, "Not Found", None, None)


def test_a_grammar_error_names_response_format_when_the_request_has_one() -> None:
    request = ChatCompletionRequest(model="student", messages=[{"role": "user", "content": "hi"}],
                                    response_format={"type": "json_schema",
                                                     "json_schema": {"name": "x", "schema": {"type": "object"}}})
    err = error(VLLMValidationError("Grammar error: unsatisfiable schema"))
    assert _failed(err, "chat", request) == Failed(400, "Grammar error: unsatisfiable schema", "response_format",
                                                   "invalid_grammar")


def test_a_grammar_error_names_tools_when_there_is_no_response_format() -> None:
    request = ChatCompletionRequest(model="student", messages=[{"role": "user", "content": "hi"}], tools=[
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], tool_choice="required")
    failed = _failed(error(VLLMValidationError("Grammar error: bad regex")), "chat", request)
    assert (failed.param, failed.code) == ("tools", "invalid_grammar")


def test_a_grammar_error_keeps_a_param_vllm_named() -> None:
    err = error(VLLMValidationError("Grammar error: bad", parameter="structured_outputs"))
    assert _failed(err, "completions", COMPLETION).param == "structured_outputs"


def test_a_server_error_keeps_its_status() -> None:
    failed = _failed(error(VLLMServerError("engine dead")), "chat", CHAT)
    assert (failed.status, failed.param, failed.code) == (500, None, None)
    assert isinstance(failed.status, int)


# ---- _until_error --------------------------------------------------------------------------------------
def test_frames_stop_at_vllms_error_frame_which_becomes_the_error() -> None:
    error = 'data: {"error": {"message": "engine died", "type": "InternalServerError", "param": null, "code": 500}}\n\n'
    frames = [chat_frame("student", "a"), error, "data: [DONE]\n\n"]
    before, found = _until_error(frames)
    assert before == frames[:1]
    assert (found.error.code, found.error.message) == (500, "engine died")
    failed = _failed(found, "chat", CHAT)
    assert (failed.status, failed.message) == (500, "engine died")
    assert _until_error(frames[:1]) == (frames[:1], None)
    _, garbled = _until_error(['data: {"error": not json\n\n'])
    assert garbled.error.code == 500
