"""What a client's request produced, counted from the engine's own outputs while vLLM's serving classes run it.

vLLM's OpenAI serving classes call `engine_client.generate(...)` once per prompt of a request. `TappedEngine` is
that engine client, unchanged but for `generate`: inside a request that set a `Tally` (a context variable, so
concurrent requests never mix), every output passes through the tally on its way to vLLM's serving code. The
gateway gets the texts, token counts and first-token time for its metrics and capture without parsing a single
response frame.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from services.student.events import Finished

_current: ContextVar[Tally | None] = ContextVar("distillery_tally", default=None)


@dataclass
class Tally:
    texts: list[str] = field(default_factory=list)  # per choice, as OpenAI numbers them: prompt index x n + sample
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_wall: float | None = None  # time.time() of the request's first generated token
    _next_choice: int = 0

    def finished(self) -> Finished:
        return Finished(self.texts, self.prompt_tokens, self.completion_tokens, self.first_token_wall)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Count the engine outputs of the generations this task starts in the block."""
        token = _current.set(self)
        try:
            yield
        finally:
            _current.reset(token)

    def watch(self, outputs: AsyncIterator[Any], params: Any) -> AsyncIterator[Any]:
        """`outputs` of one prompt, counted; its choices numbered now, in the order the prompts' generations start."""
        first = self._next_choice
        self._next_choice += getattr(params, "n", 1) or 1
        self.texts.extend([""] * (self._next_choice - len(self.texts)))
        return self._count(outputs, params, first)

    async def _count(self, outputs: AsyncIterator[Any], params: Any, first: int) -> AsyncIterator[Any]:
        from vllm.sampling_params import RequestOutputKind

        delta = getattr(params, "output_kind", None) == RequestOutputKind.DELTA
        counted: dict[int, int] = {}
        prompt_counted = False
        try:
            async for out in outputs:
                if not prompt_counted and out.prompt_token_ids is not None:
                    self.prompt_tokens += len(out.prompt_token_ids)
                    prompt_counted = True
                for o in out.outputs:
                    i = first + o.index
                    if self.first_token_wall is None and o.token_ids:
                        self.first_token_wall = time.time()
                    self.texts[i] = self.texts[i] + o.text if delta else o.text
                    before = counted.get(i, 0)
                    counted[i] = before + len(o.token_ids) if delta else len(o.token_ids)
                    self.completion_tokens += counted[i] - before
                yield out
        finally:
            await outputs.aclose()  # closing vLLM's generator is what aborts its request when a client leaves


class TappedEngine:
    """vLLM's engine client (AsyncLLM) whose `generate` also feeds the current request's `Tally`."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, prompt: Any, sampling_params: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
        outputs = self._engine.generate(prompt, sampling_params, request_id, *args, **kwargs)
        tally = _current.get()
        return outputs if tally is None else tally.watch(outputs, sampling_params)
