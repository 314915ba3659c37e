"""The real gateway app (`build_app`) in this process, on a real HTTP server on 127.0.0.1: a real registry, store
and `StudentEngine` in the settings' data dir, with only vLLM's engine replaced by one that records the adapters it
is given (no generation). For the admin API and auth, where starting vLLM would only cost time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI

from services.capture.policy import CaptureSink
from services.config import Settings
from services.gateway.app import build_app
from services.registry import AdapterRegistry
from services.store.controls import Controls
from services.store.db import Database
from services.store.mags import MagStore
from services.student.engine import StudentEngine
from services.student.events import Failed, LoadResult, StudentEvent
from services.student.model_prep import base_model_id
from tests.http_servers import serve_app


class LocalStudentClient:
    """The Student deployment's methods on a StudentEngine (and its OpenAI serving) in this process, without Ray."""

    def __init__(self, engine: StudentEngine, openai: Any | None = None) -> None:
        self.engine = engine
        self.openai = openai

    def serve(self, endpoint: str, request: Any, version: str | None = None) -> AsyncIterator[StudentEvent]:
        assert self.openai is not None, "this test student does not generate"
        return self.openai.serve(endpoint, request)  # type: ignore[no-any-return]

    async def load(self, name: str) -> LoadResult | Failed:
        return await self.engine.adapters.load(name)

    async def unload(self, name: str) -> LoadResult | Failed:
        return await self.engine.adapters.unload(name)

    async def sync(self) -> LoadResult | Failed:
        return await self.engine.adapters.sync()

    async def models(self) -> dict[str, Any]:
        return self.engine.models()

    async def check_health(self) -> None:
        await self.engine.check_health()


class AdapterEngine:
    """vLLM's AsyncLLM as far as adapters go: records what it loads and drops."""

    def __init__(self) -> None:
        self.model_config = SimpleNamespace(max_model_len=512, get_diff_sampling_param=lambda: {})
        self.added: list[str] = []
        self.removed: list[int] = []

    async def add_lora(self, request: Any) -> bool:
        self.added.append(request.lora_name)
        return True

    async def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return True


@dataclass
class Gateway:
    url: str
    settings: Settings
    registry: AdapterRegistry
    vllm: AdapterEngine
    base_id: str
    app: FastAPI  # the same app, for a test that drives it through ASGI messages HTTP cannot order


@contextmanager
def serve_gateway(settings: Settings, model_dir: str, vllm: AdapterEngine | None = None,
                  sink: Callable[[Database], CaptureSink] | None = None,
                  feedback: bool = False,
                  openai: Callable[[StudentEngine], Any] | None = None) -> Iterator[Gateway]:
    """`vllm`: the stand-in for vLLM's engine, an `AdapterEngine` that may also generate (tests/gateway/).
    `sink`: the capture sink the app offers finished requests to, made on the gateway's store (default: none).
    `feedback`: give the app the store's capture queue, so POST /v1/feedback records labels.
    `openai`: makes, from the StudentEngine, what serves generation requests (`serve(endpoint, request)`, as
    `StudentOpenAI`); without it the student does not generate."""
    db = Database(settings.db_url)
    db.create_all()
    base_id = base_model_id(model_dir)
    registry = AdapterRegistry.from_settings(settings, base_id=base_id, model_path=model_dir)
    vllm = vllm or AdapterEngine()
    engine = StudentEngine(settings, model_path=model_dir, base_id=base_id, registry=registry,
                           engine_factory=lambda _args: vllm)
    engine.engine = engine.adapters.engine = vllm
    student = LocalStudentClient(engine, openai(engine) if openai else None)
    app = build_app(settings, student=student, registry=registry, controls=Controls(db),
                    sink=sink(db) if sink else None, store=MagStore(db) if feedback else None)
    with serve_app(app) as url:
        yield Gateway(url, settings, registry, vllm, base_id, app)
