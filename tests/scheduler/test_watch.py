"""Automatic rollback after a promotion: error-rate and live-accuracy signals, real registry and store."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from services.config import WatchSettings
from services.gateway.metrics import ServingMetrics
from services.registry import AdapterRegistry
from services.scheduler.metrics import TrainingMetrics
from services.scheduler.watch import RolloutWatch, request_counts
from services.store.db import Database
from services.store.debates import CaptureRow
from services.store.jobs import JobStore
from services.store.mags import MagStore


@pytest.fixture
def parts(tmp_path, model_dir, codeword_adapters):
    db = Database(f"sqlite:///{tmp_path / 'd.db'}")
    db.create_all()
    reg = AdapterRegistry(db, tmp_path / "adapters", served_name="student", base_model="base",
                          base_model_dir=Path(model_dir), max_rank=16)
    v1 = reg.publish(codeword_adapters["ALPHA-7"])
    v2 = reg.publish(codeword_adapters["BRAVO-3"])
    reg.promote(v1.name)
    reg.promote(v2.name)
    return reg, MagStore(db), ServingMetrics()


def count(metrics: ServingMetrics, adapter: str, status: int, n: int, model: str = "student") -> None:
    for _ in range(n):
        metrics.requests.labels("chat", model, adapter, str(status)).inc()


def test_request_counts_reads_the_gateway_exposition() -> None:
    m = ServingMetrics()
    count(m, "student@v2", 200, 7)
    count(m, "student@v2", 500, 2)
    count(m, "student@v2", 200, 5, model="student@v2")  # asked by version name (e.g. evaluation): not traffic
    count(m, "student@v1", 500, 4)
    assert request_counts(m.render().decode(), "student", "student@v2") == (9.0, 2.0)


def test_error_rate_after_promotion_rolls_back(parts) -> None:
    reg, store, metrics = parts
    rollbacks: list[str] = []

    def rollback(reason: str) -> None:
        rollbacks.append(reason)
        reg.rollback(reason)

    cfg = WatchSettings(min_requests=10, max_error_rate=0.2)
    watch = RolloutWatch(cfg, reg, store, lambda: metrics.render().decode(), rollback)
    count(metrics, "student@v2", 500, 50)  # before the watch first looked: not counted against v2
    assert watch.check() is None
    count(metrics, "student@v2", 200, 9)
    count(metrics, "student@v2", 500, 1)
    assert watch.check() is None and not rollbacks  # 10% errors: healthy
    count(metrics, "student@v2", 500, 5)
    reason = watch.check()
    assert reason is not None and "error rate 40.0% of 15 requests" in reason
    assert rollbacks == [f"auto-rollback: {reason}"]
    assert reg.promoted().name == "student@v1"  # type: ignore[union-attr]
    assert watch.check() is None  # a rollback is not a promotion to watch


def served(store: MagStore, adapter: str, i: int, answer: str, label: str) -> None:
    """A request `adapter` answered with `answer`, then labelled `label` by the client."""
    store.enqueue([{"request_id": f"{adapter}-{i}", "question": "q", "served_output": f"Final answer: {answer}",
                    "served_adapter": adapter}])
    store.add_label(f"{adapter}-{i}", label)


def test_live_accuracy_drop_rolls_back(parts) -> None:
    reg, store, metrics = parts
    for i in range(10):
        served(store, "student@v1", i, "5", "5" if i < 8 else "6")  # v1: 80% live accuracy
    rollbacks: list[str] = []
    watch = RolloutWatch(WatchSettings(min_labels=10, max_accuracy_drop=0.15), reg, store,
                         lambda: metrics.render().decode(), rollbacks.append)
    watch.check()
    for i in range(10):
        served(store, "student@v2", i, "5", "5" if i < 7 else "6")  # 70%: within the allowed drop
    assert watch.check() is None
    for i in range(10, 20):
        served(store, "student@v2", i, "5", "6")  # now 35%
    reason = watch.check()
    assert reason is not None and "live accuracy 35.0% on 20 labelled requests, 80.0% for student@v1" in reason
    assert len(rollbacks) == 1


def test_live_accuracy_gauges_follow_the_promotion_in_force(parts) -> None:
    """What the `DistilleryAccuracyDropAfterPromote` alert reads: promoted vs previous, gone after a rollback."""
    reg, store, _ = parts
    for i in range(4):
        served(store, "student@v1", i, "5", "5" if i < 3 else "6")  # v1: 3 of 4
        served(store, "student@v2", i, "5", "5" if i < 1 else "6")  # v2: 1 of 4
    gauges = TrainingMetrics(JobStore(store.db), reg, store)

    def live() -> dict[tuple[str, str, str], float]:
        return {(s.name, s.labels["role"], s.labels["version"]): s.value
                for fam in text_string_to_metric_families(gauges.render().decode())
                if fam.name.startswith("distillery_live_") for s in fam.samples}

    assert live() == {
        ("distillery_live_accuracy", "promoted", "student@v2"): 0.25,
        ("distillery_live_labels", "promoted", "student@v2"): 4.0,
        ("distillery_live_accuracy", "previous", "student@v1"): 0.75,
        ("distillery_live_labels", "previous", "student@v1"): 4.0,
    }
    reg.rollback("test")
    assert live() == {}


def test_untrusted_labels_cannot_force_a_rollback(parts) -> None:
    """The attack: a client key floods the new version's requests with wrong labels. Only trusted labellers'
    labels count, so the watch stays put; the untrusted labels are kept, with who gave them."""
    reg, store, metrics = parts
    for i in range(10):
        served(store, "student@v1", i, "5", "5")  # v1: 100% on trusted labels
    rollbacks: list[str] = []
    watch = RolloutWatch(WatchSettings(min_labels=10, max_accuracy_drop=0.15), reg, store,
                         lambda: metrics.render().decode(), rollbacks.append)
    for i in range(30):
        rid = f"student@v2-{i}"
        store.enqueue([{"request_id": rid, "question": "q", "served_output": "Final answer: 5",
                        "served_adapter": "student@v2", "key_id": "attacker"}])
        assert store.add_label(rid, "6", key_id="attacker", trusted=False)[0] == "queued"
    assert watch.check() is None and rollbacks == []
    assert store.live_accuracy("student@v2") == (0, 0)
    with store.db.session() as s:
        labels = s.execute(select(CaptureRow.label, CaptureRow.label_key_id, CaptureRow.label_trusted)
                           .where(CaptureRow.served_adapter == "student@v2")).all()
    assert len(labels) == 30 and set(labels) == {("6", "attacker", False)}
    assert reg.promoted().name == "student@v2"  # type: ignore[union-attr]
