"""Adapter operations behind /v1/load_lora_adapter, /v1/unload_lora_adapter and /admin/adapters/*.

Order matters for safety: a version is validated and loaded into the engine *before* the registry records
it as promoted, so a corrupt adapter is refused with a 4xx while the serving version stays. Every other student
replica follows the registry within `student.registry_poll_s`; a promotion or rollback then waits (at most
`student.promotion_wait_s`) until every live replica reports the new version on the replica board, and names in
its answer those that did not (they are unready: they refuse `student` rather than serve another version).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from services.gateway.errors import ApiError, bad_request
from services.gateway.metrics import ServingMetrics
from services.gateway.protocol import LoadLoRARequest, UnloadLoRARequest
from services.gateway.student_client import StudentClient
from services.registry import AdapterInvalid, AdapterRegistry, AdapterTampered, RegistryError
from services.store.replicas import ReplicaBoard
from services.student.events import Failed, LoadResult


def _api_error(f: Failed) -> ApiError:
    return ApiError(f.status, f.message, f.param, f.code)


def _local_path(path: str) -> Path | ApiError:
    """A client's `lora_path` resolved on this machine; a 400 for text that is no path here (a NUL byte, a name too
    long for the filesystem, `~user` of an unknown user), which the registry would fail on with a 500."""
    try:
        src = Path(path).expanduser().resolve()
        src.is_dir()  # raises for a name too long, where a missing folder is only False
    except (ValueError, OSError, RuntimeError) as e:
        return bad_request(f"lora_path is not a usable path: {e}", "lora_path", "invalid_adapter")
    return src


class AdapterService:
    def __init__(self, registry: AdapterRegistry, student: StudentClient, metrics: ServingMetrics,
                 replicas: ReplicaBoard | None = None, wait_s: float = 30.0, stale_s: float = 10.0) -> None:
        self.registry = registry
        self.student = student
        self.metrics = metrics
        self.replicas, self.wait_s, self.stale_s = replicas, wait_s, stale_s
        self._lock = asyncio.Lock()  # one promotion/rollback at a time in this gateway

    async def list(self) -> dict[str, Any]:
        versions = await asyncio.to_thread(self.registry.list)
        promoted = await asyncio.to_thread(self.registry.promoted)
        models = await self.student.models()
        loaded = {m["name"] for m in models["loaded"]}
        return {
            "alias": self.registry.served_name,
            "base_model": models["base"],
            "promoted": promoted.name if promoted else None,
            "serving": models["promoted"],
            "adapters": [{**v.as_dict(), "loaded": v.name in loaded} for v in versions],
            "history": await asyncio.to_thread(self.registry.history),
        }

    async def _load(self, name: str) -> LoadResult | ApiError:
        result = await self.student.load(name)
        self.metrics.adapter_events.labels("load", "ok" if isinstance(result, LoadResult) else "refused").inc()
        if isinstance(result, Failed):
            return _api_error(result)
        if not result.already_loaded:
            self.metrics.adapter_load.observe(result.seconds)
        return result

    async def load(self, body: LoadLoRARequest) -> dict[str, Any] | ApiError:
        """vLLM-compatible: a new path is published as the next version (labelled lora_name), then loaded."""
        name = body.lora_name
        if body.lora_path:
            src = await asyncio.to_thread(_local_path, body.lora_path)
            if isinstance(src, ApiError):
                return src
            try:
                version = await asyncio.to_thread(
                    self.registry.publish, src,
                    label=None if name.startswith(f"{self.registry.served_name}@") else name,
                )
            except AdapterInvalid as e:
                self.metrics.adapter_events.labels("load", "refused").inc()
                return bad_request(str(e), "lora_path", "invalid_adapter")
            except RegistryError as e:
                return bad_request(str(e), "lora_name", "adapter_exists")
            name = version.name
        result = await self._load(name)
        if isinstance(result, ApiError):
            return result
        version = await asyncio.to_thread(self.registry.get, result.version)
        return {"version": version.name, "label": version.label, "path": version.path,
                "load_seconds": round(result.seconds, 4), "already_loaded": result.already_loaded}

    async def unload(self, body: UnloadLoRARequest) -> dict[str, Any] | ApiError:
        result = await self.student.unload(body.lora_name)
        self.metrics.adapter_events.labels("unload", "ok" if isinstance(result, LoadResult) else "refused").inc()
        if isinstance(result, Failed):
            return _api_error(result)
        return {"version": result.version, "unloaded": True}

    async def promote(self, name: str, reason: str | None) -> dict[str, Any] | ApiError:
        async with self._lock:
            t0 = time.monotonic()
            try:
                version = await asyncio.to_thread(self.registry.get, name)
            except RegistryError as e:
                return ApiError(404, str(e), "version", "adapter_not_found")
            loaded = await self._load(version.name)
            if isinstance(loaded, ApiError):
                return loaded
            try:  # the registry verifies the files again: they may have changed since the engine loaded them
                await asyncio.to_thread(self.registry.promote, version.name, reason)
            except AdapterTampered as e:
                return ApiError(409, str(e), "version", "adapter_checksum_mismatch")
            except AdapterInvalid as e:
                return ApiError(400, str(e), "version", "invalid_adapter")
            except OSError as e:
                return ApiError(503, f"adapter storage unavailable: {type(e).__name__}", None, "storage_unavailable")
            return await self._swap("promote", t0)

    async def rollback(self, reason: str | None) -> dict[str, Any] | ApiError:
        async with self._lock:
            t0 = time.monotonic()
            try:
                target = await asyncio.to_thread(self.registry.rollback_target)
            except RegistryError as e:
                return ApiError(409, str(e), None, "nothing_to_roll_back")
            if target is not None:
                loaded = await self._load(target.name)
                if isinstance(loaded, ApiError):
                    return loaded
            await asyncio.to_thread(self.registry.rollback, reason)
            return await self._swap("rollback", t0)

    async def _swap(self, action: str, t0: float) -> dict[str, Any] | ApiError:
        synced = await self.student.sync()
        if isinstance(synced, Failed):  # loaded a moment ago, so this means the engine is in trouble
            self.metrics.adapter_events.labels(action, "failed").inc()
            return _api_error(synced)
        seconds = time.monotonic() - t0
        self.metrics.adapter_swap.labels(action).observe(seconds)
        self.metrics.adapter_events.labels(action, "ok").inc()
        self.metrics.set_promoted(synced.version)
        out: dict[str, Any] = {"promoted": synced.version, "action": action, "swap_seconds": round(seconds, 4)}
        if self.replicas is not None:
            out["replicas"] = await self._confirmed(synced.version)
            out["confirm_seconds"] = round(time.monotonic() - t0, 4)
        return out

    async def _confirmed(self, version: str) -> dict[str, list[str]]:
        """Wait until every live student replica reports serving `version` (at most `wait_s`): which did, which
        did not."""
        deadline = time.monotonic() + self.wait_s
        while True:
            live = await asyncio.to_thread(self.replicas.live, self.stale_s)  # type: ignore[union-attr]
            pending = [r.replica_id for r in live if r.serving != version or not r.ready]
            if not pending or time.monotonic() >= deadline:
                return {"confirmed": [r.replica_id for r in live if r.replica_id not in pending], "pending": pending}
            await asyncio.sleep(0.25)
