"""`distillery teachers check`: is every configured teacher usable in a debate?

Each teacher gets the real debate answer prompt for one fixed question ("What is 17 + 25?", gold 42) and one real
peer-review prompt, all teachers at once, through the same `OpenAIAgent` the debates use (same request options,
`max_tokens`, retries). A row per teacher says whether it was reached, which model answered, how long it took,
whether its final answer and its review score could be read (and why not), and what the two calls cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.config import Settings
from services.debate import prompts
from services.debate.agents import Agent, OpenAIAgent, Reply, build_teacher
from services.tasks.answers import read_answer, read_score, same_answer
from services.teachers.token import teachers_token

QUESTION = "What is 17 + 25?"
GOLD = "42"
SOLUTION = "### Answer\n17 + 25 = 42, adding the tens (10 + 20 = 30) and the units (7 + 5 = 12).\nFinal answer: 42"
HEADER = ["TEACHER", "REACHABLE", "MODEL", "LATENCY", "ANSWER", "SCORE", "TOKENS", "COST USD"]


@dataclass
class CheckRow:
    teacher: str
    reachable: str  # "yes", or the first error of its two calls
    model: str | None = None  # as the endpoint reported it
    latency_s: float = 0.0  # of the answer call
    answer_status: str = "error"  # ok | unparsed | abstained | truncated | error
    answer: str | None = None
    correct: bool | None = None
    score: float | None = None
    score_note: str = ""  # why no score was read
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def passed(self) -> bool:
        """Its answer and its score were both read: it can take part in debates and peer review."""
        return self.answer_status == "ok" and self.score is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _row(agent: Agent, answer: Reply, review: Reply) -> CheckRow:
    error = answer.error or review.error
    row = CheckRow(agent.name, error or "yes", answer.model or review.model,
                   round(answer.latency_s, 3), prompt_tokens=answer.prompt_tokens + review.prompt_tokens,
                   completion_tokens=answer.completion_tokens + review.completion_tokens,
                   cost_usd=answer.cost_usd + review.cost_usd)
    if answer.error is None:
        reading = read_answer(answer.text, "number", finish_reason=answer.finish_reason)
        row.answer_status, row.answer = reading.status, reading.answer
        row.correct = same_answer(reading.answer, GOLD, "number") if reading.status == "ok" else None
    if review.error is not None:
        row.score_note = review.error
    else:
        row.score = read_score(review.text)
        row.score_note = "" if row.score is not None else "no score from 1 to 5 in the reply"
    return row


async def check_agent(agent: Agent) -> CheckRow:
    answer, review = await asyncio.gather(agent.ask(prompts.answer_prompt(QUESTION, "number"), "answer"),
                                          agent.ask(prompts.review_prompt(QUESTION, SOLUTION, None), "review"))
    return _row(agent, answer, review)


async def check_teachers(agents: Sequence[Agent]) -> list[CheckRow]:
    """One row per agent, in order; every agent is asked at once."""
    return list(await asyncio.gather(*(check_agent(a) for a in agents)))


async def check_configured(settings: Settings, teachers_url: str) -> list[CheckRow]:
    """Every teacher of `settings.debate`; one that cannot even be built (an unset variable) is a failed row."""
    agents: list[OpenAIAgent] = []
    unbuilt: dict[str, CheckRow] = {}
    for t in settings.debate.teachers:
        try:
            agents.append(build_teacher(t, settings.debate, teachers_url, teachers_token(settings)))
        except ValueError as e:
            unbuilt[t.name] = CheckRow(t.name, f"not configured: {e}", score_note="not asked")
    try:
        checked = {r.teacher: r for r in await check_teachers(agents)}
    finally:
        await asyncio.gather(*(a.aclose() for a in agents))
    return [checked.get(t.name) or unbuilt[t.name] for t in settings.debate.teachers]


def table_row(r: CheckRow) -> list[str]:
    answer = r.answer_status
    if r.answer_status == "ok":
        answer = f"ok {r.answer} ({'correct' if r.correct else f'wrong, expected {GOLD}'})"
    note = "the call failed" if r.score_note == r.reachable else r.score_note
    score = f"{r.score:g}" if r.score is not None else f"not read: {note}"
    return [r.teacher, r.reachable, r.model or "-", f"{r.latency_s:.2f}s", answer, score,
            f"{r.prompt_tokens}+{r.completion_tokens}", f"{r.cost_usd:.6f}"]
