"""The distillation switch in the store: every process sees a pause within its cache window."""

from __future__ import annotations

import time

from services.store.controls import Controls
from services.store.db import Database


def test_pause_and_resume_reach_another_process_view(db_url: str) -> None:
    db = Database(db_url)
    db.create_all()
    operator, replica = Controls(db), Controls(Database(db_url), cache_s=0.2)
    assert replica.paused() is False and operator.state() == {"paused": False, "reason": None, "since": None}
    state = operator.pause("teacher bill review")
    assert state["paused"] is True and state["reason"] == "teacher bill review" and state["since"]
    time.sleep(0.3)  # the replica's cached value expires
    assert replica.paused() is True
    operator.resume("approved")
    assert replica.paused() is True  # still cached: a pause is seen within cache_s, not per request
    time.sleep(0.3)
    assert replica.paused() is False and operator.state()["reason"] == "approved"
