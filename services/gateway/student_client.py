"""How the gateway reaches the student: through a Ray Serve handle in production, or directly in tests.

Both expose the same async methods, so the gateway code never knows which one it has (the collaborator
is injected, as Ray Serve LLM injects its engine class).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from services.student.events import Event, Failed, GenerateRequest, LoadResult


class StudentClient(Protocol):
    def generate(self, req: GenerateRequest) -> AsyncIterator[Event]: ...
    async def load(self, name: str) -> LoadResult | Failed: ...
    async def unload(self, name: str) -> LoadResult | Failed: ...
    async def sync(self) -> LoadResult | Failed: ...
    async def models(self) -> dict[str, Any]: ...
    async def check_health(self) -> None: ...


class RayStudentClient:
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._stream = handle.options(stream=True)

    def generate(self, req: GenerateRequest) -> AsyncIterator[Event]:
        return self._stream.generate.remote(req)

    async def load(self, name: str) -> LoadResult | Failed:
        return await self._handle.load.remote(name)

    async def unload(self, name: str) -> LoadResult | Failed:
        return await self._handle.unload.remote(name)

    async def sync(self) -> LoadResult | Failed:
        return await self._handle.sync.remote()

    async def models(self) -> dict[str, Any]:
        return await self._handle.models.remote()

    async def check_health(self) -> None:
        await self._handle.check_health.remote()


class LocalStudentClient:
    """Calls a StudentEngine (or anything with its methods) in this process."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def generate(self, req: GenerateRequest) -> AsyncIterator[Event]:
        return self.engine.generate(req)

    async def load(self, name: str) -> LoadResult | Failed:
        return await self.engine.load(name)

    async def unload(self, name: str) -> LoadResult | Failed:
        return await self.engine.unload(name)

    async def sync(self) -> LoadResult | Failed:
        return await self.engine.sync()

    async def models(self) -> dict[str, Any]:
        return self.engine.models()

    async def check_health(self) -> None:
        await self.engine.check_health()
