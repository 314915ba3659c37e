"""The default hourly teacher budget: once the last hour's debates spent it (tokens or dollars, read from the
store), the worker starts no new debate; queued items wait, nothing is lost; spend older than an hour is free."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from services.config import DebateConfig
from services.debate.spend import TeacherBudget
from services.debate.worker import DebateWorker
from services.store.debates import DebateRow, utcnow
from services.store.mags import MagStore, Node
from tests.debate.conftest import debate_config, run_briefly


def spend(store: MagStore, tokens: int, usd: float) -> int:
    did = store.start_debate(question="q", answer_kind="number", prompt_version="v", agents=[])
    store.add_nodes(did, [Node(0, "t1", "teacher", "answer", "x", "ok", prompt_tokens=tokens // 2,
                               completion_tokens=tokens - tokens // 2, cost_usd=usd),
                          Node(0, "s", "student", "answer", "x", "ok", prompt_tokens=10**9)])  # not a teacher
    return did


def test_the_defaults_are_a_budget_not_unlimited() -> None:
    cfg = DebateConfig(enabled=False)
    assert cfg.teacher_tokens_per_hour == 2_000_000 and cfg.teacher_usd_per_hour == 5.0


def test_tokens_or_dollars_spent_in_the_last_hour_close_the_budget(store: MagStore) -> None:
    assert TeacherBudget(store, 1000, 1.0, refresh_s=0).allows()
    did = spend(store, 999, 0.5)
    assert TeacherBudget(store, 1000, 1.0, refresh_s=0).allows()
    spend(store, 1, 0.0)
    assert not TeacherBudget(store, 1000, 1.0, refresh_s=0).allows()  # 1000 tokens
    assert not TeacherBudget(store, 10**6, 0.5, refresh_s=0).allows()  # $0.50
    with store.db.session() as s:  # an hour later the spend no longer counts
        s.execute(update(DebateRow).values(created_at=utcnow() - timedelta(hours=1, minutes=1)))
    assert TeacherBudget(store, 1000, 1.0, refresh_s=0).allows()
    assert store.get(did) is not None


async def test_a_spent_budget_pauses_the_worker_and_keeps_the_queue(store: MagStore) -> None:
    spend(store, 5000, 0.0)
    store.enqueue([{"request_id": "r0", "question": "What is 2 + 3?", "messages": []}])
    worker = DebateWorker(None, store, debate_config(poll_s=0.05, teacher_tokens_per_hour=5000),  # type: ignore[arg-type]
                          owner="w1")
    await run_briefly(worker)
    assert store.queue_counts() == {"queued": 1} and not worker.running
