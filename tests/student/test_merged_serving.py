"""The promoted version merged into the weights, through the real StudentEngine, its adapters and vLLM's serving
classes (real model, real AsyncLLM, real PEFT adapters, float32 so answers compare token for token):

- after a promotion settles, `student` runs without LoRA and answers as the version did through LoRA;
- the base name and another version answer as they did before any merge (LoRA relative to the merged weights);
- a stream running when another version is promoted ends on the weights it started with: the merge waits for it;
- a rollback merges the previous version back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from services.config import Settings
from services.gateway.openai_requests import read_chat
from services.registry import AdapterRegistry
from services.student.engine import StudentEngine
from services.student.events import Body, Chunks, Failed, Started
from services.student.model_prep import base_model_id
from services.student.serving import StudentOpenAI
from services.tasks.routing import TaskRouter
from tests.lora_factory import make_random_adapter

pytestmark = pytest.mark.e2e

QUESTION = "Name three rivers of Europe and say where each one starts."


class Student:
    """A StudentEngine and its OpenAI serving on one event loop of their own (what one replica runs)."""

    def __init__(self, settings: Settings, model_dir: str) -> None:
        self.settings = settings
        self.base_id = base_model_id(model_dir)
        self.registry = AdapterRegistry.from_settings(settings, base_id=self.base_id, model_path=model_dir)
        self.engine = StudentEngine(settings, model_path=model_dir, base_id=self.base_id, registry=self.registry)
        self.loop = asyncio.new_event_loop()
        self.openai: StudentOpenAI | None = None
        self.v1 = self.v2 = ""  # two published versions

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def start(self) -> None:
        await self.engine.start()
        self.openai = await StudentOpenAI.start(self.settings, self.engine)

    def request(self, model: str, max_tokens: int, stream: bool = False) -> Any:
        body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True, "stream": stream}
        gen = read_chat(json.dumps(body).encode(), self.settings.server, TaskRouter(self.settings.tasks))
        assert not isinstance(gen, Exception) and hasattr(gen, "request"), gen
        return gen.for_request("merge-test").request

    async def answer(self, model: str, max_tokens: int = 24) -> tuple[str, str]:
        """(the version that served it, its text) for a greedy chat answer."""
        assert self.openai is not None
        events = [e async for e in self.openai.serve("chat", self.request(model, max_tokens))]
        assert isinstance(events[0], Body), events[0]
        return events[0].adapter, events[0].json["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def student(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Student]:
    root = tmp_path_factory.mktemp("merged-serving")
    settings = Settings(data_dir=root / "data", student={"dtype": "float32", "max_model_len": 512, "kv_cache_gb": 1,
                                                         "merge_after_s": 3600})  # merges run when a test says
    from services.store.db import Database

    Database(settings.db_url).create_all()
    s = Student(settings, model_dir)
    s.run(s.start())
    a1 = make_random_adapter(model_dir, root / "a1", 1, ["q_proj", "k_proj", "v_proj", "o_proj"], scale=0.15)
    a2 = make_random_adapter(model_dir, root / "a2", 2, ["q_proj", "v_proj", "o_proj"], scale=0.15)
    s.v1, s.v2 = s.registry.publish(a1).name, s.registry.publish(a2).name
    yield s
    s.engine.shutdown()
    pending = asyncio.all_tasks(s.loop)  # the engine's output handler: ended here, not by a closed loop
    for task in pending:
        task.cancel()
    s.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    s.loop.close()


@pytest.fixture(scope="module")
def before(student: Student) -> dict[str, tuple[str, str]]:
    """Each model's answer before anything is merged (the versions through vLLM's LoRA path)."""
    return {m: student.run(student.answer(m)) for m in (student.base_id, student.v1, student.v2)}


def promote(s: Student, name: str) -> None:
    s.registry.promote(name)
    result = s.run(s.engine.adapters.sync())
    assert not isinstance(result, Failed), result


def test_a_settled_promotion_is_merged_and_student_answers_as_the_version_did(student, before) -> None:
    assert len({text for _, text in before.values()}) == 3, "the adapters must change the answers, or this is void"
    promote(student, student.v1)
    assert student.run(student.answer("student")) == before[student.v1]  # instantly, through the LoRA path
    assert student.run(student.engine.adapters.merge_promoted()) is True
    assert student.engine.adapters.merged_name() == student.v1
    resolved = student.run(_resolve(student, "student"))
    assert resolved.adapter == student.v1 and resolved.lora is None  # no LoRA: the weights are the version
    assert student.run(student.answer("student")) == before[student.v1]
    for model in (student.base_id, student.v1, student.v2):
        assert student.run(student.answer(model)) == before[model], model


async def _resolve(s: Student, model: str) -> Any:
    async with s.engine.adapters.pinned(model) as resolved:
        return resolved


async def _stream_across_a_promotion(s: Student) -> tuple[str, bool]:
    """A 48-token stream on `student`; after its first frames, v2 is promoted and its merge started. Returns the
    stream's text and whether the merge was still waiting when the stream ended."""
    assert s.openai is not None
    text, merge = "", None
    async for event in s.openai.serve("chat", s.request("student", 48, stream=True)):
        if isinstance(event, Started):
            assert event.adapter == s.v1
        if isinstance(event, Chunks):
            for frame in event.frames:
                if frame.startswith("data: {"):
                    delta = json.loads(frame[6:])["choices"]
                    text += delta[0]["delta"].get("content") or "" if delta else ""
            if merge is None:
                s.registry.promote(s.v2)
                assert not isinstance(await s.engine.adapters.sync(), Failed)
                merge = asyncio.create_task(s.engine.adapters.merge_promoted())
                await asyncio.sleep(0.5)
    assert merge is not None
    waiting = not merge.done()
    assert await merge is True
    return text, waiting


def test_a_stream_running_across_a_promotion_ends_on_the_weights_it_started_with(student, before) -> None:
    assert student.engine.adapters.merged_name() == student.v1
    long_v1 = student.run(student.answer(student.v1, 48))
    text, waiting = student.run(_stream_across_a_promotion(student))
    assert waiting, "the merge must wait for the running stream"
    assert text == long_v1[1]
    assert student.engine.adapters.merged_name() == student.v2
    assert student.run(student.answer("student")) == before[student.v2]
    assert student.run(student.answer(student.base_id)) == before[student.base_id]
    assert student.run(student.answer(student.v1)) == before[student.v1]


def test_a_rollback_merges_the_previous_version_back(student, before) -> None:
    student.registry.rollback()
    assert not isinstance(student.run(student.engine.adapters.sync()), Failed)
    assert student.run(student.answer("student")) == before[student.v1]
    assert student.run(student.engine.adapters.merge_promoted()) is True
    assert student.engine.adapters.merged_name() == student.v1
    assert student.run(student.answer("student")) == before[student.v1]
    assert student.run(student.answer(student.v2)) == before[student.v2]


def test_no_promoted_version_restores_the_base_weights(student, before) -> None:
    for _ in range(3):
        if student.registry.promoted() is not None:
            student.registry.rollback()
    assert student.registry.promoted() is None
    assert not isinstance(student.run(student.engine.adapters.sync()), Failed)
    assert student.run(student.engine.adapters.merge_promoted()) is True
    assert student.engine.adapters.merged_name() is None
    assert student.run(_resolve(student, student.base_id)).lora is None
    for model in (student.base_id, student.v1, student.v2):
        assert student.run(student.answer(model)) == before[model], model
