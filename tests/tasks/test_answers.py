"""The answer readers: the reply corpus, the score reader, the type of a label, and properties over any input."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.tasks.answers import (
    Reading,
    answer_type_of,
    read_answer,
    read_for_eval,
    read_score,
    same_answer,
)
from tests.tasks.reply_corpus import CORPUS, WRONG, Reply

STATUSES = {"ok", "unparsed", "abstained", "truncated"}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _id(r: Reply) -> str:
    return f"{r.answer_type}-{r.status}-{r.reply[:40]!r}"


# --- the corpus ---------------------------------------------------------------------------------------------------


def test_the_corpus_is_large_and_covers_every_status_and_type():
    assert len(CORPUS) >= 70
    assert len({r[:3] for r in CORPUS}) == len(CORPUS)
    assert len({r.reply for r in CORPUS if r.status == "ok"}) == sum(r.status == "ok" for r in CORPUS)
    assert {r.status for r in CORPUS} == STATUSES
    assert {r.answer_type for r in CORPUS} == {"number", "choice", "text"}
    assert {r.reply for r in CORPUS if r.status == "ok"} >= WRONG


@pytest.mark.parametrize("case", CORPUS, ids=_id)
def test_each_reply_reads_as_expected(case: Reply):
    reading = read_answer(case.reply, case.answer_type, finish_reason=case.finish_reason)
    assert reading == Reading(case.answer, case.status)


@pytest.mark.parametrize("case", [r for r in CORPUS if r.status == "ok"], ids=_id)
def test_each_answer_is_graded_as_it_deserves(case: Reply):
    answer = read_answer(case.reply, case.answer_type, finish_reason=case.finish_reason).answer
    assert same_answer(answer, case.gold, case.answer_type) is (case.reply not in WRONG)


def test_no_right_answer_in_the_corpus_is_graded_wrong_and_no_wrong_one_right():
    graded = {r.reply: same_answer(read_answer(r.reply, r.answer_type, finish_reason=r.finish_reason).answer,
                                   r.gold, r.answer_type)
              for r in CORPUS if r.status == "ok"}
    assert [reply for reply, right in graded.items() if not right and reply not in WRONG] == []
    assert [reply for reply, right in graded.items() if right and reply in WRONG] == []


@pytest.mark.parametrize("case", [r for r in CORPUS if r.status != "ok"], ids=_id)
def test_unparsed_abstained_and_truncated_replies_carry_no_answer(case: Reply):
    reading = read_answer(case.reply, case.answer_type, finish_reason=case.finish_reason)
    assert reading.answer is None
    assert not same_answer(reading.answer, case.gold, case.answer_type)


# --- reading: details the corpus does not pin ------------------------------------------------------------------------


def test_truncation_wins_over_any_text():
    assert read_answer("Final answer: 42", "number", finish_reason="length") == Reading(None, "truncated")
    assert read_answer(None, "text", finish_reason="length") == Reading(None, "truncated")
    assert read_answer("Final answer: 42", "number", finish_reason="stop") == Reading("42", "ok")


def test_no_reply_is_unparsed():
    assert read_answer(None, "number") == Reading(None, "unparsed")
    assert read_answer("   \n ", "choice") == Reading(None, "unparsed")


def test_the_last_number_is_not_the_answer_without_a_marker():
    assert read_answer("17 + 25 = 42", "number").status == "unparsed"
    assert read_answer("Sum: 42", "number").status == "unparsed"


def test_markers_in_prose_are_not_markers():
    reply = "Before I give my final answer, let me check: 17 + 25 = 42.\n\nFinal answer: 42"
    assert read_answer(reply, "number") == Reading("42", "ok")
    assert read_answer("Unknown variables aside, it is 4.", "number").status == "unparsed"
    assert read_answer("Final answer: Na", "text") == Reading("Na", "ok")  # sodium, not N/A


def test_text_answers_keep_their_first_line_only():
    assert read_answer("Final answer: Paris\nIt has been the capital since 508.", "text").answer == "Paris"


@pytest.mark.parametrize("reply,letter", [("(c)", "C"), ("**B**", "B"), ("Final answer: b", "B"),
                                          ("Answer: Option C", "C"), ("The answer is C, Paris.", "C"),
                                          ("Final answer: Paris (C)", "C")])
def test_choice_letters(reply, letter):
    assert read_answer(reply, "choice") == Reading(letter, "ok")


def test_read_for_eval_falls_back_to_the_last_number_for_numbers_only():
    reply = "It costs 3 dollars for 2 pens, so 10 pens cost 15 dollars."
    assert read_answer(reply, "number").status == "unparsed"
    assert read_for_eval(reply, "number") == "15"
    assert read_for_eval("The total is 1,234.", "number") == "1,234"
    assert read_for_eval(reply, "text") is None
    assert read_for_eval("Final answer: 41\n\nso 17 + 25 = 42", "number") == "41"  # the marked answer first
    assert read_for_eval("Final answer: I don't know", "number") is None  # an abstention has nothing to grade
    assert read_for_eval("No digits at all.", "number") is None
    assert read_for_eval(None, "number") is None


# --- grading --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer,gold", [("1,234", "1234"), ("\\frac{3}{4}", "0.75"), ("42.0", "42"),
                                         ("42 apples", "42"), ("$42", "42"), ("42%", "42"), ("0.5", "1/2"),
                                         ("\\dfrac{1}{2}", "0.5"), ("-3.5", "-7/2"), ("\\boxed{42}", "42"),
                                         ("\u221212", "-12"), ("+5", "5"), ("12 \\text{ cm}", "12"),
                                         ("42 (17 + 25)", "42"), ("\u20ac20", "20"), ("1,000,000", "1000000")])
def test_same_number(answer, gold):
    assert same_answer(answer, gold, "number")
    assert same_answer(gold, answer, "number")


@pytest.mark.parametrize("answer,gold", [("41", "42"), ("42", "-42"), ("4.2", "42"), ("1,243", "1234"),
                                         ("\\frac{1}{3}", "0.5"), ("1,000", "1"), ("123456789", "123456788"),
                                         ("Paris", "42"), ("", "42")])
def test_different_numbers(answer, gold):
    assert not same_answer(answer, gold, "number")


def test_the_contract_examples():
    assert same_answer("41", "42", "number") is False
    assert same_answer("1,234", "1234", "number") is True
    assert same_answer("\\frac{3}{4}", "0.75", "number") is True
    assert same_answer("42.0", "42", "number") is True


def test_choice_and_text():
    assert same_answer("(b)", "B", "choice") and same_answer("C", "(C)", "choice")
    assert not same_answer("B", "C", "choice") and not same_answer("Paris", "C", "choice")
    assert same_answer("The Eiffel tower", "eiffel Tower", "text") and same_answer("Paris.", "paris", "text")
    assert same_answer("an apple", "Apple!", "text")
    assert not same_answer("Paris", "Rome", "text") and not same_answer("...", "!!", "text")


def test_none_is_never_the_same():
    for answer_type in ("number", "choice", "text"):
        assert not same_answer(None, "42", answer_type)
        assert not same_answer("42", None, answer_type)
        assert not same_answer(None, None, answer_type)


@pytest.mark.parametrize("answer", ["9^{9^{9^{9}}}", "10^{10^{10}}", "100!!", "(10^{100})!",
                                    "99999999999999999999999999999999999999^99999999", "2^{10^{5}}"])
def test_monstrous_expressions_are_refused_quickly_not_computed(answer):
    assert not same_answer(answer, "42", "number")  # each would keep sympy busy for minutes


def test_numbers_are_compared_outside_the_main_thread():
    """math-verify's own timeout is a SIGALRM, which raises outside the main thread; it must be off."""
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.extend([same_answer("\\frac{7}{4}", "1.75", "number"),
                                                              same_answer("1,235", "1234", "number")]))
    worker.start()
    worker.join(30)
    assert results == [True, False]


# --- the type a label implies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gold,answer_type", [("C", "choice"), ("(C)", "choice"), ("42", "number"), ("-3.5", "number"),
                                              ("1,234", "number"), ("\\frac{1}{2}", "number"), ("3/4", "number"),
                                              ("$1,200", "number"), ("42 apples", "number"), ("2^{10}", "number"),
                                              ("Paris", "text"), ("The Eiffel Tower", "text"), ("a", "text")])
def test_answer_type_of(gold, answer_type):
    assert answer_type_of(gold) == answer_type


# --- peer-review scores ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("review,score", [
    ("The critique is fair. [4]", 4.0), ("Mostly right. [4/5]", 4.0), ("Score: 4/5", 4.0), ("Score: 4", 4.0),
    ("**Score:** 4", 4.0), ("Rating: 4 out of 5", 4.0), ("Careful and correct.\n\n4.5", 4.5), ("[[4]]", 4.0),
    ("Score: 2\n\nOn second thought, Score: 3", 3.0), ("Grade = 5", 5.0), ("Score: 1", 1.0),
    ("See the step in [2]. Overall score: 3.5", 3.5), ('{"reasoning": "sound", "score": 5}', 5.0),
])
def test_read_score(review, score):
    assert read_score(review) == score


@pytest.mark.parametrize("review", ["Score: 9", "Score: 0", "[0/5]", "Rating: 4 out of 10", "No score given.", "",
                                    None, "Score: 4\n\nScore: 9"])
def test_unreadable_or_out_of_range_scores_are_none(review):
    assert read_score(review) is None


# --- properties -----------------------------------------------------------------------------------------------------

TEMPLATES = [
    "Final answer: {}", "**Final Answer:** {}", "**Final answer: {}**", "## Final answer\n{}",
    "The final answer is {}.",
    "The final answer is $\\boxed{{{}}}$", "Work: 1 + 2 = 3, then $\\boxed{{{}}}$ it is.", "Answer: {}",
    "**Answer:** {}", 'Here you go.\n{{"answer": {}}}', '```json\n{{"answer": "{}"}}\n```', "The answer is {}.",
    "<think>\nFinal answer: 7\n</think>\n\nFinal answer: {}", "Final answer: 41\nWait.\nFinal answer: {}", "{}",
]
INTS = st.integers(min_value=-10**12, max_value=10**12)


@FAST
@given(n=INTS, template=st.sampled_from(TEMPLATES), separators=st.booleans())
def test_any_integer_in_any_template_reads_as_itself(n, template, separators):
    written = f"{n:,}" if separators and "json" not in template and '"answer"' not in template else str(n)
    reading = read_answer(template.format(written), "number")
    assert reading.status == "ok"
    assert same_answer(reading.answer, str(n), "number")


@FAST
@given(n=INTS, m=INTS)
def test_different_integers_are_never_the_same(n, m):
    assert same_answer(str(n), str(m), "number") is (n == m)


@FAST
@given(n=INTS)
def test_thousands_separators_do_not_matter_either_way(n):
    assert same_answer(f"{n:,}", str(n), "number") and same_answer(str(n), f"{n:,}", "number")


@FAST
@given(text=st.text(max_size=400), answer_type=st.sampled_from(["number", "choice", "text"]),
       finish_reason=st.sampled_from([None, "stop", "length"]))
def test_read_answer_never_raises_and_answers_only_when_ok(text, answer_type, finish_reason):
    reading = read_answer(text, answer_type, finish_reason=finish_reason)
    assert reading.status in STATUSES
    assert (reading.answer is not None) == (reading.status == "ok")
    if finish_reason == "length":
        assert reading.status == "truncated"


@FAST
@given(text=st.text(alphabet=st.sampled_from(list("0123456789+-*/^!{}()\\., $%frac boxed")), max_size=40))
def test_same_answer_never_raises_on_mathy_noise(text):
    assert same_answer(text, "42", "number") in (True, False)


@FAST
@given(text=st.text(max_size=300) | st.from_regex(r"(Score|Rating|\[)[:\s]*[0-9]{1,2}(\.[0-9])?(/[0-9]{1,2})?\]?"))
def test_read_score_is_none_or_within_one_to_five(text):
    score = read_score(text)
    assert score is None or 1.0 <= score <= 5.0
