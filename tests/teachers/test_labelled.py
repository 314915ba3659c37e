"""The labelled teacher on the real BANKING77 file: labels in prose, plausible errors at its rate, honest
abstentions, critiques and reviews against the file's labels, and served over real HTTP next to the arithmetic one."""

from __future__ import annotations

import json
from pathlib import Path

from services.capture.sink import question_of
from services.config import ReferenceProfile, TeacherConfig
from services.debate import prompts
from services.tasks.answers import read_answer, read_score
from services.teachers.labelled import LabelledTeacher
from services.teachers.server import build_teacher_app
from tests.http_servers import chat, serve_app

DATA = Path("/work/shared/data/banking77")
TRAIN = DATA / "train.jsonl"
SYSTEM = (DATA / "system_prompt.txt").read_text(encoding="utf-8").removesuffix("\n")
LABELS = set(json.loads((DATA / "labels.json").read_text(encoding="utf-8")))
ROWS = [json.loads(line) for line in TRAIN.read_text(encoding="utf-8").splitlines() if line.strip()]
SAMPLE = ROWS[::40]  # 251 messages across all 77 labels (the file is grouped by label)


def question(message: str) -> str:
    """The debated question as the gateway captures a BANKING77 request: the app's system prompt, then the message."""
    q = question_of([{"role": "system", "content": SYSTEM}, {"role": "user", "content": message}])
    assert q is not None
    return q


def ask(message: str) -> str:
    return prompts.answer_prompt(question(message), "text")


def teacher(error_rate: float = 0.0, seed: int = 0, name: str = "t") -> LabelledTeacher:
    return LabelledTeacher(name, ReferenceProfile(labels_file=TRAIN, error_rate=error_rate, seed=seed))


def label_in(reply: str) -> str | None:
    return read_answer(reply, "text").answer


def test_an_exact_teacher_answers_every_message_with_its_label_in_prose():
    t = teacher()
    assert {r["label"] for r in SAMPLE} == LABELS
    for r in SAMPLE:
        reply = t.reply(ask(r["text"]))
        assert label_in(reply) == r["label"], (r, reply)
    reply = t.reply(ask(SAMPLE[0]["text"]))
    assert reply.startswith("### Answer\nThe customer says: ") and reply.count("\n") >= 3
    # Whitespace and case do not hide a message; a debate round's prompt is answered like round 0's.
    r = next(r for r in ROWS if r["label"] == "reverted_card_payment?")
    assert label_in(t.reply(ask("  " + r["text"].upper().replace(" ", "  ") + "\n"))) == "reverted_card_payment?"
    block = prompts.render_block(1, prompts.Block("The customer wants a refund.", "request_refund"))
    assert label_in(t.reply(prompts.debate_prompt(question(r["text"]), "text", [block]))) == r["label"]


def test_an_erring_teacher_errs_at_its_rate_with_plausible_wrong_labels_deterministically():
    t = teacher(error_rate=0.3, seed=3)
    replies = [t.reply(ask(r["text"])) for r in SAMPLE]
    wrong = [(r["label"], label_in(a)) for r, a in zip(SAMPLE, replies, strict=True) if label_in(a) != r["label"]]
    assert 0.18 * len(SAMPLE) <= len(wrong) <= 0.42 * len(SAMPLE)
    assert all(given in LABELS and given != gold for gold, given in wrong)
    assert len({given for _, given in wrong}) > 10  # not one stock wrong label
    # The same seed and prompt give the same reply (a fresh teacher too); another seed errs elsewhere.
    again = teacher(error_rate=0.3, seed=3)
    assert [again.reply(ask(r["text"])) for r in SAMPLE] == replies
    other = [teacher(error_rate=0.3, seed=4).reply(ask(r["text"])) for r in SAMPLE]
    assert other != replies
    always = teacher(error_rate=1.0)
    assert all(label_in(always.reply(ask(r["text"]))) != r["label"] for r in SAMPLE[:40])
    # Plausible: a wrong label is one of the few closest to the right one, not any label at random.
    arrivals = [always.reply(ask(r["text"])) for r in ROWS if r["label"] == "card_arrival"]
    given = {label_in(a) for a in arrivals}
    assert 2 <= len(given) <= 3 and given <= {"card_delivery_estimate", "order_physical_card", "get_physical_card",
                                              "transfer_not_received_by_recipient", "card_linking"}


def test_a_message_not_in_the_file_gets_an_honest_abstention():
    t = teacher()
    for message in ["What is 17 + 25?", "Who wrote Hamlet?", SAMPLE[5]["text"] + " Also, who wrote Hamlet?"]:
        reply = t.reply(ask(message))
        assert read_answer(reply, "text").status == "abstained" and reply.endswith("Final answer: abstain")


def test_critique_reflection_and_explanation_name_the_gold_and_why_the_other_label_does_not_fit():
    r = next(r for r in ROWS if r["label"] == "card_arrival")
    q = question(r["text"])
    bad = teacher(error_rate=1.0).reply(ask(r["text"]))
    wrong = label_in(bad)
    assert wrong is not None and wrong != "card_arrival"
    t = teacher()
    critique = t.reply(prompts.critique_prompt(q, t.reply(ask(r["text"])), bad, "card_arrival", "dataset"))
    assert critique.startswith("Feedback:") and "the correct answer is card_arrival" in critique
    assert f"{wrong} is for messages about" in critique and r["text"] in critique
    reflection = t.reply(prompts.reflection_prompt(q, bad, "card_arrival", "dataset"))
    assert reflection.startswith("Self-reflection: My final answer " + wrong)
    assert "the correct answer is card_arrival" in reflection
    explanation = t.reply(prompts.explanation_prompt(q, "card_delivery_estimate", "card_arrival", "consensus"))
    assert explanation.startswith("The student's final answer card_delivery_estimate is wrong; the correct answer "
                                  "is card_arrival.")
    # Its review of explanations: naming the gold and the student's label passes, missing the gold fails.
    review = prompts.explanation_review_prompt
    assert read_score(t.reply(review(q, "card_delivery_estimate", explanation, "card_arrival", "dataset"))) == 5
    assert read_score(t.reply(review(q, "card_delivery_estimate", "Try harder.", "card_arrival", "dataset"))) == 2


def test_reviews_score_the_right_label_high_and_a_wrong_one_low():
    t = teacher()
    wrong_ones = 0
    for r in SAMPLE[::10]:
        q = question(r["text"])
        right = t.reply(ask(r["text"]))
        bad = teacher(error_rate=1.0, name="bad").reply(ask(r["text"]))
        for hint in (None, r["label"]):
            assert read_score(t.reply(prompts.review_prompt(q, right, hint, "dataset"))) == 5
            assert read_score(t.reply(prompts.review_prompt(q, bad, hint, "dataset"))) == 2
            wrong_ones += 1
        assert read_score(t.reply(prompts.review_prompt(q, r["label"], None))) == 5  # the label alone
        assert read_score(t.reply(prompts.review_prompt(q, "Final answer: banana", None))) == 1
    assert wrong_ones == 2 * len(SAMPLE[::10])
    # A careless reviewer misjudges at its rate.
    careless = teacher(error_rate=0.3, seed=1)
    scores = [read_score(careless.reply(prompts.review_prompt(question(r["text"]), r["label"], None)))
              for r in SAMPLE]
    assert 0.18 * len(SAMPLE) <= sum(s == 2 for s in scores) <= 0.42 * len(SAMPLE)


def test_served_over_http_next_to_an_arithmetic_reference_teacher():
    teachers = [TeacherConfig(name="intents", reference=ReferenceProfile(labels_file=TRAIN)),
                TeacherConfig(name="maths", reference=ReferenceProfile())]
    r = next(r for r in ROWS if r["label"] == "Refund_not_showing_up")
    with serve_app(build_teacher_app(teachers)) as url:
        assert label_in(chat(f"{url}/intents", ask(r["text"]))) == "Refund_not_showing_up"
        assert read_answer(chat(f"{url}/intents", ask("What is 17 + 25?")), "text").status == "abstained"
        assert read_answer(chat(f"{url}/maths", "What is 17 + 25?"), "number").answer == "42"
