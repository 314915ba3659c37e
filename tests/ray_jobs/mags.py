"""Seeded MAGs for the training-loop tests.

`debate_mags` runs the real debate engine over real HTTP: the three built-in reference teachers and, as the
student, a reference agent that errs on most answers (so trees have rejected children, critiques and
self-reflections). `poisoned_mags` writes debates whose "gold" is a wrong constant, as a stream of bad client
labels would: a student trained on them gets worse, which is what the gate must catch.
"""

from __future__ import annotations

import asyncio

from services.config import DebateConfig, ReferenceProfile, TeacherConfig
from services.debate.agents import OpenAIAgent
from services.debate.engine import DebateEngine, DebateInput
from services.store.debates import utcnow
from services.store.mags import MagStore, Node
from services.tasks.arithmetic import generate
from services.teachers.server import build_teacher_app
from tests.http_servers import serve_app

STUDENT = TeacherConfig(name="student-sim", reference=ReferenceProfile(
    error_rate=0.7, error_styles=["wrong_operation", "off_by_one", "dropped_step"], seed=9))


def one_step(split: str, n: int, seed: int = 0) -> list:
    """`n` suite problems with a single operation: what a few CPU training steps can teach the 135M student."""
    return [p for p in generate(split, 8 * n, seed) if p.steps == 1][:n]


def debate_mags(store: MagStore, n: int, seed: int = 0, *, reflection: bool = True, simple: bool = False
                ) -> list[int]:
    cfg = DebateConfig(reflection=reflection, max_rounds=3)
    with serve_app(build_teacher_app([*cfg.teachers, STUDENT])) as url:
        student = OpenAIAgent(STUDENT.model_copy(update={"base_url": f"{url}/student-sim/v1"}), role="student",
                              max_tokens=256)
        teachers = [OpenAIAgent(t.model_copy(update={"base_url": f"{url}/{t.name}/v1"}), role="teacher",
                                max_tokens=256) for t in cfg.teachers]
        engine = DebateEngine(student, teachers, cfg, store)

        async def run() -> list[int]:
            out = []
            for p in one_step("train", n, seed) if simple else generate("train", n, seed):
                res = await engine.run(DebateInput(p.question, p.answer, "dataset", source="test"))
                out.append(res.debate_id)
            return out

        return asyncio.run(run())


def poisoned_mags(store: MagStore, n: int, seed: int = 1, answer: str = "7") -> list[int]:
    ids = []
    for p in generate("train", n, seed):
        did = store.start_debate(source="test-poison", question=p.question, answer_kind="number", gold=answer,
                                 gold_source="feedback", prompt_version="test", agents=[], status="running")
        text = f"### Answer\nThe answer is always {answer}.\nFinal answer: {answer}"
        store.add_nodes(did, [
            Node(0, "teacher-a", "teacher", "answer", text, "ok", answer=answer, correct=True, accepted=True),
            Node(0, "student", "student", "answer", f"### Answer\nWe get {p.answer}.\nFinal answer: {p.answer}",
                 "ok", answer=p.answer, correct=False),
        ])
        store.update_debate(did, status="done", outcome="unsolved", rounds=1, usable=True, finished_at=utcnow())
        ids.append(did)
    return ids
