"""Labels have owners and bounds, on SQLite and PostgreSQL: only the request's own key (or the admin key) labels
it, relabels are bounded, and an untrusted label is kept but never becomes gold by itself."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from services.store.debates import CaptureRow, LabelRow
from services.store.mags import MagStore


def item(rid: str, key_id: str) -> dict:
    return {"request_id": rid, "question": "What is 2 + 3?", "key_id": key_id,
            "messages": [{"role": "user", "content": "What is 2 + 3?"}]}


def label_of(store: MagStore, rid: str) -> tuple:
    with store.db.session() as s:
        return s.execute(select(CaptureRow.label, CaptureRow.label_key_id, CaptureRow.label_trusted,
                                CaptureRow.relabels).where(CaptureRow.request_id == rid)).one()


def finish(store: MagStore, consensus: str) -> int:
    """Debate the one queued item as the worker would (its label as gold, else the teachers' `consensus`) and
    close it; the debate's id."""
    [it] = store.claim("w", 1, 60)
    did = store.start_debate(capture_id=it.id, question=it.question, answer_kind="number",
                             gold=it.label or consensus, gold_source="feedback" if it.label else "consensus",
                             prompt_version="v", agents=[], status="done")
    store.attach_debate(it.id, did)
    store.update_debate(did, usable=True)
    assert store.finish_item(it.id, ok=True, error=None, max_attempts=3) == "done"
    return did


def test_another_keys_request_cannot_be_labelled_but_the_admin_may(store) -> None:
    store.enqueue([item("r-a", "key-a")])
    assert store.add_label("r-a", "6", key_id="key-b", trusted=False) == ("forbidden", "r-a")
    assert label_of(store, "r-a") == (None, None, None, 0)  # nothing stored
    assert store.add_label("r-a", "5", key_id="key-a", trusted=False) == ("queued", "r-a")
    assert label_of(store, "r-a") == ("5", "key-a", False, 0)
    assert store.add_label("r-a", "5", key_id="admin", trusted=True) == ("queued", "r-a")
    assert label_of(store, "r-a") == ("5", "admin", True, 1)


def test_a_pending_label_applies_only_to_a_request_of_the_same_key(store) -> None:
    assert store.add_label("r-early", "6", key_id="key-b", trusted=False) == ("pending", "r-early")
    assert store.add_label("r-early", "7", key_id="key-c", trusted=False) == ("forbidden", "r-early")
    store.enqueue([item("r-early", "key-a")])  # key-a made it: key-b's guess is not its label
    [claimed] = store.claim("w", 1, 60)
    assert claimed.label is None and label_of(store, "r-early")[0] is None
    store.add_label("r-mine", "5", key_id="key-a", trusted=True)
    store.enqueue([item("r-mine", "key-a")])
    [mine] = store.claim("w", 1, 60)
    assert (mine.label, mine.label_source) == ("5", "feedback")


def test_alternating_labels_re_debate_a_request_a_bounded_number_of_times(store) -> None:
    store.enqueue([item("r1", "key-a")])
    finish(store, "5")
    requeues = 0
    outcomes = []
    for i in range(20):  # the attack: flip the label back and forth on a finished request
        status, _ = store.add_label("r1", "6" if i % 2 == 0 else "5", key_id="key-a", trusted=True, max_relabels=3)
        outcomes.append(status)
        if status == "requeued":
            requeues += 1
            finish(store, "5")
    assert outcomes.count("relabel_limit") == 16 and requeues <= 4
    assert label_of(store, "r1")[3] == 3
    assert store.queue_counts() == {"done": 1}  # nothing left queued: no more debates
    with store.db.session() as s:
        assert s.scalar(select(LabelRow.request_id)) is None


def test_an_untrusted_label_is_not_gold_and_cannot_supersede_the_consensus(store) -> None:
    store.enqueue([item("r1", "key-a")])
    assert store.add_label("r1", "6", key_id="key-a", trusted=False)[0] == "queued"
    [it] = store.claim("w", 1, 60)
    assert (it.label, it.label_source) == (None, None)  # the debate decides its gold itself
    did = store.start_debate(capture_id=it.id, question=it.question, answer_kind="number", gold="5",
                             gold_source="consensus", prompt_version="v", agents=[], status="done")
    store.attach_debate(it.id, did)
    assert store.finish_item(it.id, ok=True, error=None, max_attempts=3) == "done"  # not re-queued
    debate = store.get(did)
    assert debate.gold_source == "consensus" and "untrusted" in (debate.note or "")
    assert store.add_label("r1", "7", key_id="key-a", trusted=False)[0] == "noted"  # a finished debate stands
    assert store.get(did).status == "done"
    # A trusted label that agrees makes the consensus feedback-confirmed gold.
    assert store.add_label("r1", "5", key_id="admin", trusted=True)[0] == "confirmed"
    assert store.get(did).gold_source == "feedback"


def test_labels_waiting_for_requests_never_captured_are_bounded_per_key(store) -> None:
    for i in range(3):
        assert store.add_label(f"ghost-{i}", "5", key_id="key-a", max_pending=3) == ("pending", f"ghost-{i}")
    assert store.add_label("ghost-3", "5", key_id="key-a", max_pending=3) == ("pending_limit", "ghost-3")
    assert store.add_label("ghost-0", "6", key_id="key-a", max_pending=3) == ("pending", "ghost-0")  # its own, again
    assert store.add_label("ghost-b", "5", key_id="key-b", max_pending=3) == ("pending", "ghost-b")  # other keys
    store.enqueue([item("ghost-1", "key-a")])  # a captured request's label no longer waits
    assert store.add_label("ghost-4", "5", key_id="key-a", max_pending=3) == ("pending", "ghost-4")
    with store.db.session() as s:
        assert sorted(s.scalars(select(LabelRow.request_id))) == [
            "ghost-0", "ghost-1", "ghost-2", "ghost-4", "ghost-b"]
    assert label_of(store, "ghost-1") == ("5", "key-a", True, 0)  # the waiting label was applied, nothing lost


def test_concurrent_first_labels_for_one_request_all_succeed(store) -> None:
    """The soak's feedback flood met this: two first labels for the same unknown request raced to insert it."""
    start = threading.Barrier(8)

    def post(i: int) -> tuple[str, str | None]:
        start.wait()
        return store.add_label("raced", str(i), key_id="key-a", max_pending=100)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(8)))
    assert results == [("pending", "raced")] * 8
    with store.db.session() as s:
        assert s.scalar(select(LabelRow.answer).where(LabelRow.request_id == "raced")) in {str(i) for i in range(8)}


def test_a_label_whose_transaction_crossed_its_requests_write_is_applied_after_both(store) -> None:
    """The label's transaction found no request and the request's found no label (each committed after the other
    read): the label row exists beside an unlabelled request. The check that runs after either commit applies it,
    to the request's own key only."""
    store.enqueue([item("r-race", "key-a"), item("r-other", "key-b")])
    with store.db.session() as s:  # what the crossing label transactions left behind
        s.add(LabelRow(request_id="r-race", answer="5", key_id="key-a", trusted=True))
        s.add(LabelRow(request_id="r-other", answer="6", key_id="key-a", trusted=True))
    assert label_of(store, "r-race")[0] is None
    store._apply_pending_labels(["r-race", "r-other"])
    assert label_of(store, "r-race")[:3] == ("5", "key-a", True)
    assert label_of(store, "r-other")[0] is None  # another key's request: never labelled by it
