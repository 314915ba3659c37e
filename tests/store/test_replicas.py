"""The replica board and the scrape targets in the store: every process sees every replica's last report, a replica
that stops reporting drops out after the stale window, and one that leaves takes its row with it."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import update

from services.store.db import Database
from services.store.debates import utcnow
from services.store.replicas import ReplicaBoard, ReplicaRow, ReplicaState, ScrapeTargets, stale_after


def test_replicas_report_and_every_reader_sees_them(db_url: str) -> None:
    db = Database(db_url)
    db.create_all()
    a, b = ReplicaBoard(db), ReplicaBoard(Database(db_url))  # two replicas' own connections
    a.report(ReplicaState("r1", "node-a", "student@v2", "student@v2", True, loaded=("student@v1",)), utcnow())
    b.report(ReplicaState("r2", "node-b", "student@v2", "smollm2", False, "adapter unavailable: S3 down"), utcnow())
    seen = ReplicaBoard(Database(db_url)).live(stale_s=30)
    assert [s.replica_id for s in seen] == ["r1", "r2"]
    assert seen[0] == ReplicaState("r1", "node-a", "student@v2", "student@v2", True, None, ("student@v1",))
    assert seen[1].ready is False and seen[1].error == "adapter unavailable: S3 down"
    # A later report replaces the earlier one (one row per replica).
    b.report(ReplicaState("r2", "node-b", "student@v2", "student@v2", True), utcnow())
    assert [s.ready for s in a.live(stale_s=30)] == [True, True]
    a.leave("r1")
    assert [s.replica_id for s in b.live(stale_s=30)] == ["r2"]


def test_a_replica_that_stops_reporting_drops_out(db_url: str) -> None:
    db = Database(db_url)
    db.create_all()
    board = ReplicaBoard(db)
    board.report(ReplicaState("gone", "node-b", None, "base", True), utcnow())
    board.report(ReplicaState("here", "node-a", None, "base", True), utcnow())
    with db.session() as s:  # `gone` last reported a minute ago, `here` just now
        s.execute(update(ReplicaRow).where(ReplicaRow.replica_id == "gone").values(
            seen_at=utcnow() - timedelta(seconds=60)))
    assert [s.replica_id for s in board.live(stale_s=30)] == ["here"]
    assert [s.replica_id for s in board.live(stale_s=90)] == ["gone", "here"]
    with db.session() as s:  # gone for two hours: its row is deleted, not only hidden
        s.execute(update(ReplicaRow).where(ReplicaRow.replica_id == "gone").values(
            seen_at=utcnow() - timedelta(hours=2)))
    board.live(stale_s=30)
    with db.session() as s:
        assert s.get(ReplicaRow, "gone") is None


def test_stale_window_is_three_polls_and_never_under_ten_seconds() -> None:
    assert stale_after(1.0) == 10.0 and stale_after(5.0) == 15.0


def test_scrape_targets_list_live_gateway_replicas(db_url: str) -> None:
    db = Database(db_url)
    db.create_all()
    targets = ScrapeTargets(db)
    targets.report("g1", "10.0.0.5:41234")
    targets.report("g2", "10.0.0.6:39001")
    targets.report("g1", "10.0.0.5:41235")  # restarted on another port: the newest address
    assert ScrapeTargets(Database(db_url)).live(stale_s=30) == [("g1", "10.0.0.5:41235"), ("g2", "10.0.0.6:39001")]
    targets.leave("g2")
    time.sleep(0.01)
    assert targets.live(stale_s=30) == [("g1", "10.0.0.5:41235")]
