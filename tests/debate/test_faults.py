"""A teacher that times out, fails, answers garbage or no final answer, or is slow degrades its own turns only."""

from __future__ import annotations

import time

import pytest

from services.debate.agents import OpenAIAgent
from services.debate.engine import DebateEngine, DebateInput
from services.tasks.arithmetic import generate
from tests.debate.conftest import agent, debate_config, reference_agents
from tests.http_servers import Script, scripted_app, serve_app

PROBLEM = generate("eval", 1)[0]
RIGHT_STUDENT = Script(f"### Answer\nsteps\nFinal answer: {PROBLEM.answer}")

FAULTS = {
    "timeout": (Script("late", delay_s=3.0), {"timeout_s": 0.5, "max_retries": 1}, "error", "timeout"),
    "http_500": (Script(status=500), {"max_retries": 2}, "error", "http_500"),
    "garbage": (Script(raw="<html>oops</html>"), {}, "error", "bad_response"),
    "no_final_answer": (Script("I think it is probably something."), {}, "unparsed", None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_faulty_teacher_degrades_only_its_own_turns(store, reference_url, fault):
    script, cfg, status, error = FAULTS[fault]
    calls: list[str] = []
    with serve_app(scripted_app(lambda p: script, calls)) as bad_url, \
            serve_app(scripted_app(lambda p: Script("### Answer\nguess\nFinal answer: 0"))) as student_url:
        bad = agent("faulty", f"{bad_url}/v1", **cfg)
        engine = DebateEngine(agent("student", f"{student_url}/v1", role="student"),
                              [*reference_agents(reference_url), bad], debate_config(), store)
        result = await engine.run(DebateInput(PROBLEM.question, PROBLEM.answer, "dataset"))
    mag = store.get(result.debate_id)
    faulty = [n for n in mag.nodes if n.agent == "faulty"]
    others = [n for n in mag.nodes if n.agent != "faulty"]
    assert faulty and all(n.status in {status, "unparsed"} for n in faulty if n.kind in {"answer", "review"})
    if error:
        assert all(error in (n.error or "") for n in faulty)
    assert all(n.status == "ok" for n in others if n.role == "teacher")
    # The debate itself went on: the exact teachers taught the student and it is usable training data.
    assert mag.status == "done" and result.usable
    assert {n.agent: n.correct for n in mag.answers(0)}["ref-a"] is True
    # Each of its turns is one node. A 5xx is retried exactly max_retries times before the turn gives up; a reply
    # that came back (garbage, no final answer) is not retried. A timed-out attempt may be given up before a loaded
    # server records it, so for timeouts: more attempts than turns (retried), never more than the bound.
    turns = len(faulty)
    if fault == "timeout":
        assert turns < len(calls) <= (1 + cfg["max_retries"]) * turns, (len(calls), turns)
    else:
        retries = cfg["max_retries"] if fault == "http_500" else 0
        assert len(calls) == (1 + retries) * turns, (len(calls), turns)


async def test_a_slow_teacher_is_waited_for_and_recorded_with_its_latency(store, reference_url):
    with serve_app(scripted_app(lambda p: Script(f"### Answer\nslow\nFinal answer: {PROBLEM.answer}",
                                                 delay_s=1.0))) as slow_url, \
            serve_app(scripted_app(lambda p: RIGHT_STUDENT)) as student_url:
        engine = DebateEngine(agent("student", f"{student_url}/v1", role="student"),
                              [*reference_agents(reference_url), agent("slow", f"{slow_url}/v1")],
                              debate_config(), store)
        result = await engine.run(DebateInput(PROBLEM.question, PROBLEM.answer, "dataset"))
    slow = next(n for n in store.get(result.debate_id).answers(0) if n.agent == "slow")
    assert slow.status == "ok" and slow.correct and slow.latency_s >= 1.0
    assert result.outcome == "solved"


async def test_retries_with_backoff_recover_from_transient_failures():
    attempts: list[str] = []

    def flaky(prompt: str) -> Script:
        return Script(status=503) if len(attempts) <= 3 else Script("### Answer\nok\nFinal answer: 4")

    with serve_app(scripted_app(flaky, attempts)) as url:
        a = agent("flaky", f"{url}/v1", max_retries=3)
        t0 = time.monotonic()
        reply = await a.ask("What is 2 + 2?", "answer")
    assert reply.error is None and "Final answer: 4" in (reply.text or "")
    assert len(attempts) == 4 and time.monotonic() - t0 >= 0.5  # three backoffs happened


async def test_a_client_error_is_not_retried():
    attempts: list[str] = []
    with serve_app(scripted_app(lambda p: Script(status=400), attempts)) as url:
        reply = await agent("strict", f"{url}/v1", max_retries=3).ask("x", "answer")
    assert reply.error is not None and reply.error.startswith("misconfigured: http_400") and len(attempts) == 1


async def test_the_hourly_token_budget_makes_a_teacher_sit_out():
    with serve_app(scripted_app(lambda p: Script("### Answer\n" + "word " * 200 + "\nFinal answer: 1"))) as url:
        a: OpenAIAgent = agent("pricey", f"{url}/v1", tokens_per_hour=100, price_completion_per_1k=2.0)
        first = await a.ask("q", "answer")
        second = await a.ask("q", "answer")
    assert first.error is None and first.cost_usd > 0
    assert second.error == "budget_exhausted" and second.text is None


async def test_a_missing_api_key_variable_is_a_clear_configuration_error(monkeypatch):
    monkeypatch.delenv("DISTILLERY_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="DISTILLERY_TEST_KEY"):
        agent("paid", "http://127.0.0.1:1/v1", api_key_env="DISTILLERY_TEST_KEY")


async def test_every_bad_reply_is_recorded_with_its_status_and_the_debate_finishes(store, reference_url):
    """A hosted teacher that returns HTML, empty choices, `content: null`, a 200 with a JSON error body, a 3 MB
    body and a review score of 9, one after another, inside one debate."""
    from tests.hosted_teacher import HostedTeacher

    faults = ["html", "empty_choices", "null_content", "error_body", "huge", "score_9"]
    bad = HostedTeacher("openai", faults=faults)
    with bad.serve() as bad_url, \
            serve_app(scripted_app(lambda p: Script("### Answer\nguess\nFinal answer: 0"))) as student_url:
        engine = DebateEngine(agent("student", f"{student_url}/v1", role="student"),
                              [*reference_agents(reference_url), agent("faulty", bad_url, max_retries=0)],
                              debate_config(max_rounds=3), store)
        result = await engine.run(DebateInput(PROBLEM.question, PROBLEM.answer, "dataset"))
    mag = store.get(result.debate_id)
    assert mag.status == "done" and result.usable and result.rounds == 3
    errors = [n.error or "" for n in mag.nodes if n.agent == "faulty" and n.status == "error"]
    for expected in ("bad_response: not JSON", "bad_response: no choices", "empty_reply", "provider_error",
                     "reply_too_large"):
        assert sum(e.startswith(expected) for e in errors) == 1, (expected, errors)
    # The score of 9 is out of FAIR's range: that review is recorded unreadable and dropped from the mean.
    nine = [n for n in mag.of_kind("review") if n.agent == "faulty" and n.status == "unparsed"]
    assert len(nine) == 1 and nine[0].score is None and "9" in (nine[0].text or "")
    assert bad.faults == []  # every fault was served inside this one debate
    # Its other turns were read normally, and no error node was ever graded or critiqued.
    assert any(n.status == "ok" for n in mag.nodes if n.agent == "faulty")
    assert all(n.correct is None for n in mag.nodes if n.status == "error")
