"""The D&R protocol as recorded in the MAG: rounds, critiques, reflections, stopping rule, peer review, gold."""

from __future__ import annotations

from services.debate.engine import DebateEngine, DebateInput
from services.tasks.arithmetic import generate
from tests.debate.conftest import agent, debate_config, reference_agents
from tests.http_servers import Script, scripted_app, serve_app

PROBLEM = next(p for p in generate("eval", 50) if p.steps == 2)


def wrong_then_right(prompt: str) -> Script:
    """A student that is wrong in round 0 and right once it has seen the others' answers and feedback."""
    if "<agent_answer" in prompt:
        return Script(f"### Answer\nThe feedback shows my mistake.\nFinal answer: {PROBLEM.answer}")
    if "reflect on your mistake" in prompt:
        return Script("Self-reflection: I skipped a step.")
    return Script("### Answer\nI guess.\nFinal answer: 1")


async def test_wrong_in_round0_right_after_critique_has_exactly_the_protocol(store, reference_url):
    calls: list[str] = []
    with serve_app(scripted_app(wrong_then_right, calls)) as surl:
        engine = DebateEngine(agent("student", f"{surl}/v1", role="student"), reference_agents(reference_url),
                              debate_config(), store)
        result = await engine.run(DebateInput(PROBLEM.question, PROBLEM.answer, "dataset"))
    assert (result.outcome, result.rounds, result.stop_round) == ("solved", 2, 1)
    assert result.student_correct_first is False and result.student_correct_last is True and result.usable
    mag = store.get(result.debate_id)
    assert mag is not None and mag.status == "done" and mag.gold_source == "dataset"
    # Round 0: three answers; only the student is wrong.
    r0 = {n.agent: n for n in mag.answers(0)}
    assert {a: n.correct for a, n in r0.items()} == {"student": False, "ref-a": True, "ref-b": True}
    # Critique phase after round 0: each correct agent critiques the wrong one; the wrong one reflects.
    crit = mag.of_kind("critique", 0)
    assert sorted((n.agent, n.target_agent) for n in crit) == [("ref-a", "student"), ("ref-b", "student")]
    assert all(f"the correct answer is {PROBLEM.answer}" in (n.text or "") for n in crit)
    assert [n.agent for n in mag.of_kind("reflection", 0)] == ["student"]
    # Peer review: each teacher's rationale scored by the other; exact teachers give 5 and accept.
    reviews = mag.of_kind("review", 0)
    assert sorted((n.agent, n.target_agent, n.score) for n in reviews) == [("ref-a", "ref-b", 5), ("ref-b", "ref-a", 5)]
    assert all(n.accepted and n.review_mean == 5 for n in r0.values() if n.role == "teacher")
    # Round 1: everyone right -> stop; no critique phase after the stopping round.
    assert all(n.correct for n in mag.answers(1)) and len(mag.answers(1)) == 3
    assert not mag.of_kind("critique", 1) and not mag.of_kind("reflection", 1) and not mag.answers(2)
    # The student's round-1 prompt held every answer, its reflection and the feedback it received.
    student_r1 = next(p for p in calls if "<agent_answer" in p)
    assert student_r1.count("<agent_answer") == 3 and "Self-reflection: I skipped a step." in student_r1
    assert "Feedback:\n1. " in student_r1 and "2. " in student_r1
    assert any(f"Given the correct final answer {PROBLEM.answer}" in p for p in calls)  # reflection sees gold
    # Edges: critiques and reflection point at the student's round-0 answer; each round-1 answer saw
    # 3 answers + 2 critiques + 1 reflection.
    kinds = [e.kind for e in mag.edges]
    assert kinds.count("critiques") == 2 and kinds.count("reflects_on") == 1 and kinds.count("reviews") == 2
    assert kinds.count("saw") == 3 * 6
    assert {e.dst for e in mag.edges if e.kind in {"critiques", "reflects_on"}} == {r0["student"].id}


async def test_a_student_that_stays_wrong_runs_every_round_and_no_critique_after_the_last(store, reference_url):
    with serve_app(scripted_app(lambda p: Script("### Answer\nx\nFinal answer: 1"))) as surl:
        engine = DebateEngine(agent("student", f"{surl}/v1", role="student"), reference_agents(reference_url),
                              debate_config(max_rounds=3), store)
        result = await engine.run(DebateInput(PROBLEM.question, PROBLEM.answer, "dataset"))
    assert (result.outcome, result.rounds, result.stop_round) == ("unsolved", 3, None)
    mag = store.get(result.debate_id)
    assert [len(mag.answers(r)) for r in range(3)] == [3, 3, 3]
    assert [len(mag.of_kind("critique", r)) for r in range(3)] == [2, 2, 0]
    assert [len(mag.of_kind("reflection", r)) for r in range(3)] == [1, 1, 0]
    assert result.usable  # correct teacher answers exist: still training data (chosen vs the student's)


def reviewers(scores: dict[str, str]) -> list:
    """Three scripted teachers answering 42; their review of a solution by `A` is scores[reviewer]."""
    servers = []
    for name in ("A", "B", "C"):
        def behave(prompt: str, me: str = name) -> Script:
            if "<solution>" in prompt:
                if "written by A" in prompt:
                    return Script(f"My verdict.\n{scores[me]}")
                return Script("Fine.\n[5]")
            return Script(f"### Answer\nwritten by {me}: 40 + 2 = 42\nFinal answer: 42")
        servers.append((name, scripted_app(behave)))
    return servers


async def _review_of_a(store, scores: dict[str, str], threshold: float = 3.0):
    from contextlib import ExitStack

    with ExitStack() as stack:
        urls = {n: stack.enter_context(serve_app(app)) for n, app in reviewers(scores)}
        student = stack.enter_context(serve_app(scripted_app(lambda p: Script("### Answer\n\nFinal answer: 42"))))
        teachers = [agent(n, f"{u}/v1") for n, u in urls.items()]
        engine = DebateEngine(agent("student", f"{student}/v1", role="student"), teachers,
                              debate_config(review_threshold=threshold), store)
        result = await engine.run(DebateInput("What is 40 + 2?", "42", "dataset"))
    return next(n for n in store.get(result.debate_id).answers(0) if n.agent == "A"), result


async def test_peer_review_accepts_only_above_the_threshold_and_drops_unparsable_scores(store):
    cases = [({"B": "[3]", "C": "[3]"}, 3.0, False),    # mean 3 is not above 3
             ({"B": "[3]", "C": "[4]"}, 3.5, True),
             ({"B": "[9]", "C": "[4]"}, 4.0, True),     # out of range: dropped
             ({"B": "four", "C": "[2]"}, 2.0, False),   # unparsable: dropped
             ({"B": "great", "C": "5/5"}, None, False)]  # no valid score: not accepted
    for scores, mean, accepted in cases:
        a, result = await _review_of_a(store, scores)
        assert (a.review_mean, a.accepted) == (mean, accepted), scores
        assert result.outcome == "solved" and result.rounds == 1  # everyone right in round 0: stop


async def test_pseudo_gold_needs_agreement_and_accepted_rationales(store):
    from contextlib import ExitStack

    async def unlabeled(scores: dict[str, str], answers: dict[str, str]):
        with ExitStack() as stack:
            teachers = []
            for name in ("A", "B", "C"):
                def behave(prompt: str, me: str = name) -> Script:
                    if "<solution>" in prompt:
                        return Script(f"ok\n{scores[me]}")
                    return Script(f"### Answer\nsteps\nFinal answer: {answers[me]}")
                teachers.append(agent(name, f"{stack.enter_context(serve_app(scripted_app(behave)))}/v1"))
            s_url = stack.enter_context(serve_app(scripted_app(lambda p: Script("### Answer\n\nFinal answer: 7"))))
            engine = DebateEngine(agent("student", f"{s_url}/v1", role="student"), teachers,
                                  debate_config(max_rounds=2), store)
            return await engine.run(DebateInput("What is 40 + 2?"))

    # A majority (2 of 3) agrees on 42 and its rationales are accepted: the pseudo-gold is 42.
    ok = await unlabeled({"A": "[5]", "B": "[5]", "C": "[5]"}, {"A": "42", "B": "42", "C": "41"})
    assert (ok.gold, ok.gold_source, ok.usable) == ("42", "pseudo", True)
    assert ok.student_correct_first is False
    rejected = await unlabeled({"A": "[1]", "B": "[2]", "C": "[1]"}, {"A": "42", "B": "42", "C": "42"})
    assert (rejected.outcome, rejected.gold, rejected.usable) == ("no_gold", None, False)
    split = await unlabeled({"A": "[5]", "B": "[5]", "C": "[5]"}, {"A": "42", "B": "41", "C": "40"})
    assert (split.outcome, split.gold, split.usable) == ("no_gold", None, False)
    mag = store.get(split.debate_id)
    assert mag.status == "done" and not mag.usable and len(mag.answers(0)) == 4  # stored, marked unusable
