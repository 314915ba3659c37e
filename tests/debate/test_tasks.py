"""Task-aware debates: a task's answer spec reads the answers, only the task's teachers debate, a client label outside
the task's answers is ignored, and a free-form (`text`) task is graded by the teachers as judges against its rubric.
Real HTTP teachers (the labelled BANKING77 teacher, stand-in hosted judges), a real SQLite store."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest

from ray_jobs.trees.build import build
from services.capture.sink import question_of
from services.config import ReferenceProfile, TaskProfile, TeacherConfig
from services.debate import prompts
from services.debate.engine import DebateEngine, DebateInput
from services.teachers.server import build_teacher_app
from tests.debate.conftest import agent, debate_config, reference_agents
from tests.debate.test_engine import PROBLEM, wrong_then_right
from tests.http_servers import Script, scripted_app, serve_app

BANKING = Path("/work/shared/data/banking77")
pytestmark = pytest.mark.skipif(not (BANKING / "train.jsonl").is_file(), reason="BANKING77 data not present")


# ---- a label task: BANKING77 intents ---------------------------------------------------------------------------
def banking_task() -> TaskProfile:
    return TaskProfile(name="banking77", answer_type="label", labels_file=BANKING / "labels.json")


def banking_row() -> dict[str, str]:
    """A train.jsonl message whose intent is not the student's wrong guess (card_delivery_estimate)."""
    with (BANKING / "train.jsonl").open(encoding="utf-8") as f:
        rows = (json.loads(line) for line in f if line.strip())
        return next(r for r in rows if r["label"] == "card_arrival")


def banking_question(text: str) -> str:
    """The question as the gateway makes it from the app's request: system prompt + the customer's message."""
    system = (BANKING / "system_prompt.txt").read_text(encoding="utf-8").removesuffix("\n")
    q = question_of([{"role": "system", "content": system}, {"role": "user", "content": text}])
    assert q is not None and "<system_prompt>" in q and q.endswith(text)
    return q


LABELLED = [TeacherConfig(name=n, reference=ReferenceProfile(labels_file=BANKING / "train.jsonl", error_rate=0.0,
                                                             seed=s)) for n, s in (("intent-a", 1), ("intent-b", 2))]


def intent_student(right: str):
    """A student routing wrongly in prose in round 0, rightly once it has seen the debate."""
    def behave(prompt: str) -> Script:
        if "<agent_answer" in prompt:
            return Script(f"### Answer\nThe others point out the customer is waiting for a card already sent.\n"
                          f"Final answer: {right}")
        if "Reflect on your mistake" in prompt:
            return Script("Self-reflection: I confused a delivery estimate with a card that has not arrived.")
        return Script("### Answer\nThe customer wants to know when a card will be delivered, so this is about "
                      "the delivery estimate.\nFinal answer: card_delivery_estimate")
    return behave


async def _banking_debate(store, label: str | None = None, label_source: str | None = None):
    row = banking_row()
    task = banking_task()
    calls: list[str] = []
    with ExitStack() as stack:
        turl = stack.enter_context(serve_app(build_teacher_app(LABELLED)))
        surl = stack.enter_context(serve_app(scripted_app(intent_student(row["label"]), calls)))
        teachers = [agent(t.name, f"{turl}/{t.name}/v1") for t in LABELLED]
        engine = DebateEngine(agent("student", f"{surl}/v1", role="student"), teachers,
                              debate_config(max_rounds=3), store)
        result = await engine.run(DebateInput(banking_question(row["text"]), label, label_source, task=task))
    return row, task, result, store.get(result.debate_id), calls


async def test_label_task_reads_intents_reaches_a_consensus_label_and_lists_the_labels(store):
    row, task, result, mag, calls = await _banking_debate(store)
    assert mag.answer_kind == "label" and mag.task == "banking77" and mag.note is None
    # Round 0: the labelled teachers route the message to the file's label; the student's prose guess is wrong.
    r0 = {n.agent: n for n in mag.answers(0)}
    assert {a: (n.status, n.answer, n.correct) for a, n in r0.items()} == {
        "student": ("ok", "card_delivery_estimate", False),
        "intent-a": ("ok", row["label"], True), "intent-b": ("ok", row["label"], True)}
    # No client label: the gold is the teachers' consensus, a label of the set.
    assert (result.gold, result.gold_source) == (row["label"], "consensus")
    assert (mag.gold, mag.gold_source) == (row["label"], "consensus") and row["label"] in task.spec.labels
    assert all(n.accepted for n in r0.values() if n.role == "teacher")
    # FAIR: each teacher explains the student's mistake, each explanation peer-reviewed and accepted.
    explanations = mag.of_kind("explanation", 0)
    assert sorted(n.agent for n in explanations) == ["intent-a", "intent-b"]
    assert all(n.status == "ok" and row["label"] in (n.text or "") and n.accepted for n in explanations)
    # The app's system prompt lists every label already: the format line points to it instead of a second copy
    # (which would take the context a small student needs); a question without the list gets the list.
    line = prompts.format_line(task.spec, mag.question)
    assert line == "The final answer must be exactly one of the labels the request lists, written as listed."
    assert r0["student"].prompt == prompts.answer_prompt(mag.question, task.spec) and line in calls[0]
    debate_turn = next(p for p in calls if "<agent_answer" in p)
    assert line in debate_turn  # the debate round's prompt too
    bare = prompts.answer_prompt("I am still waiting on my card?", task.spec)
    assert ("The final answer must be exactly one of these labels, written as listed: card_arrival, card_linking, "
            "exchange_rate") in bare
    # Solved in round 1: the student routes rightly after the debate.
    assert (result.outcome, result.rounds, result.stop_round) == ("solved", 2, 1)
    assert result.student_correct_first is False and result.student_correct_last is True
    assert result.usable and mag.usable
    assert {n.agent: (n.answer, n.correct) for n in mag.answers(1)} == {
        a: (row["label"], True) for a in ("student", "intent-a", "intent-b")}


async def test_label_task_ignores_a_client_label_outside_the_set_and_falls_back_to_consensus(store):
    row, _, result, mag, _ = await _banking_debate(store, label="card_never_came", label_source="feedback")
    assert (result.gold, result.gold_source) == (row["label"], "consensus")
    assert (mag.gold, mag.gold_source) == (row["label"], "consensus")
    assert result.outcome == "solved" and result.usable
    # Nothing was ever said to be "the correct answer" on the strength of the ignored label.
    assert not any("card_never_came" in (n.prompt or "") for n in mag.nodes)
    # The debate records why the client's label was not used.
    assert mag.note is not None and "card_never_came" in mag.note and "ignored" in mag.note
    assert "banking77" in mag.note


# ---- a text task: free-form answers, the teachers as judges -------------------------------------------------------
ARTICLE = ("Summarise in one short phrase: The central bank raised interest rates by half a point on Tuesday, "
           "its third increase this year, saying inflation at 6% was still far above its 2% target.")
RUBRIC = "Score 5 when the summary names the rate rise and its reason (inflation), 4 when it names only the rate rise."
JUDGE_OPENING = prompts.JUDGE.split("{rubric}")[0]
SUMMARIES = TaskProfile(name="summaries", answer_type="text", judge_threshold=4, rubric=RUBRIC)


def hosted_judge(final: str, key: str = "raised rates", bonus: str = "inflation"):
    """A hosted LLM teacher for free-form requests: answers in prose ending `Final answer: <final>`, and judges an
    answer (`prompts.JUDGE`) by a rule: [1] without `key`, [5] with `key` and `bonus`, [4] with `key` alone.
    Critiques, explanations and reviews of explanations as an LLM would write them."""
    def behave(prompt: str) -> Script:
        if prompt.startswith(JUDGE_OPENING):
            said = (prompts.tag(prompt, "answer") or "").lower()
            score = 1 if key not in said else 5 if bonus in said else 4
            return Script(f"The answer {'names' if score > 1 else 'misses'} the main event.\n[{score}]")
        if "<explanation>" in prompt:
            return Script("The explanation names what the summary missed.\n[5]")
        if "<other_answer>" in prompt:
            return Script("Feedback: the summary must name the main event, the rate rise.")
        if "<student_answer>" in prompt:
            return Script("The student summarised a detail, not the main event; name the rate rise and why.")
        if "<your_answer>" in prompt:
            return Script("Self-reflection: nothing to add.")
        return Script(f"### Answer\nThe article is about a policy decision and its reason.\nFinal answer: {final}")
    return behave


def summary_student(prompt: str) -> Script:
    if "<agent_answer" in prompt:
        return Script("### Answer\nThe others name the policy decision.\n"
                      "Final answer: The central bank raised rates to fight inflation")
    if "Reflect on your mistake" in prompt:
        return Script("Self-reflection: I summarised a detail instead of the main event.")
    return Script("### Answer\nThe article gives a number.\nFinal answer: A half point this Tuesday")


async def _summary_debate(store, finals: dict[str, str], key: str = "raised rates", task: TaskProfile = SUMMARIES):
    calls: dict[str, list[str]] = {n: [] for n in [*finals, "student"]}
    with ExitStack() as stack:
        teachers = [agent(n, f"{stack.enter_context(serve_app(scripted_app(hosted_judge(f, key), calls[n])))}/v1")
                    for n, f in finals.items()]
        surl = stack.enter_context(serve_app(scripted_app(summary_student, calls["student"])))
        engine = DebateEngine(agent("student", f"{surl}/v1", role="student"), teachers,
                              debate_config(max_rounds=3), store)
        result = await engine.run(DebateInput(ARTICLE, task=task))
    return result, store.get(result.debate_id), calls


def reviews_of(mag, round_: int, kind: str = "answer") -> list[tuple[str, str, float | None]]:
    by_id = {n.id: n for n in mag.nodes}
    out = [(by_id[e.src], by_id[e.dst]) for e in mag.edges if e.kind == "reviews"]
    return sorted((rv.agent, t.agent, rv.score) for rv, t in out if t.kind == kind and t.round == round_)


async def test_text_task_is_graded_by_the_teachers_as_judges_and_trains_on_their_verdicts(store):
    finals = {"judge-a": "Central bank raised rates to curb inflation", "judge-b": "Bank raised rates again"}
    result, mag, calls = await _summary_debate(store, finals)
    assert mag.answer_kind == "text" and mag.task == "summaries"
    # Every round-0 answer, the student's included, is judged by the teachers other than its author.
    assert reviews_of(mag, 0) == [("judge-a", "judge-b", 4), ("judge-a", "student", 1),
                                  ("judge-b", "judge-a", 5), ("judge-b", "student", 1)]
    r0 = {n.agent: n for n in mag.answers(0)}
    assert {a: (n.review_mean, n.correct, n.accepted) for a, n in r0.items()} == {
        "student": (1.0, False, False), "judge-a": (5.0, True, True), "judge-b": (4.0, True, True)}
    # The judge prompt carries the task's rubric and the judged reply; no reference (no client label).
    judged = [n for n in mag.of_kind("review", 0) if n.prompt and n.prompt.startswith(JUDGE_OPENING)]
    assert len(judged) == 4 and all(RUBRIC in (n.prompt or "") and "<hint>" not in (n.prompt or "") for n in judged)
    assert any(p.startswith(JUDGE_OPENING) and RUBRIC in p for p in calls["judge-a"])
    # The gold is the best-judged passing teacher answer, a consensus.
    assert (result.gold, result.gold_source) == (finals["judge-a"], "consensus")
    assert (mag.gold, mag.gold_source) == (finals["judge-a"], "consensus")
    # FAIR explains the student's failing answer; the explanations are reviewed as explanations.
    assert sorted(n.agent for n in mag.of_kind("explanation", 0)) == ["judge-a", "judge-b"]
    assert all(n.accepted for n in mag.of_kind("explanation", 0))
    # Round 1: the student's new answer passes the judges; every round-1 answer judged again.
    r1 = {n.agent: n for n in mag.answers(1)}
    assert r1["student"].correct is True and r1["student"].review_mean == 5.0
    assert [(j, a) for j, a, _ in reviews_of(mag, 1)] == [("judge-a", "judge-b"), ("judge-a", "student"),
                                                          ("judge-b", "judge-a"), ("judge-b", "student")]
    assert (result.outcome, result.rounds, result.stop_round) == ("solved", 2, 1)
    assert result.student_correct_first is False and result.student_correct_last is True
    assert result.usable and mag.usable
    # Training data: the judges' verdicts are the preference: chosen = passing answers, rejected = the failing one.
    data = build([mag])
    assert data.mag_ids == [mag.id] and len(data.trees) == 1
    [node] = data.trees
    assert node.round == 0 and node.prompt == ARTICLE
    assert len(node.chosen) == 2 and {c.rsplit("Final answer: ", 1)[1] for c in node.chosen} == set(finals.values())
    assert node.rejected == [f"### Answer\nThe article gives a number.\nFinal answer: {r0['student'].answer}"]
    assert node.pairs == [(0, 0), (1, 0)]


async def test_text_task_where_no_teacher_answer_passes_the_judges_has_no_gold(store):
    finals = {"judge-a": "Rates went up", "judge-b": "Bank raised rates again"}
    result, mag, _ = await _summary_debate(store, finals, key="half a point raised rates")  # nobody's answer has it
    assert (result.outcome, result.gold, result.gold_source, result.usable) == ("no_gold", None, "none", False)
    assert (mag.outcome, mag.gold, mag.usable, mag.rounds) == ("no_gold", None, False, 1)
    assert all(n.correct is False and n.review_mean == 1.0 for n in mag.answers(0))
    assert len(reviews_of(mag, 0)) == 4  # still every answer judged by the others
    assert not mag.of_kind("explanation") and not mag.of_kind("critique")
    assert build([mag]).trees == []


async def test_text_task_threshold_decides_which_judged_answers_pass(store):
    # With judge_threshold 4 a mean of 4 passes (above); with 5 only the 5 does.
    strict = SUMMARIES.model_copy(update={"judge_threshold": 5.0})
    finals = {"judge-a": "Central bank raised rates to curb inflation", "judge-b": "Bank raised rates again"}
    result, mag, _ = await _summary_debate(store, finals, task=strict)
    r0 = {n.agent: n for n in mag.answers(0)}
    assert (r0["judge-a"].correct, r0["judge-b"].correct) == (True, False)
    assert result.gold == finals["judge-a"]


# ---- the task's teachers only ------------------------------------------------------------------------------------
async def test_only_the_tasks_teachers_debate_it(store, reference_url):
    outsider_calls: list[str] = []
    task = TaskProfile(name="arith", answer_type="number", teachers=["ref-a", "ref-b"])
    with ExitStack() as stack:
        surl = stack.enter_context(serve_app(scripted_app(wrong_then_right)))
        ourl = stack.enter_context(serve_app(scripted_app(lambda p: Script("### Answer\nx\nFinal answer: 7\n[5]"),
                                                          outsider_calls)))
        teachers = [*reference_agents(reference_url), agent("ref-c", f"{ourl}/v1")]
        engine = DebateEngine(agent("student", f"{surl}/v1", role="student"), teachers, debate_config(), store)
        result = await engine.run(DebateInput(PROBLEM.question, PROBLEM.answer, "dataset", task=task))
    mag = store.get(result.debate_id)
    assert (result.outcome, result.stop_round, result.usable) == ("solved", 1, True)
    assert [a["name"] for a in mag.agents] == ["student", "ref-a", "ref-b"]
    assert {n.agent for n in mag.nodes} == {"student", "ref-a", "ref-b"}
    assert {n.target_agent for n in mag.nodes} <= {None, "student", "ref-a", "ref-b"}
    assert outsider_calls == []  # never asked to answer, critique, explain or review
    # Without a teacher list, a task is debated by every configured teacher.
    everyone = TaskProfile(name="arith", answer_type="number")
    assert [t.name for t in engine.teachers_for(everyone)] == ["ref-a", "ref-b", "ref-c"]
    assert [t.name for t in engine.teachers_for(None)] == ["ref-a", "ref-b", "ref-c"]


# ---- regression: no task ---------------------------------------------------------------------------------------
async def test_a_taskless_debate_with_a_numeric_label_still_debates_as_number(store, reference_url):
    calls: list[str] = []
    odd_form = f"{PROBLEM.answer}.00"  # equal as a number, not as text

    def student(prompt: str) -> Script:
        return Script(f"### Answer\nWorked it out.\nFinal answer: {odd_form}")

    with serve_app(scripted_app(student, calls)) as surl:
        engine = DebateEngine(agent("student", f"{surl}/v1", role="student"), reference_agents(reference_url),
                              debate_config(), store)
        result = await engine.run(DebateInput(PROBLEM.question, PROBLEM.answer, "dataset"))
    mag = store.get(result.debate_id)
    assert mag.answer_kind == "number" and (mag.gold, mag.gold_source) == (PROBLEM.answer, "dataset")
    assert mag.note is None
    assert prompts.FORMAT_LINE["number"] in calls[0]
    r0 = {n.agent: n for n in mag.answers(0)}
    assert r0["student"].answer == odd_form and r0["student"].correct is True  # math equivalence, not text
    assert all(n.correct for n in r0.values())
    assert (result.outcome, result.rounds, result.stop_round) == ("solved", 1, 0)
    # Teachers' rationales peer-reviewed with the usual review prompt, not judged.
    assert all("<solution>" in (n.prompt or "") for n in mag.of_kind("review"))


# ---- through the worker: an ignored label must not re-queue the request ---------------------------------------------
async def test_worker_finishes_an_item_whose_label_the_task_ignores_instead_of_requeueing_it(store):
    """Feedback sent before its request was captured is not checked against the task (`POST /v1/feedback` can only
    check a request it knows): it is attached at enqueue. The debate ignores it and reaches a consensus; finishing
    the item must not then treat the ignored label as "a label that arrived meanwhile and disagrees": that
    supersedes the debate and re-queues the item, and every later debate of it ends the same way."""
    from sqlalchemy import select

    from services.debate.worker import DebateWorker
    from services.store.debates import CaptureRow

    row, task = banking_row(), banking_task()
    assert store.add_label("r-early", "card_never_came") == ("pending", "r-early")
    store.enqueue([{"request_id": "r-early", "question": banking_question(row["text"]), "messages": [],
                    "task": "banking77"}])
    cfg = debate_config(max_rounds=3)
    with ExitStack() as stack:
        turl = stack.enter_context(serve_app(build_teacher_app(LABELLED)))
        surl = stack.enter_context(serve_app(scripted_app(intent_student(row["label"]))))
        engine = DebateEngine(agent("student", f"{surl}/v1", role="student"),
                              [agent(t.name, f"{turl}/{t.name}/v1") for t in LABELLED], cfg, store)
        worker = DebateWorker(engine, store, cfg, owner="w1", task_of=lambda name: task)
        [item] = store.claim("w1", 1, 60)
        assert (item.task, item.label, item.label_source) == ("banking77", "card_never_came", "feedback")
        await worker._debate(item)
    [mag] = store.list(with_graph=False)
    assert store.queue_counts() == {"done": 1}, mag.note
    assert (mag.status, mag.usable) == ("done", True)
    assert (mag.gold, mag.gold_source) == (row["label"], "consensus")
    with store.db.session() as s:  # the worker dropped the label before the debate, and said why
        capture = s.scalar(select(CaptureRow).where(CaptureRow.request_id == "r-early"))
        assert capture is not None and capture.label is None and "dropped" in (capture.error or "")
