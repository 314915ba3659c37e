"""Held-out evaluation through the serving path, per task: accuracy (the task's answer reader, in the app's
format) and tokens per query.

Every task is measured on its own slice: its held-out captured requests that carry a gold (a stable split by
request id, never trained on), sent exactly as the client sent them (system prompt, format instruction), plus
the operator's golden set when the profile names one (`builtin:arithmetic`: the embedded demo's suite). The
results combine into one traffic-weighted score (each task weighted by its share of captured traffic), which the
gate compares, while each task keeps its own figure, which the gate protects. Requests go to the model name
under test (`student@vN` for a candidate, the promoted version or the base model for the incumbent), greedy by
default, so two versions differ by their weights and not by sampling luck.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.config import EvalSettings, Settings, TaskProfile
from services.service_client import ServiceClient
from services.store.mags import MagStore
from services.tasks.answers import AnswerSpec, gsm8k_gold, read_for_eval, same_answer
from services.tasks.arithmetic import generate


@dataclass(frozen=True)
class EvalItem:
    question: str
    answer: str
    messages: list[dict[str, Any]] | None = field(default=None, hash=False)  # the request as the client sent it


@dataclass
class TaskSlice:
    task: TaskProfile
    eval_set: str  # fingerprint: task, source sizes and a digest of the items
    items: list[EvalItem]
    weight: float  # the task's share of captured traffic


@dataclass
class EvalResult:
    model: str
    served_by: str | None  # the adapter the gateway reported (x-distillery-adapter)
    eval_set: str
    n: int
    correct: int
    accuracy: float
    mean_completion_tokens: float
    mean_total_tokens: float
    no_answer: int
    seconds: float
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task: its own result and weight

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def golden_items(task: TaskProfile) -> list[EvalItem]:
    """The operator's golden set of a task: `builtin:arithmetic` or a JSONL file (`messages` or `question`, and
    `answer`; GSM8K's `#### X` answers read as X)."""
    ev = task.eval
    if ev.golden is None:
        return []
    if ev.golden == "builtin:arithmetic":
        return [EvalItem(p.question, p.answer) for p in generate("eval", ev.golden_n, ev.golden_seed)]
    items = []
    with Path(ev.golden).open() as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            answer = str(row["answer"])
            messages = row.get("messages")
            question = str(row.get("question") or next(m["content"] for m in reversed(messages)
                                                         if m.get("role") == "user"))
            items.append(EvalItem(question, gsm8k_gold(answer) if "####" in answer else answer, messages))
            if len(items) == ev.golden_n:
                break
    return items


def load_slices(settings: Settings, store: MagStore | None) -> list[TaskSlice]:
    """Every task's evaluation slice (tasks with nothing to measure are left out), weighted by traffic."""
    counts = store.task_counts() if store is not None else {}
    slices = []
    for task in settings.tasks:
        held = store.eval_slice(task.name, task.eval.max_items) if store is not None else []
        traffic = [EvalItem(_last_user(msgs), gold, msgs) for _, msgs, gold in held]
        items = traffic + golden_items(task)
        if not items:
            continue
        digest = hashlib.sha256("\n".join(f"{i.question}\t{i.answer}" for i in items).encode()).hexdigest()[:12]
        rate = task.sample_rate if task.sample_rate is not None else settings.capture.sample_rate
        slices.append(TaskSlice(task, f"{task.name}:{len(traffic)}+{len(items) - len(traffic)}:{digest}", items,
                                counts.get(task.name, 0) / rate if rate > 0 else 0.0))  # captured -> served
    if slices and not any(s.weight for s in slices):  # no captured traffic yet (golden sets only): equal weights
        for s in slices:
            s.weight = 1.0
    return slices


def _last_user(messages: list[dict[str, Any]]) -> str:
    return next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")


async def evaluate(client: ServiceClient, model: str, items: list[EvalItem], cfg: EvalSettings, eval_set: str,
                   spec: AnswerSpec | str = "number", progress: Callable[[int, int], None] | None = None
                   ) -> EvalResult:
    """One model on one slice: each reply read as the task's app reads it (`read_for_eval`)."""
    sem = asyncio.Semaphore(cfg.concurrency)
    done = 0
    t0 = time.monotonic()

    async def one(http: httpx.AsyncClient, item: EvalItem) -> tuple[bool, bool, int, int, str | None]:
        nonlocal done
        async with sem:
            out = await client.chat(http, model, item.question, max_tokens=cfg.max_tokens,
                                    temperature=cfg.temperature, messages=item.messages)
        got = read_for_eval(out["choices"][0]["message"]["content"], spec)  # type: ignore[arg-type]
        done += 1
        if progress is not None:
            progress(done, len(items))
        usage = out["usage"]
        return (same_answer(got, item.answer, spec), got is None, usage["completion_tokens"],  # type: ignore[arg-type]
                usage["total_tokens"], out.get("adapter"))

    async with httpx.AsyncClient(timeout=client.timeout) as http:
        rows = await asyncio.gather(*(one(http, it) for it in items))
    n = len(rows)
    correct = sum(r[0] for r in rows)
    return EvalResult(
        model=model, served_by=rows[0][4] if rows else None, eval_set=eval_set, n=n, correct=correct,
        accuracy=correct / n if n else 0.0,
        mean_completion_tokens=sum(r[2] for r in rows) / n if n else 0.0,
        mean_total_tokens=sum(r[3] for r in rows) / n if n else 0.0,
        no_answer=sum(r[1] for r in rows), seconds=round(time.monotonic() - t0, 1),
    )


def combine(model: str, per_task: dict[str, EvalResult], weights: dict[str, float]) -> EvalResult:
    """The traffic-weighted result of one model over every task's slice, each task's own result kept in `tasks`."""
    total = sum(weights[t] for t in per_task) or 1.0

    def mean(attr: str) -> float:
        return sum(weights[t] * getattr(r, attr) for t, r in per_task.items()) / total

    first = next(iter(per_task.values()), None)
    return EvalResult(
        model=model, served_by=first.served_by if first else None,
        eval_set="|".join(r.eval_set for r in per_task.values()), n=sum(r.n for r in per_task.values()),
        correct=sum(r.correct for r in per_task.values()), accuracy=mean("accuracy"),
        mean_completion_tokens=mean("mean_completion_tokens"), mean_total_tokens=mean("mean_total_tokens"),
        no_answer=sum(r.no_answer for r in per_task.values()), seconds=sum(r.seconds for r in per_task.values()),
        tasks={t: {**r.as_dict(), "weight": weights[t] / total} for t, r in per_task.items()},
    )
