"""What the capture writer stores when the input is hostile, on SQLite and PostgreSQL: NUL characters and lone
surrogates are stripped before the store sees them, and a batch the store refuses is split, its poisoned item
dead-lettered and every other one stored; the writer goes on either way."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from services.capture.policy import FinishedRequest
from services.capture.redact import default_redactor
from services.capture.sink import StoreSink
from services.store.debates import CaptureRow
from services.store.mags import MagStore


def finished(rid: str, content: str, output: str = "5", **message: object) -> FinishedRequest:
    return FinishedRequest(rid, "chat", "student", "base", {"messages": [{"role": "user", "content": content,
                                                                         **message}]}, [output], 5, 1, 0.1)


def stored(store: MagStore) -> dict[str, tuple[str, str | None]]:
    with store.db.session() as s:
        return {r.request_id: (r.question, r.served_output) for r in s.scalars(select(CaptureRow))}


def metric(sink: StoreSink, name: str) -> float:
    return sink.metrics.registry.get_sample_value(name) or 0.0


def test_nul_and_lone_surrogates_are_stripped_and_the_writer_goes_on(store: MagStore, db_url: str) -> None:
    if db_url.startswith("postgresql"):  # the attack is real there: the raw text is refused outright
        with pytest.raises(Exception, match=r"NUL|0x00"):
            store.enqueue([{"request_id": "raw", "question": "2\x00 + 3", "messages": []}])
    sink = StoreSink(store, default_redactor(7), linger_s=0.01, retry_s=0.01)
    assert sink.offer(finished("r-nul", "What is 2\x00 + 3?", output="Final answer: 5\x00"))
    assert sink.offer(finished("r-surrogate", "What is 2 + 3?\udc80", role="user\x00"))
    assert sink.offer(finished("r-next", "What is 4 + 4?"))
    sink.close()
    assert stored(store) == {"r-nul": ("What is 2 + 3?", "Final answer: 5"),
                             "r-surrogate": ("What is 2 + 3?", "5"), "r-next": ("What is 4 + 4?", "5")}
    assert metric(sink, "distillery_capture_cleaned_total") == 2
    assert store.dead_letters() == []
    assert len(store.claim("w", 5, 60)) == 3  # the queue works on: nothing is wedged


def test_a_poisoned_batch_is_split_and_only_the_poisoned_item_dead_lettered(store: MagStore) -> None:
    sink = StoreSink(store, default_redactor(7), linger_s=0.5, retry_s=0.01)  # one batch for all seven
    for i in range(7):
        extra = {"audio": b"\xff\xfe"} if i == 4 else {}  # bytes: no JSON column takes them
        assert sink.offer(finished(f"r{i}", f"What is {i} + 1?", **extra))
    sink.close()
    assert sorted(stored(store)) == ["r0", "r1", "r2", "r3", "r5", "r6"]
    [(rid, error)] = store.dead_letters()
    assert rid == "r4" and "JSON serializable" in error
    assert metric(sink, "distillery_capture_dead_letters_total") == 1
    # The next batch is stored as usual.
    sink = StoreSink(store, default_redactor(7), linger_s=0.01, retry_s=0.01)
    assert sink.offer(finished("r7", "What is 7 + 1?"))
    sink.close()
    assert "r7" in stored(store) and len(store.dead_letters()) == 1
