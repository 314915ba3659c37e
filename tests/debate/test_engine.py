"""The D&R protocol as recorded in the MAG: rounds, critiques, reflections, stopping rule, FAIR's peer review and
explanations, gold with provenance, replies as hosted models write them."""

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
    if "Reflect on your mistake" in prompt:
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
    by_id = {n.id: n for n in mag.nodes}
    reviewed = [(by_id[e.src], by_id[e.dst]) for e in mag.edges if e.kind == "reviews"]
    rationale_reviews = [(rv.agent, t.agent, rv.score) for rv, t in reviewed if t.kind == "answer" and t.round == 0
                         and t.role == "teacher"]
    assert sorted(rationale_reviews) == [("ref-a", "ref-b", 5), ("ref-b", "ref-a", 5)]
    assert all(n.accepted and n.review_mean == 5 for n in r0.values() if n.role == "teacher")
    # FAIR: every teacher explains the student's mistake (gold as a hint), each explanation reviewed by the other.
    explanations = mag.of_kind("explanation", 0)
    assert sorted((n.agent, n.target_agent) for n in explanations) == [("ref-a", "student"), ("ref-b", "student")]
    assert all(f"<hint>The correct final answer is {PROBLEM.answer}.</hint>" in (n.prompt or "") for n in explanations)
    assert sorted((rv.agent, t.agent) for rv, t in reviewed if t.kind == "explanation") == [("ref-a", "ref-b"),
                                                                                              ("ref-b", "ref-a")]
    assert all(n.accepted for n in explanations)
    # Every correct round-1 answer is reviewed too (the student's by both teachers): chosen children need it.
    r1_reviews = sorted((rv.agent, t.agent) for rv, t in reviewed if t.round == 1)
    assert r1_reviews == [("ref-a", "ref-b"), ("ref-a", "student"), ("ref-b", "ref-a"), ("ref-b", "student")]
    # Round 1: everyone right -> stop; no critique phase after the stopping round.
    assert all(n.correct for n in mag.answers(1)) and len(mag.answers(1)) == 3
    assert not mag.of_kind("critique", 1) and not mag.of_kind("reflection", 1) and not mag.answers(2)
    # The student's round-1 prompt held every answer, its reflection and the feedback it received.
    student_r1 = next(p for p in calls if "<agent_answer" in p)
    assert student_r1.count("<agent_answer") == 3 and "Self-reflection: I skipped a step." in student_r1
    assert "Feedback:\n1. " in student_r1 and "2. " in student_r1
    reflection = next(p for p in calls if "Reflect on your mistake" in p)
    assert f"The correct final answer is {PROBLEM.answer}." in reflection  # reflection sees the gold, as a label
    # Edges: critiques and reflection point at the student's round-0 answer; each round-1 answer saw
    # 3 answers + 2 critiques + 1 reflection.
    kinds = [e.kind for e in mag.edges]
    assert kinds.count("critiques") == 2 and kinds.count("reflects_on") == 1 and kinds.count("reviews") == 2 + 2 + 4
    assert kinds.count("explains") == 2 and kinds.count("saw") == 3 * 6
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
    assert len(mag.of_kind("explanation")) == 2  # FAIR explains the initial mistake once, not every round
    assert result.usable  # accepted correct teacher answers exist: still training data (chosen vs the student's)


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
    cases = [({"B": "[3]", "C": "[3]"}, 3.0, False),          # mean 3 is not above 3
             ({"B": "[3]", "C": "[4]"}, 3.5, True),
             ({"B": "[9]", "C": "[4]"}, 4.0, True),           # out of range: dropped
             ({"B": "four", "C": "[2]"}, 2.0, False),         # unreadable: dropped
             ({"B": "Score: 4/5", "C": "4.5"}, 4.25, True),   # read as leniently as FAIR's code reads them
             ({"B": "great", "C": "no score"}, None, False)]  # no readable score: not accepted
    for scores, mean, accepted in cases:
        a, result = await _review_of_a(store, scores)
        assert (a.review_mean, a.accepted) == (mean, accepted), scores
        assert result.outcome == "solved" and result.rounds == 1  # everyone right in round 0: stop


async def _unlabeled(store, answers: dict[str, str], low: set[str] = frozenset(), student: str = "7",
                     **cfg: object):
    """Three scripted teachers answering `answers`; every review scores 5, except of an answer in `low` (1)."""
    from contextlib import ExitStack

    calls: list[str] = []
    with ExitStack() as stack:
        teachers = []
        for name in ("A", "B", "C"):
            def behave(prompt: str, me: str = name) -> Script:
                if "<solution>" in prompt:
                    return Script("ok\n[1]" if any(f"Final answer: {x}" in prompt for x in low) else "ok\n[5]")
                if "<explanation>" in prompt:
                    return Script("clear\n[5]")
                return Script(f"### Answer\nsteps\nFinal answer: {answers[me]}")
            teachers.append(agent(name, f"{stack.enter_context(serve_app(scripted_app(behave, calls)))}/v1"))
        s_url = stack.enter_context(serve_app(scripted_app(lambda p: Script(f"### Answer\n\nFinal answer: {student}"))))
        engine = DebateEngine(agent("student", f"{s_url}/v1", role="student"), teachers,
                              debate_config(max_rounds=2, **cfg), store)
        return await engine.run(DebateInput("What is 40 + 2?")), calls


async def test_consensus_needs_accepted_agreement_and_no_accepted_dissent(store):
    # Two accepted rationales agree on 42; the dissenting 41 was rejected by peer review: the consensus is 42.
    ok, calls = await _unlabeled(store, {"A": "42", "B": "42", "C": "41"}, low={"41"})
    assert (ok.gold, ok.gold_source, ok.usable) == ("42", "consensus", True)
    assert ok.student_correct_first is False
    # Prompts state a consensus as the teachers', never as "the correct answer".
    assert any("The teachers' consensus final answer is 42." in p for p in calls)
    assert not any("The correct final answer" in p for p in calls)
    # An accepted dissent is no consensus, even against a 2-1 majority.
    dissent, _ = await _unlabeled(store, {"A": "42", "B": "42", "C": "41"})
    assert (dissent.outcome, dissent.gold, dissent.usable) == ("no_gold", None, False)
    rejected, _ = await _unlabeled(store, {"A": "42", "B": "42", "C": "42"}, low={"42"})
    assert (rejected.outcome, rejected.gold, rejected.usable) == ("no_gold", None, False)
    # One accepted rationale is too few for pseudo_gold_min_teachers=2.
    few, _ = await _unlabeled(store, {"A": "42", "B": "43", "C": "41"}, low={"41", "43"})
    assert (few.outcome, few.gold) == ("no_gold", None)
    mag = store.get(few.debate_id)
    assert mag.status == "done" and not mag.usable and len(mag.answers(0)) == 4  # stored, marked unusable


HOSTED = {"A": "**Final Answer:** 42", "B": "The final answer is $\\boxed{42}$.", "C": "## Final answer\n42"}


async def test_replies_as_hosted_models_write_them_are_graded_and_unreadable_ones_never_wrong(store):
    from contextlib import ExitStack

    def teacher(style: str, finish: str = "stop"):
        def behave(prompt: str) -> Script:
            if "<solution>" in prompt or "<explanation>" in prompt:
                return Script("Looks right.\nScore: 5/5")
            return Script(f"Let me work it out: 40 + 2 = 42.\n\n{style}", finish_reason=finish)
        return behave

    with ExitStack() as stack:
        teachers = [agent(n, f"{stack.enter_context(serve_app(scripted_app(teacher(st))))}/v1")
                    for n, st in HOSTED.items()]
        odd = {"unparsed": teacher("I think it is forty-two-ish, hard to say."),
               "abstained": teacher("Final answer: I don't know"),
               "truncated": teacher("Final answer: 4", finish="length")}
        teachers += [agent(n, f"{stack.enter_context(serve_app(scripted_app(b)))}/v1") for n, b in odd.items()]
        s_url = stack.enter_context(serve_app(scripted_app(lambda p: Script("### Answer\n40+2=41\nFinal answer: 41"))))
        engine = DebateEngine(agent("student", f"{s_url}/v1", role="student"), teachers,
                              debate_config(max_rounds=2), store)
        result = await engine.run(DebateInput("What is 40 + 2?", "42", "feedback"))
    mag = store.get(result.debate_id)
    r0 = {n.agent: n for n in mag.answers(0)}
    assert {a: (r0[a].status, r0[a].answer, r0[a].correct) for a in HOSTED} == {a: ("ok", "42", True) for a in HOSTED}
    assert {a: (r0[a].status, r0[a].correct) for a in odd} == {a: (a, None) for a in odd}
    # Never critiqued, never asked to reflect: only the student (wrong) is.
    assert {n.target_agent for n in mag.of_kind("critique")} == {"student"}
    assert {n.agent for n in mag.of_kind("reflection")} == {"student"}
    assert all(n.accepted and n.review_mean == 5 for a, n in r0.items() if a in HOSTED)


async def test_the_students_debate_turn_is_trimmed_to_fit_its_context(store, reference_url):
    long = "step " * 2000  # a long-winded agent: its block is cut to block_tokens; the student's context is smaller
    prompts_seen: list[str] = []
    with serve_app(scripted_app(lambda p: Script(f"### Answer\n{long}\nFinal answer: 1"), prompts_seen)) as surl:
        student = agent("student", f"{surl}/v1", role="student")
        student.prompt_limit = 400  # type: ignore[attr-defined]
        engine = DebateEngine(student, reference_agents(reference_url), debate_config(max_rounds=2), store)
        result = await engine.run(DebateInput(PROBLEM.question, PROBLEM.answer, "dataset"))
    assert result.rounds == 2
    mag = store.get(result.debate_id)
    student_r1 = next(n for n in mag.answers(1) if n.agent == "student")
    teacher_r1 = next(n for n in mag.answers(1) if n.agent == "ref-a")
    budget = engine.budget
    assert budget.count(student_r1.prompt or "") <= 400 < budget.count(teacher_r1.prompt or "")
    assert student_r1.status == "ok" and student_r1.prompt.count("<agent_answer") == 3


async def test_metrics_count_how_replies_were_read_and_consensus_overruled_by_a_label(store):
    from contextlib import ExitStack

    from services.debate.metrics import DebateMetrics

    metrics = DebateMetrics(store)
    result, _ = await _unlabeled(store, {"A": "42", "B": "42", "C": "41"}, low={"41"})
    engine_metrics = DebateMetrics(store)

    with ExitStack() as stack:
        def behave(prompt: str) -> Script:
            return Script("ok\n[5]" if "<solution>" in prompt else "Final answer: I don't know")
        teachers = [agent(n, f"{stack.enter_context(serve_app(scripted_app(behave)))}/v1") for n in ("A", "B")]
        s_url = stack.enter_context(serve_app(scripted_app(lambda p: Script("cut", finish_reason="length"))))
        engine = DebateEngine(agent("student", f"{s_url}/v1", role="student"), teachers,
                              debate_config(max_rounds=2), store, observer=engine_metrics)
        await engine.run(DebateInput("What is 40 + 2?", "42", "dataset"))
    sample = engine_metrics.registry.get_sample_value
    # Two rounds (no answer was readable, so none stopped the debate), each reply counted by how it was read.
    assert sample("distillery_teacher_replies_total", {"agent": "A", "status": "abstained"}) == 2
    assert sample("distillery_teacher_replies_total", {"agent": "student", "status": "truncated"}) == 2
    assert sample("distillery_teacher_replies_total", {"agent": "A", "status": "ok"}) is None
    # A client label that contradicts the teachers' consensus of the first debate is counted at scrape time.
    mag = store.get(result.debate_id)
    store.enqueue([{"request_id": "r-over", "question": mag.question, "messages": []}])
    [item] = store.claim("w", 1, 60)
    store.attach_debate(item.id, result.debate_id)
    store.finish_item(item.id, ok=True, error=None, max_attempts=3)
    metrics.render()
    assert metrics.registry.get_sample_value("distillery_debate_consensus_overruled_total") == 0
    assert store.add_label("r-over", "41") == ("requeued", "r-over")
    metrics.render()
    assert metrics.registry.get_sample_value("distillery_debate_consensus_overruled_total") == 1
