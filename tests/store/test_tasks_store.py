"""Task profiles in the store: a store older than the previous release gains the new columns, each task's held-out
slice with its gold, traffic counts per task, held-out debates kept out of training lists (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, text, update

from services.store.db import Database
from services.store.debates import CaptureRow, utcnow
from services.store.mags import MagStore
from tests.store.release_store import load_release_store

NEW_COLUMNS = {"capture_queue": {"task", "held_out"}, "debates": {"task", "held_out"}}


def columns(db: Database, table: str) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns(table)}


def messages(rid: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer with the intent label only."},
            {"role": "user", "content": f"message {rid}"}]


def capture(store: MagStore, rid: str, *, task: str | None = "intent", held_out: bool | None = True,
            label: str | None = None, source: str = "traffic") -> int:
    row: dict[str, Any] = {"request_id": rid, "response_id": f"chatcmpl-{rid}", "source": source,
                           "question": f"message {rid}", "messages": messages(rid), "task": task,
                           "held_out": held_out}
    if label is not None:
        row.update(label=label, label_source="feedback")
    store.enqueue([row])
    with store.db.session() as s:
        return s.query(CaptureRow.id).filter(CaptureRow.request_id == rid).scalar()


def debate(store: MagStore, capture_id: int | None, *, gold: str | None, status: str = "done",
           task: str | None = "intent", held_out: bool | None = True, usable: bool = True) -> int:
    did = store.start_debate(capture_id=capture_id, source="traffic", question="q", answer_kind="label", gold=gold,
                             gold_source="consensus" if gold else "none", prompt_version="v", agents=[],
                             status=status, usable=usable and gold is not None, task=task, held_out=held_out,
                             outcome="solved" if gold else "no_gold", finished_at=utcnow())
    if capture_id is not None:
        store.attach_debate(capture_id, did)
    return did


def test_an_older_store_gains_the_task_columns_and_its_rows_read_as_default(db_url: str) -> None:
    load_release_store(db_url)  # release df9b829's store, with real debates: no alembic_version
    old = Database(db_url)
    with old.engine.begin() as conn:  # the schema of a release before task profiles
        for table, cols in NEW_COLUMNS.items():
            for col in cols:
                conn.execute(text(f'ALTER TABLE {table} DROP COLUMN "{col}"'))
    for table, cols in NEW_COLUMNS.items():
        assert not cols & columns(old, table)

    upgraded = Database(db_url)  # this release starting on that store
    upgraded.create_all()
    for table, cols in NEW_COLUMNS.items():
        assert cols <= columns(upgraded, table)
    store = MagStore(upgraded)
    assert store.task_of("chatcmpl-0") == "default" and store.task_of("chatcmpl-queued") == "default"
    assert store.task_counts() == {"default": 5}  # traffic only: the dataset item is not counted
    mag = store.get(1)
    assert mag is not None and mag.task is None and mag.held_out is None and mag.gold_source == "feedback"
    assert [m.id for m in store.list(task="default", newest_first=False)] == [1, 2, 3, 4, 5]
    assert len(store.list(held_out=False)) == 5  # NULL: not held out, so trained on
    assert store.list(held_out=True) == [] and store.eval_slice("default", 10) == []
    with upgraded.session() as s:  # NULL task still counts as default in the slice
        s.execute(update(CaptureRow).where(CaptureRow.request_id == "chatcmpl-0").values(held_out=True))
    [(rid, _, gold)] = store.eval_slice("default", 10)
    assert rid == "chatcmpl-0" and gold == mag.gold
    # New rows get the new columns; a second start adds nothing and loses nothing.
    capture(store, "new-1", task="intent", held_out=False)
    Database(db_url).create_all()
    assert store.task_counts() == {"default": 5, "intent": 1}
    claimed = {i.request_id: (i.task, i.held_out) for i in store.claim("w", 5, 60)}
    assert claimed == {"chatcmpl-queued": ("default", False), "new-1": ("intent", False)}


def test_eval_slice_is_the_tasks_held_out_traffic_with_a_gold(store: MagStore) -> None:
    both = capture(store, "held-label", label="card_arrival")
    debate(store, both, gold="card_linking")  # the client's label wins over the teachers' consensus
    consensus = capture(store, "held-consensus")
    debate(store, consensus, gold="card_linking")
    capture(store, "held-label-only", label="exchange_rate")  # not debated yet: the label is the gold
    no_gold = capture(store, "held-no-gold")
    debate(store, no_gold, gold=None)
    superseded = capture(store, "held-superseded")
    debate(store, superseded, gold="card_linking", status="superseded")
    capture(store, "held-pending")  # no debate, no label
    trained = capture(store, "trained", held_out=False, label="card_arrival")
    debate(store, trained, gold="card_arrival", held_out=False)
    other = capture(store, "other-task", task="math", label="4")
    debate(store, other, gold="4", task="math")
    capture(store, "batch", source="batch", label="card_arrival")

    got = store.eval_slice("intent", 50)
    assert got == [  # newest first
        ("held-label-only", messages("held-label-only"), "exchange_rate"),
        ("held-consensus", messages("held-consensus"), "card_linking"),
        ("held-label", messages("held-label"), "card_arrival"),
    ]
    assert store.eval_slice("intent", 2) == got[:2]
    assert store.eval_slice("math", 50) == [("other-task", messages("other-task"), "4")]
    assert store.eval_slice("default", 50) == [] and store.eval_slice("nope", 50) == []


def test_task_counts_and_task_of(store: MagStore) -> None:
    for i in range(3):
        capture(store, f"i{i}", task="intent", held_out=i == 0)
    capture(store, "m0", task="math")
    capture(store, "d0", task="default")
    capture(store, "b0", task="intent", source="batch")  # a dataset's items are no traffic
    assert store.task_counts() == {"intent": 3, "math": 1, "default": 1}
    assert store.task_counts(since=utcnow()) == {}
    assert store.task_of("i1") == "intent" and store.task_of("chatcmpl-m0") == "math"
    assert store.task_of("never-captured") is None


def test_list_filters_by_holdout_and_task(store: MagStore) -> None:
    held = debate(store, capture(store, "h"), gold="card_arrival")
    trained = debate(store, capture(store, "t", held_out=False), gold="card_arrival", held_out=False)
    math = debate(store, capture(store, "m", task="math", held_out=False), gold="4", task="math", held_out=False)
    untasked = debate(store, None, gold="5", task=None, held_out=None)
    assert {m.id for m in store.list(held_out=False)} == {trained, math, untasked}
    assert {m.id for m in store.list(held_out=False, usable=True, status="done")} == {trained, math, untasked}
    assert [m.id for m in store.list(held_out=True)] == [held]
    assert {m.id for m in store.list(task="intent")} == {held, trained}
    assert [m.id for m in store.list(task="default")] == [untasked]
    assert {m.id for m in store.list()} == {held, trained, math, untasked}
    mag = store.get(held)
    assert mag is not None and (mag.task, mag.held_out, mag.request_id, mag.messages) == \
        ("intent", True, "h", messages("h"))


def test_live_accuracy_reads_each_labelled_reply_as_its_task_does(db_url: str) -> None:
    """A label task's app reads the reply as the label alone: `card_arrival` is right, prose naming it is not; the
    arithmetic task's reply is read for its final answer. Without the task's spec, a bare label is not even read."""
    from services.config import TaskProfile

    db = Database(db_url)
    db.create_all()
    store = MagStore(db)
    served = [("r1", "intent", "card_arrival", "card_arrival"), ("r2", "intent", "It is card_arrival.", "card_arrival"),
              ("r3", "intent", "card_linking", "card_arrival"), ("r4", None, "So 3 + 4 = 7.\nFinal answer: 7", "7")]
    for rid, task, out, label in served:
        store.enqueue([{"request_id": rid, "question": "q", "messages": [], "task": task, "served_output": out,
                        "served_adapter": "student@v1", "label": label, "label_source": "feedback"}])
    profiles = {"intent": TaskProfile(name="intent", answer_type="label", labels=["card_arrival", "card_linking"]),
                "default": TaskProfile(name="default", answer_type="number")}
    assert store.live_accuracy("student@v1", task_spec=lambda name: profiles[name].spec) == (4, 2)
    assert store.live_accuracy("student@v1") == (4, 1)  # the label's implied type (text) reads no bare label
