"""Debate tests: real HTTP agents on 127.0.0.1 (reference teachers, scripted endpoints), a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from services.config import DebateConfig, ReferenceProfile, TeacherConfig
from services.debate.agents import OpenAIAgent
from services.debate.worker import DebateWorker
from services.teachers.server import build_teacher_app
from tests.http_servers import serve_app

EXACT = [TeacherConfig(name="ref-a", reference=ReferenceProfile(error_rate=0.0, seed=1)),
         TeacherConfig(name="ref-b", reference=ReferenceProfile(error_rate=0.0, seed=2))]


@pytest.fixture(scope="session")
def reference_url() -> Iterator[str]:
    """Two exact reference teachers behind one real HTTP server."""
    with serve_app(build_teacher_app(EXACT)) as url:
        yield url


def agent(name: str, url: str, role: str = "teacher", **cfg: object) -> OpenAIAgent:
    return OpenAIAgent(TeacherConfig(name=name, base_url=url, **cfg), role=role, max_tokens=256)  # type: ignore[arg-type]


def reference_agents(url: str) -> list[OpenAIAgent]:
    return [agent(t.name, f"{url}/{t.name}/v1") for t in EXACT]


def debate_config(**kw: object) -> DebateConfig:
    return DebateConfig(teachers=EXACT, **kw)  # type: ignore[arg-type]


async def run_briefly(worker: DebateWorker, seconds: float = 0.5) -> None:
    """The worker's service loop for `seconds`, then stopped the way the service stops it."""
    stop = asyncio.Event()
    loop = asyncio.create_task(worker.run_forever(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await loop
