"""Debate turns yield the student to clients: a preemptible background request is aborted when one arrives.

The vLLM engine is replaced through the injectable `engine_factory` by a slow token source, so the order of
events is deterministic; the service-level path runs in tests/e2e/test_debate_service.py.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from services.config import Settings
from services.registry import AdapterRegistry
from services.student.engine import StudentEngine
from services.student.events import Delta, Failed, GenerateRequest, Started


class SlowEngine:
    """Yields one token every 10 ms, like AsyncLLM.generate with DELTA output; records aborted requests."""

    def __init__(self) -> None:
        self.model_config = SimpleNamespace(max_model_len=512, get_diff_sampling_param=lambda: {})
        self.aborted: list[str] = []

    async def generate(self, prompt, params, request_id, lora_request=None):
        try:
            for _ in range(params.max_tokens):
                await asyncio.sleep(0.01)
                out = SimpleNamespace(index=0, text="x", token_ids=[1], finish_reason=None)
                yield SimpleNamespace(outputs=[out])
        except (GeneratorExit, asyncio.CancelledError):
            self.aborted.append(request_id)  # AsyncLLM aborts the request here
            raise


async def make_engine(tmp_path) -> tuple[StudentEngine, SlowEngine]:
    settings = Settings(data_dir=tmp_path)
    registry = AdapterRegistry.from_settings(settings, base_id="base", model_path=str(tmp_path))
    fake = SlowEngine()
    engine = StudentEngine(settings, model_path=str(tmp_path), base_id="base", registry=registry,
                           engine_factory=lambda _args: fake)
    engine.engine, engine.max_model_len = fake, 512  # start() without building vLLM engine args
    return engine, fake


async def collect(engine: StudentEngine, req: GenerateRequest) -> list:
    return [ev async for ev in engine.generate(req)]


async def test_a_client_request_preempts_a_background_turn_and_is_not_counted_as_one(tmp_path):
    engine, fake = await make_engine(tmp_path)
    bg = GenerateRequest("debate-1", "base", [[1, 2, 3]], 200, {"temperature": 0.3}, stream=False,
                         background=True, preemptible=True)
    background = asyncio.create_task(collect(engine, bg))
    await asyncio.sleep(0.1)
    assert engine.serving_load()[0] == 0  # the debate turn is not serving load
    client_start = time.monotonic()
    client = await collect(engine, GenerateRequest("client-1", "base", [[1, 2]], 5, {}, stream=True))
    client_end = time.monotonic()
    events = await background
    assert isinstance(events[-1], Failed) and events[-1].code == "preempted"
    assert any(r.startswith("debate-1") for r in fake.aborted)  # vLLM-side abort, its slot freed
    assert isinstance(client[0], Started) and sum(isinstance(e, Delta) for e in client) == 5
    await asyncio.sleep(0.2)
    before = time.monotonic()
    in_flight, idle = engine.serving_load()
    after = time.monotonic()
    # Idle counts from the end of the client request: not from the engine's start, never a constant.
    assert in_flight == 0 and before - client_end <= idle <= after - client_start, (idle, client_start, client_end)


async def test_a_non_preemptible_background_turn_runs_to_completion(tmp_path):
    engine, _ = await make_engine(tmp_path)
    bg = GenerateRequest("debate-2", "base", [[1]], 30, {}, stream=False, background=True, preemptible=False)
    background = asyncio.create_task(collect(engine, bg))
    await asyncio.sleep(0.05)
    await collect(engine, GenerateRequest("client-2", "base", [[1]], 3, {}, stream=True))
    events = await background
    assert not any(isinstance(e, Failed) for e in events)
    assert sum(e.tokens for e in events if isinstance(e, Delta)) == 30
