"""The durable capture queue and client labels on a real SQLite file."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from services.store.debates import CaptureRow, utcnow
from services.store.mags import MagStore


def item(rid: str, question: str = "What is 2 + 3?") -> dict:
    return {"request_id": rid, "response_id": f"chatcmpl-{rid}", "question": question,
            "messages": [{"role": "user", "content": question}]}


def expire_leases(store: MagStore) -> None:
    with store.db.session() as s:
        s.execute(update(CaptureRow).values(lease_until=utcnow() - timedelta(seconds=1)))


def test_enqueue_is_idempotent_and_claims_are_exclusive(store):
    assert store.enqueue([item("r1"), item("r2"), item("r1")]) == 2
    assert store.enqueue([item("r2")]) == 0
    a = store.claim("worker-a", 1, 60)
    b = store.claim("worker-b", 5, 60)
    assert [i.request_id for i in a] == ["r1"] and [i.request_id for i in b] == ["r2"]
    assert store.claim("worker-c", 5, 60) == []
    assert store.queue_counts() == {"running": 2}


def test_a_dead_workers_items_are_requeued_and_its_debate_marked_interrupted(store):
    store.enqueue([item("r1")])
    [claimed] = store.claim("dead", 1, 60)
    did = store.start_debate(capture_id=claimed.id, question=claimed.question, answer_kind="number",
                             prompt_version="v", agents=[], status="running")
    store.attach_debate(claimed.id, did)
    assert store.reclaim_expired(max_attempts=3) == (0, 0)  # lease still valid: nothing happens
    expire_leases(store)
    assert store.reclaim_expired(max_attempts=3) == (1, 0)
    assert store.get(did).status == "interrupted" and not store.get(did).usable
    [again] = store.claim("alive", 1, 60)
    assert again.request_id == "r1" and again.attempts == 2
    expire_leases(store)
    assert store.reclaim_expired(max_attempts=2) == (0, 1)  # out of attempts: failed, with the reason
    assert store.queue_counts() == {"failed": 1}


def test_a_label_posted_before_the_request_is_queued_is_used(store):
    assert store.add_label("r9", "5") == ("pending", "r9")
    store.enqueue([item("r9")])
    [claimed] = store.claim("w", 1, 60)
    assert (claimed.label, claimed.label_source) == ("5", "feedback")


def test_a_label_after_the_debate_confirms_or_requeues_it(store):
    store.enqueue([item("r1"), item("r2")])
    for it in store.claim("w", 2, 60):
        did = store.start_debate(capture_id=it.id, question=it.question, answer_kind="number", gold="5",
                                 gold_source="consensus", prompt_version="v", agents=[], status="done", usable=True)
        store.attach_debate(it.id, did)
        assert store.finish_item(it.id, ok=True, error=None, max_attempts=3) == "done"
    assert store.add_label("chatcmpl-r1", "5.0") == ("confirmed", "r1")  # by completion id; 5.0 == 5
    assert store.add_label("r2", "6") == ("requeued", "r2")
    superseded = [m for m in store.list() if m.status == "superseded"]
    assert len(superseded) == 1 and not superseded[0].usable
    assert store.stats()["overruled"] == 1  # a client label overruled the teachers' consensus
    [again] = store.claim("w", 5, 60)
    assert (again.request_id, again.label) == ("r2", "6")
    assert [m.gold_source for m in store.list() if m.status == "done"] == ["feedback"]


def test_failed_debates_are_retried_until_max_attempts(store):
    store.enqueue([item("r1")])
    [it] = store.claim("w", 1, 60)
    assert store.finish_item(it.id, ok=False, error="student down", max_attempts=2) == "queued"
    [it] = store.claim("w", 1, 60)
    assert store.finish_item(it.id, ok=False, error="student down", max_attempts=2) == "failed"
