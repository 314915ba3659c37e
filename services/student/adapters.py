"""Adapter management of a student replica: which versions are in the engine, how many requests run on each, what
`student` points to, and which version is merged into the weights (kept apart from generation, as vLLM keeps
`OpenAIServingModels` apart from its serving).

A promotion is instant: `student` points at the new version, served through vLLM's LoRA path. Once it has stayed
promoted for `student.merge_after_s`, it is merged into the engine's weights (`merged.py`) and `student` runs
without LoRA, at base-model speed; the base model and every other version are then LoRA adapters relative to the
merged weights. The merge holds new requests back and waits for the running ones to end, so no request ever sees
its weights change; a request resolves its version once and holds it (refcounted) until it ends, so unloads never
pull an adapter from under it either.

LoRA ids are `number + RELATIVE_IDS * generation` (the base model is number 0), where the generation counts merges:
an id never names two different sets of weights, as vLLM caches adapters by id. Every loaded adapter is also
registered by name with vLLM's `OpenAIServingModels`, so its serving classes accept it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.config import Settings
from services.registry import AdapterInvalid, AdapterRegistry, AdapterTampered, RegistryError
from services.student.events import Failed, LoadResult

log = logging.getLogger(__name__)

UNLOAD_DRAIN_TIMEOUT_S = 120.0
RELATIVE_IDS = 1_000_000  # lora ids of one weights generation (see the module docstring)
BASE_BESIDE_MERGE = ":beside-merge"  # suffix of the base model's adapter name, while a version is merged


@dataclass
class Loaded:
    name: str
    number: int  # the version's number; 0 for the base model (loaded only as an adapter relative to a merge)
    path: str  # the folder vLLM loads: the version's own, or an adapter relative to the merged weights
    inflight: int = 0
    lora_id: int = 0  # vLLM's lora_int_id (the number, until the first merge)
    source: str | None = None  # the version's own folder (None: the base model)

    def lora(self) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(self.name, self.lora_id or self.number, self.path)


class AdapterSlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._loaded: OrderedDict[int, Loaded] = OrderedDict()  # LRU order: oldest first
        self._idle = asyncio.Condition()
        self.promoted: int | None = None  # number of the version `student` resolves to; None = base

    def get(self, number: int) -> Loaded | None:
        slot = self._loaded.get(number)
        if slot is not None:
            self._loaded.move_to_end(number)
        return slot

    def add(self, slot: Loaded) -> None:
        self._loaded[slot.number] = slot

    def remove(self, number: int) -> None:
        self._loaded.pop(number, None)

    def names(self) -> list[Loaded]:
        return sorted(self._loaded.values(), key=lambda s: s.number)

    def evictable(self) -> Loaded | None:
        """Least recently used version that may leave to make room: not promoted, nothing running on it."""
        if len(self._loaded) < self.capacity:
            return None
        for slot in self._loaded.values():
            if slot.number != self.promoted and slot.inflight == 0:
                return slot
        return None

    def acquire(self, number: int) -> None:
        self._loaded[number].inflight += 1

    async def release(self, number: int) -> None:
        slot = self._loaded.get(number)
        if slot is not None:
            slot.inflight -= 1
            if slot.inflight == 0:
                async with self._idle:
                    self._idle.notify_all()

    async def wait_idle(self, number: int, timeout: float) -> bool:
        async with self._idle:
            try:
                await asyncio.wait_for(
                    self._idle.wait_for(lambda: (s := self._loaded.get(number)) is None or s.inflight == 0),
                    timeout,
                )
            except TimeoutError:
                return False
        return True


@dataclass
class Resolved:
    """What a request's `model` names, fixed for the request's whole life."""

    adapter: str  # `student@vN`, or the base model id
    lora: Any  # vLLM LoRARequest, or None for the engine's own weights (the base, or the merged version)


@dataclass(frozen=True)
class _Target:
    number: int  # 0: the base model
    name: str
    folder: str | None = None  # the version's files on this replica, once checked


class StudentAdapters:
    def __init__(self, settings: Settings, registry: AdapterRegistry, base_id: str, engine: Any,
                 openai_models: Any | None = None, merging: Any | None = None) -> None:
        """`engine`: vLLM's AsyncLLM (add_lora/remove_lora). `openai_models`: vLLM's OpenAIServingModels, whose
        `lora_requests` name the adapters its serving classes accept (None where no serving classes run).
        `merging`: a `merged.MergedWeights`, to serve the promoted version merged (None: always through LoRA)."""
        self.settings = settings
        self.registry = registry
        self.base_id = base_id
        self.engine = engine
        self.openai_models = openai_models
        self.merging = merging
        self.slots = AdapterSlots(settings.student.max_cpu_loras)
        self.promoted_version: str | None = None  # the name of `slots.promoted`
        self.merged: _Target | None = None  # the version the weights hold; None: the base model's own weights
        self._generation = 0
        self._lock = asyncio.Lock()  # serialises load/unload/sync/merge
        self._open = asyncio.Event()  # cleared while a merge holds new requests back
        self._open.set()
        self._running = 0  # requests holding a version (clients' and debate turns)
        self._idle = asyncio.Condition()
        self._merge_task: asyncio.Task[None] | None = None
        self._merge_target: str | None = None  # what the pending merge task waits to merge
        self._merging = asyncio.Lock()  # one merge at a time, from its drain to its end
        self.broken: str | None = None  # set when a failed merge left the weights unknown (health checks fail)
        self.wanted: str | None = None  # what the registry promoted when this replica last looked (None: the base)
        self.unready: str | None = None  # why this replica cannot serve `wanted` (it then refuses `student`)

    def attach(self, openai_models: Any) -> None:
        """Register every loaded version with vLLM's `OpenAIServingModels`, and each one loaded from now on."""
        self.openai_models = openai_models
        for slot in self.slots.names():
            openai_models.lora_requests[slot.name] = slot.lora()

    # ---- load / unload / follow the registry ----------------------------------------------------------
    async def _checked(self, name: str) -> _Target | Failed:
        """The version `name`, its files fetched to this replica and checked against their manifest."""
        try:
            version = await asyncio.to_thread(self.registry.get, name)
        except RegistryError as e:
            return Failed(404, str(e), "lora_name", "adapter_not_found")
        if not self.settings.student.enable_lora:
            return Failed(400, "LoRA is disabled (student.enable_lora=false)", "lora_name", "lora_disabled")
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
        return _Target(version.number, version.name, str(local))

    async def _load_locked(self, target: _Target) -> LoadResult | Failed:
        """Make `target` servable: nothing to do for what the weights hold, else an adapter (relative to a merge)."""
        if self._is_weights(target) or (slot := self.slots.get(target.number)) is not None:
            return LoadResult(target.name, 0.0, already_loaded=True)
        t0 = time.monotonic()
        path = target.folder
        if self.merged is not None:
            assert self.merging is not None
            out = Path(self.merging.work_dir) / f"g{self._generation}-{target.number}"
            try:
                path = str(await asyncio.to_thread(self.merging.relative_adapter, target.folder, out))
            except Exception as e:
                log.exception("cannot make %s relative to the merged %s", target.name, self.merged.name)
                return Failed(400, f"adapter {target.name} cannot be served beside the merged {self.merged.name}: "
                              f"{e}", "lora_name", "invalid_adapter")
        if (victim := self.slots.evictable()) is not None:
            await self._remove_locked(victim)
        # The base model's adapter needs a name of its own in vLLM: its serving classes read the base name as the
        # engine's weights (the merged version), so the base model is asked for under this one.
        name = target.name if target.number else f"{target.name}{BASE_BESIDE_MERGE}"
        slot = Loaded(name, target.number, str(path), lora_id=target.number + RELATIVE_IDS * self._generation,
                      source=target.folder)
        try:
            await self.engine.add_lora(slot.lora())
        except Exception as e:
            log.exception("vLLM refused adapter %s", target.name)
            return Failed(400, f"vLLM could not load adapter {target.name}: {e}", "lora_name", "invalid_adapter")
        self.slots.add(slot)
        if self.openai_models is not None:
            self.openai_models.lora_requests[slot.name] = slot.lora()
        seconds = time.monotonic() - t0
        log.info("loaded %s in %.3fs", target.name, seconds)
        return LoadResult(target.name, seconds)

    async def _remove_locked(self, slot: Loaded) -> None:
        self.slots.remove(slot.number)  # first, so no new request acquires it while vLLM drops it
        if self.openai_models is not None:
            self.openai_models.lora_requests.pop(slot.name, None)
        await self.engine.remove_lora(slot.lora().lora_int_id)
        if self.merging is not None and Path(slot.path).parent == Path(self.merging.work_dir):
            shutil.rmtree(slot.path, ignore_errors=True)  # a relative adapter written for one merge only

    def _is_weights(self, target: _Target) -> bool:
        """Whether `target` is what the engine's weights hold (served without LoRA)."""
        return target.number == (self.merged.number if self.merged is not None else 0)

    async def load(self, name: str) -> LoadResult | Failed:
        target = await self._checked(name)
        if isinstance(target, Failed):
            return target
        async with self._lock:
            return await self._load_locked(target)

    async def unload(self, name: str) -> LoadResult | Failed:
        try:
            version = await asyncio.to_thread(self.registry.get, name)
        except RegistryError as e:
            return Failed(404, str(e), "lora_name", "adapter_not_found")
        if self.slots.get(version.number) is None:
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
        # Drained without the lock: promotions, loads and merges go on meanwhile.
        if not await self.slots.wait_idle(version.number, UNLOAD_DRAIN_TIMEOUT_S):
            return Failed(503, f"requests on {version.name} did not finish in time", "lora_name", "busy")
        async with self._lock:
            slot = self.slots.get(version.number)
            if slot is not None and slot.inflight == 0 and version.number != self.slots.promoted:
                await self._remove_locked(slot)
            elif slot is not None:
                return Failed(503, f"{version.name} is in use again; retry", "lora_name", "busy")
        return LoadResult(version.name, time.monotonic() - t0)

    async def sync(self) -> LoadResult | Failed:
        """Point `student` at the registry's promoted version, loading it first (the hot swap); its merge follows
        once it has stayed promoted for `student.merge_after_s`."""
        version = await asyncio.to_thread(self.registry.promoted)
        self.wanted = version.name if version is not None else None
        if version is None:
            self.slots.promoted = self.promoted_version = None
            self._schedule_merge(None)
            return LoadResult(self.base_id, 0.0, already_loaded=True)
        if version.number == self.slots.promoted:
            self._schedule_merge(version.name)
            return LoadResult(version.name, 0.0, already_loaded=True)
        target = await self._checked(version.name)
        if isinstance(target, Failed):
            return target
        async with self._lock:
            result = await self._load_locked(target)
            if isinstance(result, LoadResult):
                self.slots.promoted = version.number  # the swap itself: one assignment
                self.promoted_version = version.name
                log.info("`%s` now serves %s", self.settings.student.served_name, version.name)
        if isinstance(result, LoadResult):
            self._schedule_merge(version.name)
        return result

    async def follow(self) -> None:
        """Follow the registry's promotion once (promotions made by another gateway replica or a training job).
        A version this replica cannot load makes it unready: it refuses `student` until a later poll loads it or the
        registry moves on, rather than serve another version. A registry it cannot read changes nothing."""
        try:
            result = await self.sync()
        except Exception:
            log.exception("registry poll failed; serving continues with the current adapter")
            return
        if isinstance(result, Failed):
            log.error("cannot serve the promoted adapter %s: %s", self.wanted, result.message)
        self.unready = result.message if isinstance(result, Failed) else None

    def ready(self) -> bool:
        """Whether `student` here serves what the registry promotes (as of the last look)."""
        return self.unready is None and self.broken is None and self.wanted == self.promoted_version

    # ---- the promoted version merged into the weights -------------------------------------------------
    def _schedule_merge(self, name: str | None) -> None:
        """Merge `name` (None: restore the base weights) once it has stayed promoted for `merge_after_s`; a newer
        promotion restarts the wait."""
        current = self.merged.name if self.merged is not None else None
        if self.merging is None or self.broken is not None:
            return
        pending = self._merge_task is not None and not self._merge_task.done()
        if pending and self._merge_target == name:
            return
        if pending:
            assert self._merge_task is not None
            self._merge_task.cancel()
        if name == current:
            return
        self._merge_target = name
        self._merge_task = asyncio.create_task(self._merge_when_settled(name))

    async def _merge_when_settled(self, name: str | None) -> None:
        wait = self.settings.student.merge_after_s
        while self.promoted_version == name:
            await asyncio.sleep(wait)
            if self.promoted_version != name:
                return  # promoted elsewhere meanwhile: that promotion scheduled its own merge
            try:
                if await self.merge_promoted():
                    return
            except Exception:
                log.exception("merging the promoted adapter failed; `student` stays on the LoRA path")
                return
            wait = min(wait * 2 if wait else 1.0, 300.0)  # postponed: busy replica, try again later

    async def merge_promoted(self) -> bool:
        """Merge the promoted version into the weights now (or restore the base weights when none is promoted):
        new requests wait, running ones end (at most `merge_drain_s`, else it is postponed), the weights change,
        every adapter is loaded again relative to them. True once the weights hold what is promoted."""
        async with self._merging:
            name, number = self.promoted_version, self.slots.promoted
            if self.merging is None:
                return False
            if number == (self.merged.number if self.merged else None):
                return True
            target: _Target | Failed = _Target(0, self.base_id)
            if name is not None:
                target = await self._checked(name)
                if isinstance(target, Failed):
                    log.error("cannot merge the promoted version: %s", target.message)
                    return False
            t0 = time.monotonic()
            self._open.clear()
            try:
                async with self._idle:
                    try:
                        await asyncio.wait_for(self._idle.wait_for(lambda: self._running == 0),
                                               self.settings.student.merge_drain_s)
                    except TimeoutError:
                        log.warning("merge of %s postponed: requests still running after %ss", target.name,
                                    self.settings.student.merge_drain_s)
                        return False
                async with self._lock:
                    if self.promoted_version != name:  # promoted elsewhere while draining: its own merge follows
                        return False
                    seconds = await self._merge_locked(target)
            finally:
                self._open.set()
        log.info("%s merged into the weights in %.2fs (new requests held %.2fs)", target.name, seconds,
                 time.monotonic() - t0)
        return True

    async def _merge_locked(self, target: _Target) -> float:
        assert self.merging is not None
        # Every adapter is a delta on the weights: each loaded version (and the one merged until now) is loaded
        # again, relative to the new weights, so what was loaded stays loaded.
        keep = [_Target(slot.number, slot.name, slot.source) for slot in self.slots.names() if slot.number]
        previous = self.merged
        if previous is not None:
            keep.append(previous)
        for slot in list(self.slots.names()):
            await self._remove_locked(slot)
        try:
            seconds = await self.merging.merge(self.engine, target.folder)
        except Exception as e:
            log.exception("merging %s failed; restoring the weights of %s", target.name,
                          previous.name if previous else self.base_id)
            try:
                await self.merging.merge(self.engine, previous.folder if previous else None)
            except Exception:  # the weights are in an unknown state: health checks fail, the replica restarts
                self.broken = f"a failed merge of {target.name} left the weights unknown: {e}"
                raise
            raise
        self.merged = target if target.number else None
        self._generation += 1
        for kept in keep:
            if not self._is_weights(kept):
                result = await self._load_locked(kept)
                if isinstance(result, Failed):
                    log.error("%s could not be loaded beside the merge: %s", kept.name, result.message)
        return seconds

    # ---- what requests run on -----------------------------------------------------------------------
    def promoted_name(self) -> str:
        slot = self.slots.get(self.slots.promoted) if self.slots.promoted else None
        if slot is not None:
            return slot.name
        if self.merged is not None and self.merged.number == self.slots.promoted:
            return self.merged.name
        return self.base_id

    def merged_name(self) -> str | None:
        return self.merged.name if self.merged is not None else None

    def loaded(self) -> list[dict[str, Any]]:
        out = [{"name": s.name, "path": s.path, "inflight": s.inflight} for s in self.slots.names() if s.number]
        if self.merged is not None:
            out.append({"name": self.merged.name, "path": str(self.merged.folder), "inflight": 0, "merged": True})
        return sorted(out, key=lambda a: a["name"])

    async def _resolve(self, model: str) -> Resolved | Failed:
        if model == self.settings.student.served_name and self.unready is not None:
            return Failed(503, f"this replica cannot serve the promoted {self.wanted}: {self.unready}", "model",
                          "replica_unready")
        if model == self.settings.student.served_name:
            if self.slots.promoted is None or self.promoted_version is None:
                target = _Target(0, self.base_id)
            else:
                target = _Target(self.slots.promoted, self.promoted_version)
        elif model == self.base_id:
            target = _Target(0, self.base_id)
        else:
            try:
                version = await asyncio.to_thread(self.registry.get, model)
            except RegistryError:
                return Failed.model_not_found(model)
            target = _Target(version.number, version.name)
        if self._is_weights(target):  # no merge can start while a request resolves: the answer holds
            return Resolved(target.name, None)
        if self.slots.get(target.number) is None:
            if target.number:
                loaded = await self.load(target.name)
            else:  # the base model beside a merged version
                async with self._lock:
                    loaded = await self._load_locked(target)
            if isinstance(loaded, Failed):
                return loaded
        return self._pinnable(model, target, self.slots.get(target.number))

    @staticmethod
    def _pinnable(model: str, target: _Target, slot: Loaded | None) -> Resolved | Failed:
        if slot is None:  # evicted between load and here: vanishingly rare, and retrying is safe
            return Failed(503, f"adapter for `{model}` was unloaded concurrently; retry", "model", "retry")
        return Resolved(target.name, slot.lora())

    @asynccontextmanager
    async def pinned(self, model: str) -> AsyncIterator[Resolved | Failed]:
        """The version `model` names now, held (never unloaded, never merged over) until the block ends."""
        while not self._open.is_set():  # a merge in progress: start on the new weights
            await self._open.wait()
        self._running += 1
        try:
            resolved = await self._resolve(model)
            if isinstance(resolved, Failed) or resolved.lora is None:
                yield resolved
                return
            number = _number(resolved.lora.lora_int_id)
            self.slots.acquire(number)
            try:
                yield resolved
            finally:
                await self.slots.release(number)
        finally:
            self._running -= 1
            if self._running == 0:
                async with self._idle:
                    self._idle.notify_all()


def _number(lora_id: int) -> int:
    """The version number (0: the base model) of a lora id."""
    return lora_id % RELATIVE_IDS
