"""The task suite: its solver, its splits, and the answer parsing the debate relies on."""

from __future__ import annotations

import pytest

from services.tasks.answers import answer_type_of, gsm8k_gold, read_answer, same_answer
from services.tasks.arithmetic import fmt, generate, solve


def test_the_solver_solves_every_generated_problem_exactly():
    problems = generate("train", 500, seed=3)
    assert {p.steps for p in problems} == {1, 2, 3}
    assert all(fmt(solve(p.question).answer) == p.answer for p in problems)


def test_splits_are_disjoint_and_reproducible():
    train, evals = generate("train", 300), generate("eval", 100)
    assert not {p.question for p in train} & {p.question for p in evals}
    assert generate("eval", 100) == evals and generate("eval", 100, seed=1) != evals


@pytest.mark.parametrize("q,answer", [("What is 17 + 25?", "42"), ("what is 6 x 7", "42"), ("Compute (2+3)*4", "20"),
                                      ("What is 7/2?", "3.5"), ("What is 3 \u00d7 4?", "12")])
def test_plain_arithmetic(q, answer):
    assert fmt(solve(q).answer) == answer


@pytest.mark.parametrize("q", ["Who wrote Hamlet?", "What is the capital of France?", "Natalia sold clips to 48 "
                               "of her friends in April. How many clips did she sell?", "What is 2 +"])
def test_questions_outside_the_suite_are_not_solved(q):
    assert solve(q) is None


def test_final_answer_parsing_and_equivalence():
    assert read_answer("### Answer\nwork\nFinal answer: $1,200.", "number").answer == "1,200"
    assert read_answer("Final answer: **B**", "choice").answer == "B"
    assert read_answer("Final answer: **B**", "text").answer == "B"
    assert read_answer("Final answer: abstain", "number").status == "abstained"
    assert read_answer("It is 42.", "number").status == "unparsed"
    assert same_answer("1200", "1,200", "number") and same_answer("42 apples", "42", "number")
    assert same_answer("0.5", "1/2", "number")
    assert not same_answer("41", "42", "number") and not same_answer(None, "42", "number")
    assert same_answer("(b)", "B", "choice") and not same_answer("C", "B", "choice")
    assert same_answer("The Eiffel tower", "eiffel Tower", "text") and answer_type_of("Paris") == "text"
    assert gsm8k_gold("so 5+5=10\n#### 1,010") == "1010"
