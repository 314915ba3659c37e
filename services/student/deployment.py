"""Ray Serve deployment hosting the StudentEngine (one vLLM engine per replica) and its OpenAI serving.

Replicas agree through the store: each follows the registry's promotion every `student.registry_poll_s` and reports
what it serves on the replica board (services/store/replicas.py), which /ready, /metrics and promotions read.
Exact versions (`student@vN`) reach replicas through Ray Serve's model multiplexing, as Ray Serve LLM routes LoRA
adapters: the gateway names the version as the request's multiplexed model id, Serve prefers replicas that hold
it, and each replica keeps at most `max_cpu_loras - 1` versions for it (least recently used out; one slot stays for
the promoted version).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from typing import Any

from ray import serve

from services.cluster import replica_identity
from services.config import Settings
from services.registry import AdapterRegistry
from services.store.db import Database
from services.store.debates import utcnow
from services.store.replicas import ReplicaBoard, ReplicaState
from services.student.adapters import StudentAdapters
from services.student.engine import StudentEngine
from services.student.events import Event, Failed, GenerateRequest, LoadResult, StudentEvent
from services.student.serving import StudentOpenAI

log = logging.getLogger(__name__)
_unloads: set[asyncio.Task[Any]] = set()  # unloads of versions Serve's multiplexing evicted, still running


class VersionUnavailable(Exception):
    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.message)
        self.failed = failed


class HeldVersion:
    """A version held for Serve's multiplexing. Serve calls `__del__` when its LRU evicts it: the version is
    unloaded in the background (an unload waits for the version's running requests), unless it is promoted."""

    def __init__(self, adapters: StudentAdapters, name: str) -> None:
        self.adapters, self.name = adapters, name
        self.loop = asyncio.get_running_loop()
        self.released = False

    def __del__(self) -> None:
        if self.released:
            return
        self.released = True

        def unload() -> None:
            task = self.loop.create_task(self.adapters.unload(self.name))
            _unloads.add(task)
            task.add_done_callback(_unloads.discard)

        with suppress(RuntimeError):  # the loop is closed: the replica is going away with its engine
            self.loop.call_soon_threadsafe(unload)


@serve.deployment(name="Student")
class StudentDeployment:
    async def __init__(self, settings: Settings, model_path: str, base_id: str) -> None:
        logging.basicConfig(level=settings.log_level)
        registry = AdapterRegistry.from_settings(settings, base_id=base_id, model_path=model_path)
        self.engine = StudentEngine(settings, model_path=model_path, base_id=base_id, registry=registry)
        await self.engine.start()
        self.replica, self.node = replica_identity()
        self.openai = await StudentOpenAI.start(settings, self.engine, self.replica)
        db = Database(settings.db_url)
        db.create_all()
        self.board, self.started_at = ReplicaBoard(db), utcnow()

        async def hold(name: str) -> HeldVersion:  # a plain function: Serve keeps its LRU cache on the callable
            return await self._hold(name)

        self.hold_version = serve.multiplexed(max_num_models_per_replica=max(1, settings.student.max_cpu_loras - 1))(
            hold)
        self.poll_s = settings.student.registry_poll_s
        await self._follow()  # serving what is promoted, and on the board, before the first request
        self._watch = asyncio.create_task(self._follow_forever())

    async def _follow(self) -> None:
        adapters = self.engine.adapters
        await adapters.follow()
        state = ReplicaState(self.replica, self.node, adapters.wanted, adapters.promoted_name(), adapters.ready(),
                             adapters.unready or adapters.broken, tuple(a["name"] for a in adapters.loaded()))
        try:
            await asyncio.to_thread(self.board.report, state, self.started_at)
        except Exception:
            log.exception("cannot report to the replica board; serving goes on")

    async def _follow_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self._follow()
            except Exception:  # never end the loop: a replica that stops reporting is taken for gone
                log.exception("following the registry failed; trying again next poll")

    async def _hold(self, name: str) -> HeldVersion:
        result = await self.engine.adapters.load(name)
        if isinstance(result, Failed):  # the client named the version as its `model`: an unknown one is a model
            raise VersionUnavailable(Failed.model_not_found(name) if result.code == "adapter_not_found" else result)
        return HeldVersion(self.engine.adapters, name)

    async def serve(self, endpoint: str, request: Any) -> AsyncIterator[StudentEvent]:
        """A client's OpenAI request (vLLM's request model of `endpoint`) through vLLM's serving classes; an exact
        version comes with its name as the multiplexed model id."""
        if version := serve.get_multiplexed_model_id():
            try:
                await self.hold_version(version)
            except VersionUnavailable as e:
                yield e.failed
                return
        async with aclosing(self.openai.serve(endpoint, request)) as events:
            async for event in events:
                yield event

    async def generate(self, req: GenerateRequest) -> AsyncIterator[Event]:
        async for event in self.engine.generate(req):
            yield event

    async def load(self, name: str) -> LoadResult | Failed:
        return await self.engine.adapters.load(name)

    async def unload(self, name: str) -> LoadResult | Failed:
        return await self.engine.adapters.unload(name)

    async def sync(self) -> LoadResult | Failed:
        return await self.engine.adapters.sync()

    def serving_load(self) -> tuple[int, float]:
        """(clients' requests in flight, seconds idle): the debate worker holds its turns while serving."""
        return self.engine.serving_load()

    def models(self) -> dict[str, Any]:
        return self.engine.models()

    async def check_health(self) -> None:
        # Ray Serve calls this periodically: a dead engine gets the replica restarted.
        await self.engine.check_health()

    def __del__(self) -> None:
        if getattr(self, "_watch", None) is not None:
            self._watch.cancel()
            with suppress(Exception):
                self.board.leave(self.replica)
        self.engine.shutdown()
