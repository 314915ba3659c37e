"""Ray Serve deployment hosting the StudentEngine (one vLLM engine per replica) and its OpenAI serving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from ray import serve

from services.config import Settings
from services.registry import AdapterRegistry
from services.student.engine import StudentEngine
from services.student.events import Event, Failed, GenerateRequest, LoadResult, StudentEvent
from services.student.serving import StudentOpenAI


@serve.deployment(name="Student")
class StudentDeployment:
    async def __init__(self, settings: Settings, model_path: str, base_id: str) -> None:
        logging.basicConfig(level=settings.log_level)
        registry = AdapterRegistry.from_settings(settings, base_id=base_id, model_path=model_path)
        self.engine = StudentEngine(settings, model_path=model_path, base_id=base_id, registry=registry)
        await self.engine.start()
        self.openai = await StudentOpenAI.start(settings, self.engine)
        # Follow promotions made by other processes (training jobs, other gateway replicas).
        self._watch = asyncio.create_task(self.engine.adapters.watch_registry(settings.student.registry_poll_s))

    async def serve(self, endpoint: str, request: Any) -> AsyncIterator[StudentEvent]:
        """A client's OpenAI request (vLLM's request model) through vLLM's serving classes."""
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
        self.engine.shutdown()
