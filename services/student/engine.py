"""StudentEngine: vLLM's AsyncLLM, its adapters (`StudentAdapters`), and the token-level generation debates use.

A plain class (no Ray in it) so tests and the evaluation job can drive it directly; the Ray Serve deployment in
`deployment.py` only hosts it. Clients' OpenAI requests go through vLLM's own serving classes (`serving.py`); the
debate's student turns come here as token ids and yield typed events (`Started`, `Delta`, `Failed`). Either way the
version a request resolves to is fixed when it starts and held (refcounted) until it ends, so promotions and
unloads never change the weights under a running request.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from argparse import Namespace
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from services.config import Settings
from services.registry import AdapterRegistry
from services.student.adapters import StudentAdapters
from services.student.events import Delta, Event, Failed, GenerateRequest, Started
from services.student.merged import MergedWeights
from services.student.vllm_config import vllm_namespace

log = logging.getLogger(__name__)


def _default_engine_factory(args: Namespace) -> Any:
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs.from_cli_args(args))


class StudentEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        model_path: str,
        base_id: str,
        registry: AdapterRegistry,
        engine_factory: Callable[[Namespace], Any] = _default_engine_factory,
    ) -> None:
        self.settings = settings
        self.model_path = model_path
        self.base_id = base_id
        self.registry = registry
        self._engine_factory = engine_factory
        self.engine: Any = None
        self.args: Namespace | None = None  # vLLM's parsed command line, once started
        self.adapters = StudentAdapters(settings, registry, base_id, engine=None)
        self._defaults: dict[str, Any] = {}
        self.max_model_len = settings.student.max_model_len
        self.serving_in_flight = 0  # clients' requests running now (debate turns excluded): the debate yields to it
        self._serving_idle_since = time.monotonic()

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        t0 = time.monotonic()
        self.args = vllm_namespace(self.settings, self.model_path, self.base_id)
        self.engine = self.adapters.engine = self._engine_factory(self.args)
        self.max_model_len = self.engine.model_config.max_model_len
        # Unset sampling fields fall back to the model's generation_config, as in vLLM's own server.
        self._defaults = dict(self.engine.model_config.get_diff_sampling_param())
        log.info("vLLM engine ready in %.1fs (defaults from generation_config: %s)", time.monotonic() - t0,
                 self._defaults)
        cfg = self.settings.student
        if cfg.enable_lora and cfg.merge_promoted:
            self.adapters.merging = MergedWeights(self.model_path, tempfile.mkdtemp(prefix="distillery-merge-"))
        result = await self.adapters.sync()
        if isinstance(result, Failed):
            log.error("promoted adapter could not be loaded, serving the base model: %s", result.message)
        elif self.adapters.merging is not None:
            await self.adapters.merge_promoted()  # before any traffic: nothing to wait for

    async def check_health(self) -> None:
        if self.adapters.broken is not None:  # Ray Serve restarts a replica whose health check raises
            raise RuntimeError(self.adapters.broken)
        await self.engine.check_health()

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()

    def models(self) -> dict[str, Any]:
        return {
            "base": self.base_id,
            "root": self.model_path,
            "max_model_len": self.max_model_len,
            "promoted": self.adapters.promoted_name(),
            "merged": self.adapters.merged_name(),
            "loaded": self.adapters.loaded(),
        }

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Counts a client's request as serving load while it runs (the debate's turns yield to it)."""
        self.serving_in_flight += 1
        try:
            yield
        finally:
            self.serving_in_flight -= 1
            if self.serving_in_flight == 0:
                self._serving_idle_since = time.monotonic()

    # ---- generation ---------------------------------------------------------------------------------
    def _sampling_params(self, req: GenerateRequest, prompt_len: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        given = {k: v for k, v in req.sampling.items() if v is not None}
        params = {**{k: v for k, v in self._defaults.items() if k in _SAMPLING_KEYS}, **given}
        max_tokens = req.max_tokens if req.max_tokens is not None else self.max_model_len - prompt_len
        return SamplingParams(**params, max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA)

    async def generate(self, req: GenerateRequest) -> AsyncIterator[Event]:
        async with self.adapters.pinned(req.model) as resolved:
            if isinstance(resolved, Failed):
                yield resolved
                return
            try:
                params = [self._sampling_params(req, len(p)) for p in req.prompts]
            except Exception as e:  # vLLM's validation (e.g. n>1 with greedy sampling)
                if not _is_client_error(e):
                    raise
                yield Failed(400, str(e), None, "invalid_sampling_params")
                return
            try:
                yield Started(resolved.adapter)
                with nullcontext() if req.background else self.serving():
                    async for event in self._stream(req, params, resolved.lora):
                        yield event
            except _Preempted:
                yield Failed(503, "background turn preempted by serving traffic; retry when idle", None, "preempted")
            except Exception as e:
                if _is_client_error(e):
                    yield Failed(400, str(e), None, "invalid_request")
                    return
                log.exception("generation %s failed", req.request_id)
                yield Failed(500, f"generation failed: {type(e).__name__}: {e}", None, "engine_error")

    def serving_load(self) -> tuple[int, float]:
        """(clients' requests in flight, seconds since the last one ended; 0 while any runs)."""
        idle = 0.0 if self.serving_in_flight else time.monotonic() - self._serving_idle_since
        return self.serving_in_flight, idle

    async def _preemptible(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        # Checked at every token: a client request arriving costs at most one shared step, then the
        # background request is aborted in vLLM (closing the generator aborts it) and its slot freed.
        async for d in deltas:
            if self.serving_in_flight > 0:
                await deltas.aclose()  # type: ignore[attr-defined]
                raise _Preempted
            yield d

    async def _stream(self, req: GenerateRequest, params: list[Any], lora: Any) -> AsyncIterator[Delta]:
        from vllm.inputs import TokensPrompt

        n = req.sampling.get("n") or 1
        # vLLM needs request ids unique among in-flight requests; a client's x-request-id may repeat.
        base = f"{req.request_id}-{uuid.uuid4().hex[:8]}"

        async def one(i: int) -> AsyncIterator[Delta]:
            gen = self.engine.generate(
                TokensPrompt(prompt_token_ids=req.prompts[i]), params[i], f"{base}-{i}", lora_request=lora
            )
            async for out in gen:
                for o in out.outputs:
                    yield Delta(i * n + o.index, o.text, len(o.token_ids), o.finish_reason)

        deltas = self._merge(req, one)
        if req.background and req.preemptible:
            deltas = self._preemptible(deltas)
        if not req.stream:
            # Aggregate here so a non-streaming request crosses Ray once per choice, not once per token.
            merged: dict[int, Delta] = {}
            async for d in deltas:
                m = merged.get(d.index)
                if m is None:
                    m = merged[d.index] = Delta(d.index, "", 0, None, first_token_wall=time.time())
                m.text += d.text
                m.tokens += d.tokens
                m.finish_reason = d.finish_reason or m.finish_reason
            for index in sorted(merged):
                yield merged[index]
            return
        async for d in deltas:
            yield d

    async def _merge(self, req: GenerateRequest, one: Callable[[int], AsyncIterator[Delta]]) -> AsyncIterator[Delta]:
        if len(req.prompts) == 1:
            async for d in one(0):
                yield d
            return
        # A batch of prompts: run them concurrently and interleave their deltas as they come.
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

        async def pump(i: int) -> None:
            try:
                async for d in one(i):
                    await queue.put(d)
                await queue.put(None)
            except BaseException as e:  # handed to the consumer, which re-raises
                await queue.put(e)

        tasks = [asyncio.create_task(pump(i)) for i in range(len(req.prompts))]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()


class _Preempted(Exception):
    """A preemptible background request met serving traffic."""


_SAMPLING_KEYS = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty"}


def _is_client_error(e: Exception) -> bool:
    """vLLM reports bad requests as ValueError or VLLMClientError (which is not a ValueError)."""
    from vllm.exceptions import VLLMClientError

    return isinstance(e, ValueError | VLLMClientError)
