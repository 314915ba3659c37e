"""Held-out evaluation through the serving path: accuracy (exact match by the answer parser) and tokens per query.

Each question is sent as a plain user message, exactly as traffic arrives, to the model name under test
(`student@vN` for a candidate, the promoted version or the base model for the incumbent). Greedy by default,
so two versions differ by their weights and not by sampling luck.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from services.config import EvalSettings
from services.gateway.client import ServiceClient
from services.tasks.answers import answer_type_of, gsm8k_gold, read_for_eval, same_answer
from services.tasks.arithmetic import generate


@dataclass(frozen=True)
class EvalItem:
    question: str
    answer: str


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_eval_set(cfg: EvalSettings) -> tuple[str, list[EvalItem]]:
    """(fingerprint, items). The built-in set is the task suite's eval split, which training never sees."""
    if cfg.dataset == "builtin:arithmetic":
        items = [EvalItem(p.question, p.answer) for p in generate("eval", cfg.n, cfg.seed)]
    else:
        items = []
        with Path(cfg.dataset).open() as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    answer = str(row["answer"])
                    items.append(EvalItem(str(row["question"]), gsm8k_gold(answer) if "####" in answer else answer))
                    if len(items) == cfg.n:
                        break
    digest = hashlib.sha256("\n".join(f"{i.question}\t{i.answer}" for i in items).encode()).hexdigest()[:12]
    return f"{cfg.dataset}:{len(items)}:{digest}", items


async def evaluate(client: ServiceClient, model: str, items: list[EvalItem], cfg: EvalSettings, eval_set: str,
                   progress: Callable[[int, int], None] | None = None) -> EvalResult:
    sem = asyncio.Semaphore(cfg.concurrency)
    done = 0
    t0 = time.monotonic()

    async def one(http: httpx.AsyncClient, item: EvalItem) -> tuple[bool, bool, int, int, str | None]:
        nonlocal done
        async with sem:
            out = await client.chat(http, model, item.question, max_tokens=cfg.max_tokens,
                                    temperature=cfg.temperature)
        answer_type = answer_type_of(item.answer)
        got = read_for_eval(out["choices"][0]["message"]["content"], answer_type)
        done += 1
        if progress is not None:
            progress(done, len(items))
        usage = out["usage"]
        return (same_answer(got, item.answer, answer_type), got is None, usage["completion_tokens"],
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
