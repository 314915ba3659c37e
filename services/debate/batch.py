"""Batch mode: debates over a labelled JSONL file (`question`, `answer`), for a quick, measurable run.

The student is reached through the running service's OpenAI API (with the opt-out header, so these calls are
not captured again), the teachers as configured (the built-in ones on the service's /teachers). Every debate
is recorded in the store like a traffic debate, with source `batch:<file name>`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.capture.policy import OPT_OUT_HEADER
from services.config import Settings, TeacherConfig
from services.debate.agents import OpenAIAgent, build_teachers
from services.debate.budget import BlockBudget
from services.debate.engine import DebateEngine, DebateInput, DebateResult
from services.store.db import Database
from services.store.debates import utcnow
from services.store.mags import MagStore
from services.student.model_prep import resolve_base_model
from services.student.tokenizer import PromptTokenizer
from services.tasks.answers import gsm8k_gold
from services.teachers.token import teachers_token


def load_dataset(path: Path, limit: int | None) -> list[tuple[str, str]]:
    items = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, answer = str(row["question"]), str(row["answer"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with `question` and `answer` ({e})") from e
            items.append((question, gsm8k_gold(answer) if "####" in answer else answer.strip()))
            if limit is not None and len(items) >= limit:
                break
    return items


@dataclass
class BatchSummary:
    debates: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    solved_at_round: Counter[int] = field(default_factory=Counter)
    student_first: int = 0
    student_last: int = 0
    usable: int = 0
    accepted: int = 0
    reviewed: int = 0
    teacher_tokens: Counter[str] = field(default_factory=Counter)
    cost_usd: float = 0.0
    seconds: float = 0.0
    debate_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "outcomes": dict(self.outcomes),
                "solved_at_round": {str(k): v for k, v in sorted(self.solved_at_round.items())},
                "teacher_tokens": dict(self.teacher_tokens)}

    def render(self) -> str:
        n = max(1, self.debates)
        rounds = ", ".join(f"round {r}: {c}" for r, c in sorted(self.solved_at_round.items())) or "none"
        lines = [
            f"debates: {self.debates} in {self.seconds:.0f}s   outcomes: {dict(self.outcomes)}",
            f"solved per round: {rounds}",
            f"student accuracy: round 0 {self.student_first / n:.1%} -> last round {self.student_last / n:.1%}",
            f"peer review: {self.accepted}/{self.reviewed} rationales accepted "
            f"({(self.accepted / self.reviewed if self.reviewed else 0):.1%})",
            f"usable for training: {self.usable}",
            "teacher tokens: " + ", ".join(f"{k} {v}" for k, v in sorted(self.teacher_tokens.items())),
            f"estimated teacher cost: ${self.cost_usd:.4f}",
        ]
        return "\n".join(lines)


def build_engine(settings: Settings, url: str, store: MagStore, concurrency: int = 1) -> DebateEngine:
    cfg = settings.debate
    # Every running debate may have a student turn in flight at once: the engine batches them.
    student_cfg = TeacherConfig(name="student", base_url=f"{url}/v1", model=settings.student.served_name,
                                temperature=cfg.student_temperature,
                                max_concurrency=max(cfg.concurrency, concurrency) * 2,
                                timeout_s=600)
    student = OpenAIAgent(student_cfg, role="student", max_tokens=cfg.max_tokens, samples=cfg.student_samples,
                          headers={OPT_OUT_HEADER: "1"})
    # Blocks are cut with the student's own tokenizer, as in the service (the trees must fit the student).
    tokenizer = PromptTokenizer(resolve_base_model(settings, lambda _msg: None)).tok
    teachers = build_teachers(cfg, f"{url}/teachers", teachers_token(settings))
    return DebateEngine(student, teachers, cfg, store, budget=BlockBudget(tokenizer))


async def run_batch(settings: Settings, dataset: Path, url: str, limit: int | None, concurrency: int,
                    progress: Any = None) -> BatchSummary:
    items = load_dataset(dataset, limit)
    db = Database(settings.db_url)
    db.create_all()
    store = MagStore(db)
    engine = build_engine(settings, url, store, concurrency)
    summary = BatchSummary()
    sem = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()

    async def one(question: str, gold: str) -> DebateResult:
        async with sem:
            return await engine.run(DebateInput(question, gold, "dataset", source=f"batch:{dataset.name}"))

    started = utcnow()
    try:
        for fut in asyncio.as_completed([one(q, a) for q, a in items]):
            res = await fut
            _add(summary, res, store)
            if progress is not None:
                progress(summary)
    finally:  # interrupted (Ctrl-C, an error): what was recorded stays, marked so no one trains on it
        store.interrupt_running(f"batch:{dataset.name}", started, "batch run stopped before this debate ended")
    summary.seconds = time.monotonic() - t0
    return summary


def _add(s: BatchSummary, res: DebateResult, store: MagStore) -> None:
    s.debates += 1
    s.debate_ids.append(res.debate_id)
    s.outcomes[res.outcome] += 1
    if res.stop_round is not None:
        s.solved_at_round[res.stop_round] += 1
    s.student_first += bool(res.student_correct_first)
    s.student_last += bool(res.student_correct_last)
    s.usable += res.usable
    mag = store.get(res.debate_id)
    if mag is not None:
        s.accepted += mag.accepted_rationales
        s.reviewed += mag.reviewed_rationales
        s.cost_usd += mag.cost_usd
        for n in mag.nodes:
            if n.role == "teacher":
                s.teacher_tokens[n.agent] += n.prompt_tokens + n.completion_tokens
