"""The student's OpenAI API: vLLM's own serving classes (chat, completions, models), behind Distillery's names.

Built the way vLLM's API server builds them (`init_app_state` over the replica's engine and vLLM's parsed command
line), so whatever the installed vLLM serves for a model works here: tools and tool parsers, structured outputs,
logprobs, every sampling parameter. Distillery adds only what is its own, around each call:

- the name: `student` resolves to the promoted version and an exact `student@vN` is loaded on demand; the version
  is pinned for the request's life, and the response names the model as the client asked for it;
- the first event names the version that serves the request before any byte of the body: `Started` for a stream,
  or the whole response (`Body`, one message through Ray) for a request without `stream`;
- a `Tally` of the engine's outputs (texts, token counts, first token time) ends every request, for the
  gateway's metrics and capture;
- a stream's frames cross Ray in batches (`student.stream_batch_ms`), as Ray Serve LLM batches them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from services.config import Settings
from services.student.engine import StudentEngine
from services.student.events import Body, Chunks, Failed, Started, StudentEvent
from services.student.tally import Tally, TappedEngine

log = logging.getLogger(__name__)

# vLLM names a parameter as its engine knows it; the client named it as the endpoint's API does.
_PARAMS = {
    "chat": {"logprobs": "top_logprobs", "input_text": "messages", "prompt": "messages", "input_tokens": "messages"},
    "completions": {"input_text": "prompt", "input_tokens": "prompt"},
}


class StudentOpenAI:
    def __init__(self, settings: Settings, engine: StudentEngine, state: Any, replica: str = "") -> None:
        self.settings = settings
        self.replica = replica  # named in every answer, so clients and tests see which replica served them
        self.engine = engine
        self.adapters = engine.adapters
        self.chat_serving = state.openai_serving_chat
        self.completion_serving = state.openai_serving_completion
        self.batch_s = settings.student.stream_batch_ms / 1000

    @classmethod
    async def start(cls, settings: Settings, engine: StudentEngine, replica: str = "") -> StudentOpenAI:
        """vLLM's serving classes over the started engine, exactly as `vllm serve` makes them."""
        from starlette.datastructures import State
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state

        state = State()
        tasks = await engine.engine.get_supported_tasks()
        await init_app_state(TappedEngine(engine.engine), state, engine.args, supported_tasks=tasks)
        engine.adapters.attach(state.openai_serving_models)
        return cls(settings, engine, state, replica)

    def serve(self, endpoint: str, request: Any) -> AsyncIterator[StudentEvent]:
        """`request` (vLLM's request model of `endpoint`, with its engine request id set) served by vLLM."""
        if endpoint == "chat":
            return self._serve(endpoint, self.chat_serving.create_chat_completion, request)
        return self._serve(endpoint, self.completion_serving.create_completion, request)

    async def _serve(self, endpoint: str, create: Callable[..., Awaitable[Any]],
                     request: Any) -> AsyncIterator[StudentEvent]:
        asked = request.model or self.settings.student.served_name
        async with self.adapters.pinned(asked) as resolved:
            if isinstance(resolved, Failed):
                yield resolved
                return
            # vLLM knows loaded versions by their exact names, and the engine's own weights (the base model, or the
            # version merged into them) by the base name; the client sees the name it asked for.
            ran = resolved.lora.lora_name if resolved.lora is not None else self.engine.base_id
            request = request.model_copy(update={"model": ran})
            tally = Tally()
            with self.engine.serving(), tally.active():
                try:
                    result = await create(request, None)
                except Exception as e:  # vLLM raises its validation errors; its server turns them into 4xx
                    result = self.chat_serving.create_error_response(e)
                if _is_error(result):
                    yield _failed(result, endpoint, request)
                    return
                if not hasattr(result, "__aiter__"):  # the whole response: one message through Ray
                    body = result.model_dump()
                    body["model"] = asked
                    yield Body(body, resolved.adapter, tally.finished(), self.replica)
                    return
                yield Started(resolved.adapter, self.replica)
                usage = bool(request.stream_options and request.stream_options.include_usage)
                # Closed here, before the pin is released, however the stream ends: that aborts vLLM's request.
                async with aclosing(_batched(result, self.batch_s)) as batches:
                    async for frames in batches:
                        frames, error = _until_error(frames)
                        if frames:
                            yield Chunks(_client_frames(frames, ran, asked, usage))
                        if error is not None:  # vLLM's error frame: the gateway ends the stream in its own shape
                            yield _failed(error, endpoint, request)
                            return
                yield tally.finished()


def _is_error(result: Any) -> bool:
    return type(result).__name__ == "ErrorResponse"


def _failed(error: Any, endpoint: str, request: Any) -> Failed:
    """vLLM's ErrorResponse as Distillery's error value, its parameter named as the endpoint's API names it."""
    e = error.error
    param = _PARAMS[endpoint].get(e.param, e.param) if e.param else None
    code = None
    if "maximum context length" in e.message:
        code, param = "context_length_exceeded", _PARAMS[endpoint]["input_text"]
    elif "max_model_len" in e.message:  # the prompt fits, prompt + max_tokens does not
        code = "context_length_exceeded"
    elif "out of vocabulary" in e.message:
        param = _PARAMS[endpoint]["input_text"]
    elif e.code == 404 and "does not exist" in e.message:
        code, param = "model_not_found", "model"
    elif e.message.startswith("Grammar error"):  # the grammar backend could not compile what the request gave it
        code = "invalid_grammar"
        param = param or ("response_format" if getattr(request, "response_format", None) is not None else "tools")
    return Failed(int(e.code), e.message, param, code)


def _until_error(frames: list[str]) -> tuple[list[str], Any]:
    """The frames before vLLM's first error frame (`data: {"error": ...}`, written when generation fails after the
    stream started), and that error as an ErrorResponse (None if there is none)."""
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    for i, frame in enumerate(frames):
        if frame.startswith('data: {"error"'):
            try:
                return frames[:i], ErrorResponse.model_validate_json(frame[6:])
            except ValueError:
                return frames[:i], ErrorResponse.model_validate(
                    {"error": {"message": frame[6:].strip()[:500], "type": "InternalServerError", "code": 500}})
    return frames, None


def _client_frames(frames: list[str], served: str, asked: str, usage: bool) -> list[str]:
    """A stream's frames as the client expects them, edited as text (no frame is parsed):

    - the model named as the client asked for it (`student`), not the version vLLM ran (`student@v3`); inside a
      frame's JSON the only unescaped `"model":"..."` is the field itself (text is escaped);
    - with `stream_options.include_usage`, `"usage":null` on every chunk but the last, as OpenAI sends them (vLLM
      leaves the field out)."""
    if served != asked:
        old, new = f'"model":"{served}"', f'"model":"{asked}"'
        frames = [f.replace(old, new, 1) for f in frames]
    if usage:
        frames = [f[:-3] + ',"usage":null}\n\n' if f.startswith("data: {") and f.endswith("}\n\n")
                  and '"usage":' not in f else f for f in frames]
    return frames


async def _batched(frames: AsyncIterator[str], window_s: float) -> AsyncIterator[list[str]]:
    """The frames of a stream in lists: every frame produced within `window_s` of a list's first one."""
    if window_s <= 0:
        try:
            async for frame in frames:
                yield [frame]
        finally:
            await frames.aclose()  # type: ignore[attr-defined]
        return
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for frame in frames:
                queue.put_nowait(frame)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(pump())
    try:
        done = False
        while not done:
            batch = []
            item = await queue.get()
            deadline = time.monotonic() + window_s
            while item is not None:
                batch.append(item)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
            else:
                done = True
            if batch:
                yield batch
        await task  # re-raises what ended the stream abnormally
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await frames.aclose()  # type: ignore[attr-defined]
