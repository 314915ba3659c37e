"""The reference teacher over real HTTP: exact answers, deliberate error styles, critiques, explanations, reviews."""

from __future__ import annotations

from services.config import ReferenceProfile, TeacherConfig
from services.debate import prompts
from services.tasks.answers import read_answer, read_score
from services.tasks.arithmetic import generate
from services.teachers.reference import ReferenceTeacher
from services.teachers.server import build_teacher_app
from tests.http_servers import chat, serve_app

PROBLEMS = [p for p in generate("eval", 60) if p.steps >= 2][:20]


def answers(profile: ReferenceProfile) -> list[str | None]:
    t = ReferenceTeacher("t", profile)
    return [read_answer(t.reply(prompts.answer_prompt(p.question, "number")), "number").answer for p in PROBLEMS]


def test_an_exact_teacher_is_always_right_and_erring_ones_err_at_their_rate_in_their_style():
    assert answers(ReferenceProfile(error_rate=0)) == [p.answer for p in PROBLEMS]
    off = answers(ReferenceProfile(error_rate=1.0, error_styles=["off_by_one"]))
    assert all(abs(int(a) - int(p.answer)) == 1 for a, p in zip(off, PROBLEMS, strict=True))
    half = answers(ReferenceProfile(error_rate=0.5, seed=7))
    wrong = sum(a != p.answer for a, p in zip(half, PROBLEMS, strict=True))
    assert 3 <= wrong <= 17 and half == answers(ReferenceProfile(error_rate=0.5, seed=7))  # deterministic


def test_dropped_step_leaves_a_step_out_and_the_critique_finds_it():
    p = next(p for p in PROBLEMS if p.steps == 3)
    bad = ReferenceTeacher("t", ReferenceProfile(error_rate=1.0, error_styles=["dropped_step"])).reply(
        prompts.answer_prompt(p.question, "number"))
    assert bad.count("Step ") == 2 and read_answer(bad, "number").answer != p.answer
    good = ReferenceTeacher("u", ReferenceProfile())
    critique = good.reply(prompts.critique_prompt(p.question, "irrelevant", bad, p.answer, "dataset"))
    assert critique.startswith("Feedback:") and f"the correct answer is {p.answer}" in critique
    explanation = good.reply(prompts.explanation_prompt(p.question, bad, p.answer, "consensus"))
    assert f"the correct answer is {p.answer}" in explanation and "A correct solution: " in explanation
    # Its review of explanations: one that finds the mistake and names the gold passes, one that does not fails.
    review = prompts.explanation_review_prompt
    assert read_score(good.reply(review(p.question, bad, explanation, p.answer, "dataset"))) == 5
    assert read_score(good.reply(review(p.question, bad, "Try harder.", p.answer, "dataset"))) == 2


def test_reviews_use_the_fair_score_format():
    p = PROBLEMS[0]
    t = ReferenceTeacher("t", ReferenceProfile())
    right = t.reply(prompts.answer_prompt(p.question, "number"))
    assert read_score(t.reply(prompts.review_prompt(p.question, right, None))) == 5
    wrong = right.replace(f"Final answer: {p.answer}", "Final answer: 99999")
    assert read_score(t.reply(prompts.review_prompt(p.question, wrong, p.answer, "dataset"))) == 1
    # A consensus hint is read like a label's.
    assert read_score(t.reply(prompts.review_prompt(p.question, wrong, p.answer, "consensus"))) == 1


def test_served_over_http_it_answers_plain_arithmetic_and_abstains_honestly():
    teachers = [TeacherConfig(name="a", reference=ReferenceProfile()),
                TeacherConfig(name="b", reference=ReferenceProfile(error_rate=1.0, error_styles=["off_by_one"]))]
    with serve_app(build_teacher_app(teachers)) as url:
        assert read_answer(chat(f"{url}/a", "What is 17 + 25?"), "number").answer == "42"
        assert read_answer(chat(f"{url}/b", "What is 17 + 25?"), "number").answer in {"41", "43"}
        assert read_answer(chat(f"{url}/a", "Who wrote Hamlet?"), "text").status == "abstained"
