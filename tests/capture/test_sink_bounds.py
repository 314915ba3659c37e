"""Capture is bounded and consented to: a per-key hourly quota and a capped queue shed (counted by reason) while
other keys are still captured; the opt-out header in any spelling and per-key opt-out keep traffic out."""

from __future__ import annotations

import random

import pytest

from services.capture.policy import CapturePolicy, FinishedRequest, NullSink
from services.capture.redact import default_redactor
from services.capture.sink import KeyQuota, StoreSink
from services.config import CaptureConfig
from services.store.mags import MagStore


def finished(rid: str, key_id: str) -> FinishedRequest:
    return FinishedRequest(rid, "chat", "student", "base", {"messages": [{"role": "user", "content": f"q {rid}"}]},
                           ["a"], 1, 1, 0.1, key_id=key_id)


def shed(sink: StoreSink, reason: str) -> float:
    return sink.metrics.registry.get_sample_value("distillery_capture_shed_total", {"reason": reason}) or 0.0


def test_a_key_past_its_hourly_quota_is_shed_and_other_keys_are_still_captured(store: MagStore) -> None:
    sink = StoreSink(store, default_redactor(7), linger_s=0.01, per_key_per_hour=10)
    flood = [sink.offer(finished(f"flood-{i}", "key-flood")) for i in range(100)]  # 10x the quota
    others = [sink.offer(finished(f"other-{i}", "key-other")) for i in range(5)]
    sink.close()
    assert flood.count(True) == 10 and all(others)
    assert shed(sink, "key_quota") == 90
    assert store.queue_counts() == {"queued": 15}  # the flood's first 10 and every other key's request


def test_the_quota_refills_with_time() -> None:
    now = [0.0]
    quota = KeyQuota(per_hour=2, clock=lambda: now[0])
    assert [quota.take("k") for _ in range(3)] == [True, True, False]
    now[0] += 1800  # half an hour: one more
    assert [quota.take("k"), quota.take("k")] == [True, False]


def test_a_full_queue_sheds_new_captures_and_keeps_what_it_holds(store: MagStore) -> None:
    store.enqueue([{"request_id": f"old-{i}", "question": "q", "messages": []} for i in range(5)])
    sink = StoreSink(store, default_redactor(7), linger_s=0.01, max_queued=5)
    assert not any(sink.offer(finished(f"new-{i}", "k")) for i in range(20))
    sink.close()
    assert shed(sink, "queue_full") == 20
    assert store.queue_counts() == {"queued": 5}  # what it held is intact
    store.claim("w", 3, 60)  # debates take items: there is room again
    sink = StoreSink(store, default_redactor(7), linger_s=0.01, max_queued=5)
    assert [sink.offer(finished(f"later-{i}", "k")) for i in range(4)] == [True, True, True, False]
    sink.close()
    assert store.queue_counts() == {"queued": 5, "running": 3} and shed(sink, "queue_full") == 1


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " Yes ", "on", "On"])
def test_the_opt_out_header_is_read_in_any_usual_spelling(value: str) -> None:
    policy = CapturePolicy(CaptureConfig(), NullSink(), rng=random.Random(0))
    assert not policy.wants("chat", {"X-Distillery-No-Distill": value})
    assert not policy.wants("chat", {"x-distillery-no-distill": value})


def test_a_false_opt_out_or_none_is_captured_and_a_keys_opt_out_always_wins() -> None:
    policy = CapturePolicy(CaptureConfig(opt_out_keys=["k-private"]), NullSink(), rng=random.Random(0))
    assert policy.wants("chat", {"x-distillery-no-distill": "0"}) and policy.wants("chat", {})
    assert policy.wants("chat", {"x-distillery-no-distill": "no"}, key_id="k-public")
    assert not policy.wants("chat", {}, key_id="k-private")
    assert not policy.wants("chat", {"x-distillery-no-distill": "false"}, key_id="k-private")
