"""How the gateway reaches the student replicas: a Ray Serve handle to the Student deployment.

The gateway codes against `StudentClient`; the collaborator is injected (as Ray Serve LLM injects its engine
class), so tests can give the real app a student in the same process.

A request goes to another replica, at most `RETRIES` times, when the one it reached could not take it before
answering anything: the replica's actor died or became unreachable (its node stopped), or it is unready (it cannot
serve the promoted version). Nothing has reached the client then, so the retry is invisible to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from ray.exceptions import ActorUnavailableError, RayActorError

from services.student.events import Failed, LoadResult, StudentEvent

RETRIES = 2
GONE = (RayActorError, ActorUnavailableError)  # the replica's process or node is gone


class StudentClient(Protocol):
    def serve(self, endpoint: str, request: Any, version: str | None = None) -> AsyncIterator[StudentEvent]:
        """`version`: an exact version the request names (`student@vN`), to route it where it is loaded."""
        ...

    async def load(self, name: str) -> LoadResult | Failed: ...
    async def unload(self, name: str) -> LoadResult | Failed: ...
    async def sync(self) -> LoadResult | Failed: ...
    async def models(self) -> dict[str, Any]: ...
    async def check_health(self) -> None: ...


class RayStudentClient:
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._stream = handle.options(stream=True)

    async def serve(self, endpoint: str, request: Any, version: str | None = None) -> AsyncIterator[StudentEvent]:
        handle = self._stream if version is None else self._stream.options(multiplexed_model_id=version)
        for attempt in range(RETRIES + 1):
            events = handle.serve.remote(endpoint, request)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                return
            except GONE:
                if attempt == RETRIES:
                    raise
                continue
            if isinstance(first, Failed) and first.code == "replica_unready" and attempt < RETRIES:
                events.cancel()
                continue
            break
        ended = False
        try:
            yield first
            async for event in events:
                yield event
            ended = True
        finally:
            if not ended:  # the client left: abort the replica's generation
                events.cancel()

    async def load(self, name: str) -> LoadResult | Failed:
        return await self._handle.load.remote(name)  # type: ignore[no-any-return]

    async def unload(self, name: str) -> LoadResult | Failed:
        return await self._handle.unload.remote(name)  # type: ignore[no-any-return]

    async def sync(self) -> LoadResult | Failed:
        return await self._handle.sync.remote()  # type: ignore[no-any-return]

    async def models(self) -> dict[str, Any]:
        return await self._handle.models.remote()  # type: ignore[no-any-return]

    async def check_health(self) -> None:
        await self._handle.check_health.remote()
