"""StudentEngine: vLLM's AsyncLLM with versioned LoRA adapters and the `student` alias.

A plain class (no Ray in it) so tests and the evaluation job can drive it directly; the Ray Serve deployment
in `deployment.py` only hosts it. Generation yields typed events (`Started`, `Delta`, `Failed`); the version a
request resolves to is fixed when it starts and held (refcounted) until it ends, so promotions and unloads
never change the weights under a running request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from services.config import Settings
from services.registry import AdapterInvalid, AdapterRegistry, AdapterTampered, RegistryError
from services.student.adapters import AdapterSlots, Loaded
from services.student.events import Delta, Event, Failed, GenerateRequest, LoadResult, Started

log = logging.getLogger(__name__)

UNLOAD_DRAIN_TIMEOUT_S = 120.0


def engine_args(settings: Settings, model_path: str) -> Any:
    """vLLM engine arguments from the typed config (the same code on the CPU build and on a GPU)."""
    from vllm import AsyncEngineArgs

    cfg = settings.student
    # The CPU build reads these from the environment of the process that starts the engine.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gb))
    if cfg.cpu_threads_bind != "auto":
        os.environ.setdefault(
            "VLLM_CPU_OMP_THREADS_BIND",
            f"0-{(os.cpu_count() or 1) - 1}" if cfg.cpu_threads_bind == "all" else cfg.cpu_threads_bind,
        )
    return AsyncEngineArgs(
        model=model_path,
        tokenizer=model_path,
        dtype=cfg.dtype,
        max_model_len=cfg.max_model_len,
        enable_lora=cfg.enable_lora,
        max_lora_rank=cfg.max_lora_rank,
        max_loras=cfg.max_loras,
        max_cpu_loras=cfg.max_cpu_loras,
        max_num_seqs=cfg.max_seqs,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        disable_log_stats=True,
        enable_log_requests=False,
    )


def _default_engine_factory(args: Any) -> Any:
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(args)


class StudentEngine:
    def __init__(
        self,
        settings: Settings,
        *,
        model_path: str,
        base_id: str,
        registry: AdapterRegistry,
        engine_factory: Callable[[Any], Any] = _default_engine_factory,
    ) -> None:
        self.settings = settings
        self.model_path = model_path
        self.base_id = base_id
        self.registry = registry
        self._engine_factory = engine_factory
        self.engine: Any = None
        self.slots = AdapterSlots(settings.student.max_cpu_loras)
        self._lock = asyncio.Lock()  # serialises load/unload/sync
        self._defaults: dict[str, Any] = {}
        self.max_model_len = settings.student.max_model_len
        self.serving_in_flight = 0  # clients' requests running now (debate turns excluded): the debate yields to it
        self._serving_idle_since = time.monotonic()

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        t0 = time.monotonic()
        self.engine = self._engine_factory(engine_args(self.settings, self.model_path))
        self.max_model_len = self.engine.model_config.max_model_len
        # Unset sampling fields fall back to the model's generation_config, as in vLLM's own server.
        self._defaults = dict(self.engine.model_config.get_diff_sampling_param())
        log.info("vLLM engine ready in %.1fs (defaults from generation_config: %s)", time.monotonic() - t0,
                 self._defaults)
        result = await self.sync()
        if isinstance(result, Failed):
            log.error("promoted adapter could not be loaded, serving the base model: %s", result.message)

    async def check_health(self) -> None:
        await self.engine.check_health()

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()

    # ---- adapters -----------------------------------------------------------------------------------
    async def _load_locked(self, name: str) -> LoadResult | Failed:
        try:
            version = await asyncio.to_thread(self.registry.get, name)
        except RegistryError as e:
            return Failed(404, str(e), "lora_name", "adapter_not_found")
        if (slot := self.slots.get(version.number)) is not None:
            return LoadResult(slot.name, 0.0, already_loaded=True)
        if not self.settings.student.enable_lora:
            return Failed(400, "LoRA is disabled (student.enable_lora=false)", "lora_name", "lora_disabled")
        t0 = time.monotonic()
        try:  # files may have changed since publish: checksum and validate again before vLLM reads them
            local = await asyncio.to_thread(self.registry.local_path, version)
            await asyncio.to_thread(self.registry.validate, local)
        except AdapterTampered as e:
            log.error("refusing to load %s: %s", version.name, e)
            return Failed(409, f"adapter {version.name} does not match its published checksum: {e}", "lora_name",
                          "adapter_checksum_mismatch")
        except AdapterInvalid as e:
            return Failed(400, f"adapter {version.name} is invalid: {e}", "lora_name", "invalid_adapter")
        except OSError as e:  # the object store or the volume cannot give us the files
            return Failed(503, f"adapter {version.name} is unavailable: {e}", "lora_name", "adapter_unavailable")
        if (victim := self.slots.evictable()) is not None:
            await self._remove_locked(victim)
        from vllm.lora.request import LoRARequest

        try:
            await self.engine.add_lora(LoRARequest(version.name, version.number, str(local)))
        except Exception as e:
            log.exception("vLLM refused adapter %s", version.name)
            return Failed(400, f"vLLM could not load adapter {version.name}: {e}", "lora_name", "invalid_adapter")
        self.slots.add(Loaded(version.name, version.number, str(local)))
        seconds = time.monotonic() - t0
        log.info("loaded %s in %.3fs", version.name, seconds)
        return LoadResult(version.name, seconds)

    async def _remove_locked(self, slot: Loaded) -> None:
        self.slots.remove(slot.number)  # first, so no new request acquires it while vLLM drops it
        await self.engine.remove_lora(slot.number)

    async def load(self, name: str) -> LoadResult | Failed:
        async with self._lock:
            return await self._load_locked(name)

    async def unload(self, name: str) -> LoadResult | Failed:
        async with self._lock:
            try:
                version = await asyncio.to_thread(self.registry.get, name)
            except RegistryError as e:
                return Failed(404, str(e), "lora_name", "adapter_not_found")
            slot = self.slots.get(version.number)
            if slot is None:
                return Failed(404, f"adapter {version.name} is not loaded", "lora_name", "adapter_not_loaded")
            if version.number == self.slots.promoted:
                return Failed(
                    400,
                    f"{version.name} is the promoted version behind `{self.settings.student.served_name}`; "
                    "promote another version or roll back first",
                    "lora_name",
                    "adapter_in_use",
                )
            t0 = time.monotonic()
            if not await self.slots.wait_idle(version.number, UNLOAD_DRAIN_TIMEOUT_S):
                return Failed(503, f"requests on {version.name} did not finish in time", "lora_name", "busy")
            await self._remove_locked(slot)
            return LoadResult(version.name, time.monotonic() - t0)

    async def sync(self) -> LoadResult | Failed:
        """Point `student` at the registry's promoted version, loading it first (the hot swap)."""
        async with self._lock:
            version = await asyncio.to_thread(self.registry.promoted)
            if version is None:
                self.slots.promoted = None
                return LoadResult(self.base_id, 0.0, already_loaded=True)
            if version.number == self.slots.promoted:
                return LoadResult(version.name, 0.0, already_loaded=True)
            result = await self._load_locked(version.name)
            if isinstance(result, LoadResult):
                self.slots.promoted = version.number  # the swap itself: one assignment
                log.info("`%s` now serves %s", self.settings.student.served_name, version.name)
            return result

    async def watch_registry(self, interval: float) -> None:
        """Follow promotions made elsewhere (another gateway replica, a training job)."""
        while True:
            await asyncio.sleep(interval)
            try:
                result = await self.sync()
                if isinstance(result, Failed):
                    log.error("cannot follow the promoted adapter: %s", result.message)
            except Exception:
                log.exception("registry poll failed; serving continues with the current adapter")

    def promoted_name(self) -> str:
        slot = self.slots.get(self.slots.promoted) if self.slots.promoted else None
        return slot.name if slot else self.base_id

    def models(self) -> dict[str, Any]:
        return {
            "base": self.base_id,
            "root": self.model_path,
            "max_model_len": self.max_model_len,
            "promoted": self.promoted_name(),
            "loaded": [{"name": s.name, "path": s.path, "inflight": s.inflight} for s in self.slots.names()],
        }

    # ---- generation ---------------------------------------------------------------------------------
    async def _resolve(self, model: str) -> tuple[str, Any] | Failed:
        """(served name, LoRARequest or None) for `model`, with the version acquired by the caller."""
        if model == self.settings.student.served_name:
            number = self.slots.promoted
            if number is None:
                return self.base_id, None
            slot = self.slots.get(number)
        elif model == self.base_id:
            return self.base_id, None
        else:
            try:
                version = await asyncio.to_thread(self.registry.get, model)
            except RegistryError:
                return Failed(404, f"The model `{model}` does not exist.", "model", "model_not_found")
            slot = self.slots.get(version.number)
            if slot is None:
                loaded = await self.load(version.name)
                if isinstance(loaded, Failed):
                    return loaded
                slot = self.slots.get(version.number)
        if slot is None:  # evicted between load and here: vanishingly rare, and retrying is safe
            return Failed(503, f"adapter for `{model}` was unloaded concurrently; retry", "model", "retry")
        from vllm.lora.request import LoRARequest

        return slot.name, LoRARequest(slot.name, slot.number, slot.path)

    def _sampling_params(self, req: GenerateRequest, prompt_len: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        given = {k: v for k, v in req.sampling.items() if v is not None}
        params = {**{k: v for k, v in self._defaults.items() if k in _SAMPLING_KEYS}, **given}
        max_tokens = req.max_tokens if req.max_tokens is not None else self.max_model_len - prompt_len
        return SamplingParams(**params, max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA)

    async def generate(self, req: GenerateRequest) -> AsyncIterator[Event]:
        resolved = await self._resolve(req.model)
        if isinstance(resolved, Failed):
            yield resolved
            return
        name, lora = resolved
        try:
            params = [self._sampling_params(req, len(p)) for p in req.prompts]
        except Exception as e:  # vLLM's validation (e.g. n>1 with greedy sampling)
            if not _is_client_error(e):
                raise
            yield Failed(400, str(e), None, "invalid_sampling_params")
            return
        if lora is not None:
            self.slots.acquire(lora.lora_int_id)
        if not req.background:
            self.serving_in_flight += 1
        try:
            yield Started(name)
            async for event in self._stream(req, params, lora):
                yield event
        except _Preempted:
            yield Failed(503, "background turn preempted by serving traffic; retry when idle", None, "preempted")
        except Exception as e:
            if _is_client_error(e):
                yield Failed(400, str(e), None, "invalid_request")
                return
            log.exception("generation %s failed", req.request_id)
            yield Failed(500, f"generation failed: {type(e).__name__}: {e}", None, "engine_error")
        finally:
            if not req.background:
                self.serving_in_flight -= 1
                if self.serving_in_flight == 0:
                    self._serving_idle_since = time.monotonic()
            if lora is not None:
                await self.slots.release(lora.lora_int_id)

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
