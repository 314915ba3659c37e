"""What a training cycle trains on: the newest usable MAGs, never a task's held-out requests (real store)."""

from __future__ import annotations

from ray_jobs.cycle import training_mags
from services.store.debates import utcnow
from services.store.mags import MagStore


def finished(store: MagStore, *, held_out: bool | None, usable: bool = True, task: str | None = "intent") -> int:
    return store.start_debate(source="traffic", question="q", answer_kind="label", gold="card_arrival",
                              gold_source="feedback", prompt_version="v", agents=[], status="done", usable=usable,
                              task=task, held_out=held_out, rounds=1, finished_at=utcnow())


def test_training_mags_leave_the_held_out_slice_out(store: MagStore) -> None:
    trained = finished(store, held_out=False)
    held = finished(store, held_out=True)
    old = finished(store, held_out=None, task=None)  # a debate from before task profiles: trained on
    finished(store, held_out=False, usable=False)
    newest = finished(store, held_out=False)
    assert [m.id for m in training_mags(store, 10)] == [trained, old, newest]  # oldest first
    assert held not in [m.id for m in training_mags(store, 10)]
    assert [m.id for m in training_mags(store, 2)] == [old, newest]  # the newest max_mags of those kept
