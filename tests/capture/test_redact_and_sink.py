"""Redaction before anything is stored or sent, and the durable sink's write path."""

from __future__ import annotations

import pytest

from services.capture.policy import FinishedRequest
from services.capture.redact import build_redactor, default_redactor
from services.capture.sink import StoreSink
from services.config import CaptureConfig
from services.store.controls import Controls


def test_default_redaction_masks_emails_and_long_digit_runs_but_keeps_arithmetic():
    r = default_redactor(7)
    text = "Mail bob.smith@example.com or call 555-123-4567; card 4111 1111 1111 1111. What is 17 + 25?"
    assert r(text) == "Mail [EMAIL] or call [NUMBER]; card [NUMBER]. What is 17 + 25?"
    assert r("I have 123456 coins") == "I have 123456 coins"  # six digits: below the threshold


def test_a_custom_redactor_is_loaded_by_import_path_and_bad_ones_are_refused():
    assert build_redactor(CaptureConfig(redactor="builtins:str"))("x") == "x"
    assert build_redactor(CaptureConfig(redactor="none"))("a@b.co") == "a@b.co"
    with pytest.raises(ValueError, match="module:function"):
        build_redactor(CaptureConfig(redactor="nonsense"))


def test_the_sink_redacts_and_queues_the_conversation(store):
    sink = StoreSink(store, default_redactor(7), linger_s=0.01)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "user", "content": "Call 5551234567: what is 2 + 2?"}]
    assert sink.offer(FinishedRequest("r1", "chat", "student", "base", {"messages": messages}, ["4"], 5, 1, 0.1,
                                      response_id="chatcmpl-1"))
    sink.close()
    [claimed] = store.claim("w", 1, 60)
    assert claimed.question == ("<system_prompt>\nbe brief\n</system_prompt>\n\n<conversation>\nUser: hi\n"
                                "</conversation>\n\nCall [NUMBER]: what is 2 + 2?") and claimed.request_id == "r1"
    assert store.add_label("chatcmpl-1", "4") == ("queued", "r1")  # the completion id finds the item


def test_nothing_is_captured_while_distillation_is_paused(store):
    controls = Controls(store.db)
    controls.pause("incident")
    sink = StoreSink(store, default_redactor(7), linger_s=0.01, controls=controls)
    sink.offer(FinishedRequest("r1", "chat", "student", "base", {"messages": [{"role": "user", "content": "hi"}]},
                               ["hello"], 1, 1, 0.1))
    sink.close()
    assert store.queue_counts() == {} and sink.skipped_paused == 1
    controls.resume()
    sink = StoreSink(store, default_redactor(7), linger_s=0.01, controls=controls)
    sink.offer(FinishedRequest("r2", "chat", "student", "base", {"messages": [{"role": "user", "content": "hi"}]},
                               ["hello"], 1, 1, 0.1))
    sink.close()
    assert store.queue_counts() == {"queued": 1}


def test_the_debated_question_carries_the_system_prompt_and_earlier_turns() -> None:
    from services.capture.sink import question_of

    assert question_of([{"role": "user", "content": "What is 2 + 2?"}]) == "What is 2 + 2?"  # a lone message as sent
    convo = [{"role": "system", "content": "Answer with the intent label only."},
             {"role": "user", "content": "My card has not arrived."},
             {"role": "assistant", "content": "card_arrival"},
             {"role": "user", "content": "And I was charged twice?"}]
    q = question_of(convo)
    assert q == ("<system_prompt>\nAnswer with the intent label only.\n</system_prompt>\n\n<conversation>\n"
                 "User: My card has not arrived.\nAssistant: card_arrival\n</conversation>\n\nAnd I was charged twice?")
    # Within budget: the system prompt is cut to half of it, the oldest turns go first, the last message stays whole.
    long = [{"role": "system", "content": "S" * 500}, *[{"role": "user", "content": f"turn {i} " + "x" * 40}
                                                       for i in range(10)], {"role": "user", "content": "last?"}]
    short = question_of(long, context_chars=200)
    assert short is not None and short.endswith("last?") and "turn 9" in short and "turn 0" not in short
    assert "S" * 100 + " [...]" in short and "S" * 101 not in short and "[...]\nUser: turn" in short
    assert question_of([{"role": "system", "content": "hi"}]) is None  # nothing to debate


def finished(rid: str, task: str | None) -> FinishedRequest:
    request = {"messages": [{"role": "user", "content": f"question {rid}"}]}
    if task is not None:
        request["task"] = task
    return FinishedRequest(rid, "chat", "student", "base", request, ["answer"], 5, 1, 0.1)


def test_the_sink_records_each_requests_task_and_holdout_by_its_tasks_share(store):
    from services.tasks.routing import in_holdout

    ids = [f"req-{i}" for i in range(60)]
    held = [r for r in ids if in_holdout(r, 0.5)]
    kept = [r for r in ids if not in_holdout(r, 0.5)]
    assert len(held) >= 2 and len(kept) >= 2
    sink = StoreSink(store, default_redactor(7), linger_s=0.01, holdout={"intent": 0.5, "default": 0.0})
    for rid in (held[0], kept[0]):
        assert sink.offer(finished(rid, "intent"))
    assert sink.offer(finished(held[1], None))  # no task in the payload: default, whose share is 0
    assert sink.offer(finished(kept[1], "math"))  # a task without a share: nothing held out
    sink.close()
    got = {i.request_id: (i.task, i.held_out) for i in store.claim("w", 10, 60)}
    assert got == {held[0]: ("intent", True), kept[0]: ("intent", False), held[1]: ("default", False),
                   kept[1]: ("math", False)}
    assert store.task_of(held[0]) == "intent" and store.task_of(held[1]) == "default"


def test_the_sink_without_holdout_shares_holds_nothing_out(store):
    from services.tasks.routing import in_holdout

    rid = next(f"r{i}" for i in range(100) if in_holdout(f"r{i}", 0.9))
    sink = StoreSink(store, default_redactor(7), linger_s=0.01)
    sink.offer(finished(rid, "intent"))
    sink.close()
    [item] = store.claim("w", 1, 60)
    assert (item.task, item.held_out) == ("intent", False)


def test_capture_rate_per_task():
    import random

    from services.capture.policy import CapturePolicy, NullSink

    policy = CapturePolicy(CaptureConfig(sample_rate=1.0), NullSink(), rng=random.Random(0),
                           task_rates={"quiet": 0.0, "half": 0.5})
    assert not any(policy.wants("chat", {}, "quiet") for _ in range(2000))
    assert all(policy.wants("chat", {}, "loud") for _ in range(500))  # no rate of its own: capture.sample_rate
    assert all(policy.wants("chat", {}) for _ in range(500))
    half = sum(policy.wants("chat", {}, "half") for _ in range(4000))
    assert 1800 <= half <= 2200, half
    assert not policy.wants("chat", {"x-distillery-no-distill": "1"}, "half")
    assert not any(policy.wants("chat", {"x-distillery-no-distill": "1"}, "loud") for _ in range(50))
    assert not policy.wants("completions", {}, "loud")
    # A task's own rate also opens capture where the global rate is 0, and a disabled capture stays off.
    only = CapturePolicy(CaptureConfig(sample_rate=0.0), NullSink(), rng=random.Random(1), task_rates={"a": 1.0})
    assert all(only.wants("chat", {}, "a") for _ in range(200))
    assert not any(only.wants("chat", {}, "b") or only.wants("chat", {}) for _ in range(200))
    off = CapturePolicy(CaptureConfig(enabled=False), NullSink(), rng=random.Random(2), task_rates={"a": 1.0})
    assert not off.wants("chat", {}, "a")
