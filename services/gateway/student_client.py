"""How the gateway reaches the student replicas: a Ray Serve handle to the Student deployment.

The gateway codes against `StudentClient`; the collaborator is injected (as Ray Serve LLM injects its engine
class), so tests can give the real app a student in the same process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from services.student.events import Failed, LoadResult, StudentEvent


class StudentClient(Protocol):
    def serve(self, endpoint: str, request: Any) -> AsyncIterator[StudentEvent]: ...
    async def load(self, name: str) -> LoadResult | Failed: ...
    async def unload(self, name: str) -> LoadResult | Failed: ...
    async def sync(self) -> LoadResult | Failed: ...
    async def models(self) -> dict[str, Any]: ...
    async def check_health(self) -> None: ...


class RayStudentClient:
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._stream = handle.options(stream=True)

    def serve(self, endpoint: str, request: Any) -> AsyncIterator[StudentEvent]:
        return self._stream.serve.remote(endpoint, request)  # type: ignore[no-any-return]

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
