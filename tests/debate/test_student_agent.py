"""The student as a debate agent (`ServeStudentAgent`) when a prompt does not fit its context.

The agent tokenizes with the base model's real tokenizer and calls a real `StudentEngine` through an in-process
stand-in for its Ray Serve handle; only vLLM's token source is replaced (by one that records what it was asked
for and writes `max_tokens` tokens), as in tests/student/test_preemption.py. The teachers are real HTTP servers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.config import Settings
from services.debate.engine import DebateEngine, DebateInput
from services.debate.student_agent import ServeStudentAgent
from services.debate.worker import DebateWorker
from services.registry import AdapterRegistry
from services.student.engine import StudentEngine
from services.student.tokenizer import PromptTokenizer
from services.tasks.arithmetic import generate
from tests.debate.conftest import debate_config, reference_agents

CONTEXT = 512
PROBLEM = generate("eval", 1)[0]
# A question that alone overflows the context (a pasted document, say): no trimming of the debate can fit it.
LONG_QUESTION = "Some background first. " * 300 + PROBLEM.question


class TokenSource:
    """vLLM's AsyncLLM as the student engine drives it: writes `max_tokens` tokens at once, recording each ask."""

    def __init__(self) -> None:
        self.model_config = SimpleNamespace(max_model_len=CONTEXT, get_diff_sampling_param=lambda: {})
        self.asked: list[tuple[int, int]] = []  # (prompt tokens, max_tokens)

    async def generate(self, prompt: Any, params: Any, request_id: str, lora_request: Any = None
                       ) -> AsyncIterator[Any]:
        self.asked.append((len(prompt["prompt_token_ids"]), params.max_tokens))
        out = SimpleNamespace(index=0, text=" 7" * params.max_tokens, token_ids=[1] * params.max_tokens,
                              finish_reason="length")
        yield SimpleNamespace(outputs=[out])


class _Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class EngineHandle:
    """The Student deployment's handle as `ServeStudentAgent` uses it, calling the engine in this process."""

    def __init__(self, engine: StudentEngine) -> None:
        self.generate = _Method(engine.generate)
        self.serving_load = _Method(self._load)
        self._engine = engine

    async def _load(self) -> tuple[int, float]:
        return self._engine.serving_load()

    def options(self, **_: Any) -> EngineHandle:
        return self


@pytest.fixture(scope="module")
def tokenizer(model_dir: str) -> PromptTokenizer:
    return PromptTokenizer(model_dir)


@pytest.fixture
def student(tmp_path: Path, model_dir: str, tokenizer: PromptTokenizer) -> tuple[ServeStudentAgent, TokenSource]:
    settings = Settings(data_dir=tmp_path)
    registry = AdapterRegistry.from_settings(settings, base_id="base", model_path=model_dir)
    source = TokenSource()
    engine = StudentEngine(settings, model_path=model_dir, base_id="base", registry=registry,
                           engine_factory=lambda _args: source)
    engine.engine, engine.max_model_len = source, CONTEXT
    agent = ServeStudentAgent(EngineHandle(engine), tokenizer, model="base", samples=1, temperature=0.3,
                              max_tokens=256, max_model_len=CONTEXT)
    return agent, source


def chat_tokens(tokenizer: PromptTokenizer, prompt: str) -> int:
    return len(tokenizer.chat([{"role": "user", "content": prompt}]))


async def test_a_prompt_longer_than_the_context_is_refused_before_the_engine(student, tokenizer):
    agent, source = student
    prompt = "word " * 2000
    reply = await agent.ask(prompt, "answer")
    assert reply.text is None and reply.error == "context_length_exceeded"
    assert reply.prompt_tokens == chat_tokens(tokenizer, prompt) > CONTEXT
    assert source.asked == []  # nothing reached the engine


async def test_a_prompt_that_leaves_little_room_gets_exactly_the_room_left(student, tokenizer):
    agent, source = student
    prompt = "word " * 400  # fits, but leaves less than max_tokens (256) for the reply
    n = chat_tokens(tokenizer, prompt)
    assert CONTEXT - 256 < n <= CONTEXT - 16
    reply = await agent.ask(prompt, "answer")
    assert reply.error is None and source.asked == [(n, CONTEXT - n)]
    assert reply.prompt_tokens + reply.completion_tokens == CONTEXT and reply.finish_reason == "length"


async def test_a_question_longer_than_the_context_fails_its_debate_with_the_reason(store, reference_url, student):
    agent, source = student
    engine = DebateEngine(agent, reference_agents(reference_url), debate_config(), store)
    result = await engine.run(DebateInput(LONG_QUESTION, PROBLEM.answer, "dataset"))
    assert result.outcome == "failed" and result.error == "student: context_length_exceeded"
    assert not result.usable and result.rounds == 1
    mag = store.get(result.debate_id)
    assert mag.status == "failed" and mag.note == "student: context_length_exceeded"
    (own,) = [n for n in mag.nodes if n.agent == "student"]
    assert own.status == "error" and own.error == "context_length_exceeded" and source.asked == []


async def test_the_worker_closes_an_item_whose_question_never_fits_as_failed(store, reference_url, student):
    agent, source = student
    store.enqueue([{"request_id": "long", "question": LONG_QUESTION, "messages": []}])
    cfg = debate_config()
    worker = DebateWorker(DebateEngine(agent, reference_agents(reference_url), cfg, store), store, cfg, owner="w")
    await worker.drain()
    assert store.queue_counts() == {"failed": 1}
    # Closed after one attempt: another would fail the same way and spend the teachers' round-0 answers again.
    assert cfg.max_attempts > 1
    debates = store.list(status="failed")
    assert len(debates) == 1 and {m.note for m in debates} == {"student: context_length_exceeded"}
    assert source.asked == []
