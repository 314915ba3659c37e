"""The tally of a request's engine outputs (services/student/tally.py), fed by fake RequestOutput-like objects
through `Tally.watch` and `TappedEngine.generate`, as vLLM's serving classes would drive them. No engine."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.sampling_params import RequestOutputKind, SamplingParams

from services.student.tally import Tally, TappedEngine


def output(prompt: list[int] | None, *samples: tuple[int, str, list[int]]) -> SimpleNamespace:
    """A RequestOutput: its prompt's token ids and, per sample, (index, text, token ids)."""
    return SimpleNamespace(prompt_token_ids=prompt, outputs=[SimpleNamespace(index=i, text=text, token_ids=ids)
                                                             for i, text, ids in samples])


def params(n: int = 1, kind: RequestOutputKind = RequestOutputKind.DELTA) -> SamplingParams:
    return SamplingParams(n=n, output_kind=kind, max_tokens=16)


class Source:
    """An engine's output generator that records whether it ran to its end or was closed."""

    def __init__(self, outputs: list[Any]) -> None:
        self.outputs = outputs
        self.closed = False
        self.finished = False

    async def __call__(self) -> AsyncIterator[Any]:
        try:
            for out in self.outputs:
                await asyncio.sleep(0)
                yield out
            self.finished = True
        finally:
            self.closed = True


async def drain(stream: AsyncIterator[Any]) -> list[Any]:
    return [out async for out in stream]


async def test_delta_outputs_accumulate_text_and_tokens() -> None:
    tally = Tally()
    outs = [output([1, 2, 3], (0, "Hel", [10])), output([1, 2, 3], (0, "lo", [11, 12])),
            output([1, 2, 3], (0, "!", [13]))]
    seen = await drain(tally.watch(Source(outs)(), params()))
    assert seen == outs  # passed through unchanged, in order
    assert tally.texts == ["Hello!"]
    assert (tally.prompt_tokens, tally.completion_tokens) == (3, 4)


@pytest.mark.parametrize("kind", [RequestOutputKind.FINAL_ONLY, RequestOutputKind.CUMULATIVE])
async def test_whole_text_outputs_are_not_double_counted(kind: RequestOutputKind) -> None:
    tally = Tally()
    # Cumulative snapshots: each carries the whole text and token ids so far (the last is the final one).
    outs = [output([1, 2], (0, "Hel", [10])), output([1, 2], (0, "Hello", [10, 11])),
            output([1, 2], (0, "Hello!", [10, 11, 12]))]
    await drain(tally.watch(Source(outs)(), params(kind=kind)))
    assert tally.texts == ["Hello!"]
    assert (tally.prompt_tokens, tally.completion_tokens) == (2, 3)


async def test_a_single_final_output_counts_its_tokens_once() -> None:
    tally = Tally()
    final = output([5] * 7, (0, "four", [4, 4, 4]))
    await drain(tally.watch(Source([final])(), params(kind=RequestOutputKind.FINAL_ONLY)))
    assert tally.texts == ["four"]
    assert (tally.prompt_tokens, tally.completion_tokens) == (7, 3)


async def test_n_choices_are_kept_apart_by_index() -> None:
    tally = Tally()
    outs = [output([1], (1, "b1", [21]), (0, "a1", [11])), output([1], (0, "a2", [12])),
            output([1], (1, "b2", [22, 23]))]
    await drain(tally.watch(Source(outs)(), params(n=2)))
    assert tally.texts == ["a1a2", "b1b2"]
    assert (tally.prompt_tokens, tally.completion_tokens) == (1, 5)


async def test_a_choice_that_produced_nothing_is_an_empty_text() -> None:
    tally = Tally()
    await drain(tally.watch(Source([output([1], (1, "only b", [9]))])(), params(n=3)))
    assert tally.texts == ["", "only b", ""]


async def test_two_prompts_number_their_choices_prompt_index_times_n_plus_index() -> None:
    tally = Tally()
    first = tally.watch(Source([output([1, 2], (0, "p0s0", [1])), output([1, 2], (1, "p0s1", [1, 2]))])(), params(n=2))
    second = tally.watch(Source([output([3, 4, 5], (1, "p1s1", [3])), output([3, 4, 5], (0, "p1s0", [4]))])(),
                         params(n=2))
    # vLLM's merge_async_iterators starts each prompt's generator in order, then interleaves their outputs.
    await asyncio.gather(drain(first), drain(second))
    assert tally.texts == ["p0s0", "p0s1", "p1s0", "p1s1"]
    assert tally.prompt_tokens == 2 + 3  # each prompt once
    assert tally.completion_tokens == 1 + 2 + 1 + 1


async def test_prompt_tokens_are_counted_once_per_prompt() -> None:
    tally = Tally()
    await drain(tally.watch(Source([output([1, 2, 3, 4], (0, "x", [1])) for _ in range(5)])(), params()))
    assert tally.prompt_tokens == 4
    assert tally.completion_tokens == 5


async def test_prompt_tokens_wait_for_an_output_that_has_them() -> None:
    tally = Tally()
    await drain(tally.watch(Source([output(None, (0, "x", [1])), output([7, 8], (0, "y", [2]))])(), params()))
    assert tally.prompt_tokens == 2


async def test_first_token_wall_is_set_at_the_first_token() -> None:
    tally = Tally()
    outs = [output([1], (0, "", [])), output([1], (0, "a", [1])), output([1], (0, "b", [2]))]
    stream = tally.watch(Source(outs)(), params())
    await anext(stream)
    assert tally.first_token_wall is None  # an output without tokens is not the first token
    before = time.time()
    await anext(stream)
    after = time.time()
    assert tally.first_token_wall is not None and before <= tally.first_token_wall <= after
    first = tally.first_token_wall
    await asyncio.sleep(0.01)
    await drain(stream)
    assert tally.first_token_wall == first


# ---- TappedEngine --------------------------------------------------------------------------------------
class FakeEngine:
    """vLLM's AsyncLLM as far as the tally sees it: `generate` is an async generator; anything else passes."""

    model_config = SimpleNamespace(max_model_len=512)

    def __init__(self, outputs: list[Any]) -> None:
        self.outputs = outputs
        self.calls: list[tuple[Any, ...]] = []
        self.sources: list[Source] = []
        self.streams: list[Any] = []  # what generate returned

    def generate(self, prompt: Any, sampling_params: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((prompt, sampling_params, request_id, args, kwargs))
        source = Source(self.outputs)
        self.sources.append(source)
        self.streams.append(source())
        return self.streams[-1]

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)


def in_fresh_context(coro: Any) -> asyncio.Task[Any]:
    """A task with no tally set, whatever the test's own context holds."""
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())


async def test_tapped_engine_passes_through_untouched_without_a_tally() -> None:
    engine = FakeEngine([output([1], (0, "x", [1]))])
    tapped = TappedEngine(engine)

    async def run() -> tuple[Any, list[Any]]:
        stream = tapped.generate("p", params(), "req-1", lora_request="lora", priority=3)
        return stream, await drain(stream)

    stream, seen = await in_fresh_context(run())
    assert stream is engine.streams[0]  # the engine's own generator, not a wrapper
    assert seen == engine.outputs
    assert engine.calls[0][2:] == ("req-1", (), {"lora_request": "lora", "priority": 3})
    assert tapped.model_config.max_model_len == 512
    assert await tapped.get_supported_tasks() == ("generate",)


async def test_tapped_engine_counts_into_the_active_tally() -> None:
    engine = FakeEngine([output([1, 2], (0, "he", [1])), output([1, 2], (0, "y", [2]))])
    tapped = TappedEngine(engine)

    async def run() -> tuple[Tally, list[Any]]:
        tally = Tally()
        with tally.active():
            seen = await drain(tapped.generate("p", params(), "req-2", "lora"))
        assert await drain(tapped.generate("p", params(), "req-3")) == engine.outputs  # outside: not counted
        return tally, seen

    tally, seen = await in_fresh_context(run())
    assert seen == engine.outputs
    assert tally.texts == ["hey"] and (tally.prompt_tokens, tally.completion_tokens) == (2, 2)
    assert engine.calls[0][2:4] == ("req-2", ("lora",))


async def test_concurrent_requests_never_share_a_tally() -> None:
    tapped = TappedEngine(FakeEngine([output([1], (0, "same", [1]))] * 3))

    async def run() -> Tally:
        tally = Tally()
        with tally.active():
            await drain(tapped.generate("p", params(), "r"))
        return tally

    tallies = await asyncio.gather(*(in_fresh_context(run()) for _ in range(3)))
    assert [t.texts for t in tallies] == [["samesamesame"]] * 3
    assert [t.completion_tokens for t in tallies] == [3, 3, 3]


async def test_closing_the_watched_stream_closes_the_engines_generator() -> None:
    engine = FakeEngine([output([1], (0, "x", [1]))] * 100)
    tapped = TappedEngine(engine)

    async def run() -> Tally:
        tally = Tally()
        with tally.active():
            stream = tapped.generate("p", params(), "r")
        await anext(stream)
        await anext(stream)
        await stream.aclose()  # the client left: vLLM aborts a request when its generator is closed
        return tally

    tally = await in_fresh_context(run())
    source = engine.sources[0]
    assert source.closed and not source.finished
    assert tally.texts == ["xx"] and tally.completion_tokens == 2
