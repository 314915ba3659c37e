"""Properties of the answer readers over generated replies (Hypothesis): what must hold for any input, not only
for the corpus. tests/tasks/test_answers.py pins the readers on the corpus and on integers in templates."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import jsonschema
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.tasks.answers import (
    AnswerSpec,
    Reading,
    canonical_answer,
    is_valid,
    json_field_accuracy,
    read_answer,
    read_for_eval,
    same_answer,
)

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATUSES = {"ok", "unparsed", "abstained", "truncated"}

# --- specs and replies --------------------------------------------------------------------------------------------

WORD = st.from_regex(r"[a-z]{2,9}", fullmatch=True)
LABEL = st.lists(WORD, min_size=1, max_size=4).map("_".join)
# Distinct labels, distinct as the reader compares them too (two spellings of one label are matched only exactly).
LABEL_SETS = st.lists(LABEL, min_size=1, max_size=8, unique_by=lambda label: label.replace("_", " ")).map(tuple)
RECORD = {"type": "object", "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
          "required": ["name", "born"]}
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "status": {"enum": ["open", "shipped", "cancelled"]},
        "total": {"type": "number", "minimum": 0, "maximum": 1e6},
        "express": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
        "items": {"type": "array", "maxItems": 4, "items": {
            "type": "object", "properties": {"sku": {"type": "string", "minLength": 1}, "qty": {"type": "integer"}},
            "required": ["sku", "qty"], "additionalProperties": False}},
    },
    "required": ["id", "status", "items"],
    "additionalProperties": False,
}
SCHEMAS = [RECORD, ORDER]
TEXT = st.text(max_size=20)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
# Instances of each schema, by hand (hypothesis-jsonschema does not run on this Hypothesis); each drawn instance is
# checked against its schema, so a strategy that strays from it fails loudly.
INSTANCES = {
    "record": st.fixed_dictionaries(
        {"name": TEXT, "born": st.integers()},
        optional={"note": TEXT | st.none(), "tags": st.lists(TEXT, max_size=3), "score": FINITE}),
    "order": st.fixed_dictionaries(
        {"id": st.integers(min_value=1), "status": st.sampled_from(["open", "shipped", "cancelled"]),
         "items": st.lists(st.fixed_dictionaries({"sku": st.text(min_size=1, max_size=12), "qty": st.integers()}),
                           max_size=4)},
        optional={"total": st.floats(min_value=0, max_value=1e6) | st.integers(min_value=0, max_value=10**6),
                  "express": st.booleans(), "note": TEXT | st.none()}),
}
SPECS = st.one_of(
    st.sampled_from([AnswerSpec("number"), AnswerSpec("choice"), AnswerSpec("text"), AnswerSpec("label"),
                     AnswerSpec("json"), *(AnswerSpec("json", schema=s) for s in SCHEMAS)]),
    LABEL_SETS.map(lambda labels: AnswerSpec("label", labels)),
)
MARKERS = ["Final answer:", "**Final Answer:**", "## Final answer\n", "The final answer is", "Answer:",
           "The answer is", "\\boxed{", "}", '{"answer": ', "```json\n", "```", "<think>", "</think>", "\n",
           "I don't know", "N/A", "[", "]", "{", '"', "\\", "(C)", "42", "1,234.5", "$", "**", " "]
# Reply-like text: markers, brackets and words in any order (plain `st.text` rarely writes a marker).
REPLIES = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(MARKERS) | st.text(max_size=12), max_size=40).map("".join),
)
PROSE = st.lists(st.sampled_from(["the", "customer", "says", "their", "card", "was", "ordered", "week", "ago",
                                  "so", "it", "seems", "likely", "that", "we", "should", "check", "first,", "then",
                                  "look", "again."]), min_size=1, max_size=30).map(" ".join)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _readable(canonical: str) -> bool:
    """JSON whose strings do not themselves write a fence or a think tag (which any reply would be read by)."""
    return "```" not in canonical and "think>" not in canonical.lower()


# --- any input --------------------------------------------------------------------------------------------------


@PROPERTY
@given(text=REPLIES, spec=SPECS, finish_reason=st.sampled_from([None, "stop", "length"]))
def test_every_reader_takes_any_reply_and_answers_only_when_ok(text, spec, finish_reason):
    reading = read_answer(text, spec, finish_reason=finish_reason)
    assert reading.status in STATUSES
    assert (reading.answer is not None) == (reading.status == "ok")
    assert reading.answer is None or reading.answer.strip() == reading.answer != ""
    if spec.type == "json" and reading.status == "ok":
        assert _canonical(json.loads(reading.answer)) == reading.answer
    graded = read_for_eval(text, spec)
    assert graded is None or isinstance(graded, str)
    assert same_answer(text, text, spec) in (True, False)
    assert is_valid(text, spec) in (True, False)
    assert 0.0 <= json_field_accuracy(text, text) <= 1.0


@PROPERTY
@given(text=st.none() | REPLIES, spec=SPECS)
def test_a_reply_cut_at_max_tokens_is_truncated_whatever_it_says(text, spec):
    assert read_answer(text, spec, finish_reason="length") == Reading(None, "truncated")


@PROPERTY
@given(text=REPLIES, spec=SPECS)
def test_canonical_answer_is_idempotent_and_keeps_what_it_cannot_read(text, spec):
    once = canonical_answer(text, spec)
    assert canonical_answer(once, spec) == once
    assert once == text or (spec.type in ("label", "json") and is_valid(once, spec))
    if spec.type == "label" and spec.labels:
        assert once == text or once in spec.labels


@PROPERTY
@given(reasoning=REPLIES, reply=REPLIES, spec=SPECS)
def test_what_the_model_thought_is_never_read(reasoning, reply, spec):
    assume("think>" not in (reasoning + reply).lower())
    assert read_answer(f"<think>\n{reasoning}\n</think>{reply}", spec) == read_answer(reply, spec)
    assert read_answer(f"{reply}<think>\n{reasoning}", spec) == read_answer(reply, spec)  # never closed


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(min_value=1, max_value=3000), kind=st.sampled_from(["list", "object"]))
def test_json_is_read_up_to_the_depth_guard_and_refused_past_it(depth, kind):
    text = "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth
    reading = read_answer(text, "json")
    assert reading.status == ("ok" if depth <= 64 else "unparsed")
    assert is_valid(text, "json") is (depth <= 64)
    assert (read_for_eval(text, "json") is not None) is (depth <= 64)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(min_value=49_990, max_value=50_010) | st.integers(min_value=1, max_value=1000),
       pad=st.sampled_from(["", "   \n"]))
def test_json_is_read_up_to_the_size_guard_and_refused_past_it(n, pad):
    text = "[" + ",".join(["0"] * n) + "]" + pad
    reading = read_answer(text, "json")
    assert reading.status == ("ok" if len(text) <= 100_000 else "unparsed")


# --- labels ----------------------------------------------------------------------------------------------------------

SPELLINGS = [
    lambda s: s, str.upper, lambda s: s.replace("_", " ").title(), lambda s: s.replace("_", "-"),
    lambda s: s.replace("_", " "), lambda s: f"`{s}`", lambda s: f'"{s}"', lambda s: f"**{s}**", lambda s: f"{s}.",
    lambda s: f"{s} (the closest fit)", lambda s: f"\u201c{s.replace('_', ' ')}\u201d",
]
LABEL_MARKERS = ["Final answer: {}", "**Final Answer:** {}", "**Final answer: {}**", "## Final answer\n\n{}",
                 "The final answer is {}", "Answer: {}", "**Answer:** {}", "The answer is {}", "{}"]


@PROPERTY
@given(labels=LABEL_SETS, pick=st.integers(min_value=0), spelling=st.sampled_from(SPELLINGS),
       marker=st.sampled_from(LABEL_MARKERS), prose=PROSE)
def test_a_label_in_any_spelling_after_any_marker_reads_as_the_set_writes_it(labels, pick, spelling, marker, prose):
    label = labels[pick % len(labels)]
    spec = AnswerSpec("label", labels)
    written = spelling(label)
    reply = marker.format(written) if marker == "{}" else f"{prose}\n\n{marker.format(written)}"
    reading = read_answer(reply, spec)
    assert reading == Reading(label, "ok"), reply
    assert is_valid(reading.answer, spec) and same_answer(reading.answer, label, spec)
    assert canonical_answer(written, spec) == label


@PROPERTY
@given(labels=LABEL_SETS, first=st.integers(min_value=0), last=st.integers(min_value=0), prose=PROSE)
def test_a_reply_that_changes_its_mind_is_read_at_its_last_label(labels, first, last, prose):
    a, b = labels[first % len(labels)], labels[last % len(labels)]
    reply = f"Final answer: {a}\n\n{prose}\n\nFinal answer: {b.replace('_', ' ')}"
    assert read_answer(reply, AnswerSpec("label", labels)) == Reading(b, "ok")


@PROPERTY
@given(labels=LABEL_SETS, pick=st.integers(min_value=0), around=st.sampled_from(["{}", " {} \n", '"{}"', "{}.",
                                                                                   "'{}.'", "`{}`", "\u201c{}\u201d"]))
def test_read_for_eval_takes_a_label_alone_as_written_and_anything_else_as_wrong(labels, pick, around):
    label = labels[pick % len(labels)]
    spec = AnswerSpec("label", labels)
    assert read_for_eval(around.format(label), spec) == label
    for other in (label.upper(), label.replace("_", " "), f"Final answer: {label}", f"**{label}**"):
        if other not in labels:
            graded = read_for_eval(other, spec)
            assert graded == other and not is_valid(graded, spec)


@PROPERTY
@given(labels=LABEL_SETS, phrase=st.sampled_from(["I don't know", "unknown", "N/A", "Cannot be determined",
                                                   "insufficient information", "I abstain"]))
def test_an_abstention_outside_the_set_is_abstained_never_an_answer(labels, phrase):
    assume(all(phrase.lower().replace("'", "") not in label.replace("_", " ") for label in labels))
    for spec in (AnswerSpec("label", labels), AnswerSpec("number"), AnswerSpec("choice"), AnswerSpec("text")):
        assert read_answer(f"Hard to say.\n\nFinal answer: {phrase}", spec) == Reading(None, "abstained")


# --- choices ---------------------------------------------------------------------------------------------------------

LETTER_FORMS = ["{}", "({})", "**{}**", "Option {}", "option {}", "[{}]", "{}.", "`{}`"]


@PROPERTY
@given(letter=st.sampled_from("ABCDEFGHIJ"), lower=st.booleans(), form=st.sampled_from(LETTER_FORMS),
       marker=st.sampled_from(["Final answer: {}", "Answer: {}", "The answer is {}", "**Final Answer:** {}"]),
       prose=PROSE)
def test_a_choice_letter_in_any_form_reads_as_the_capital_letter(letter, lower, form, marker, prose):
    written = form.format(letter.lower() if lower else letter)
    reading = read_answer(f"{prose}\n\n{marker.format(written)}", "choice")
    assert reading == Reading(letter, "ok")
    assert same_answer(reading.answer, f"({letter})", "choice")
    assert all(not same_answer(reading.answer, other, "choice") for other in "ABCDEFGHIJ" if other != letter)


# --- numbers ---------------------------------------------------------------------------------------------------------

CENTS = st.integers(min_value=-10**9, max_value=10**9)
NUMBER_MARKERS = ["Final answer: {}", "**Final Answer:** {}", "The final answer is {}.", "Answer: {}",
                  "The answer is {}.", "So the total is $\\boxed{{{}}}$.", "{}"]


def _decimal_forms(cents: int) -> list[str]:
    """One amount written as models write it: plain, trailing zero, separators, currency, unit, LaTeX, signs."""
    value = Decimal(cents) / 100
    plain = f"{value:.2f}"
    sign, magnitude = ("-" if value < 0 else ""), abs(value)
    forms = [plain, f"{plain}0", f"{sign}{magnitude:,.2f}", f"{sign}${magnitude:,.2f}", f"{plain} dollars",
             f"{sign}\u20ac{magnitude:.2f}", f"\\text{{{plain}}}", f"{plain.replace('-', chr(0x2212))}"]
    if value >= 0:
        forms.append(f"+{plain}")
    if cents % 100 == 0:
        forms += [f"{sign}{magnitude:,.0f}", f"{value:.0f}%"]
    return forms


@PROPERTY
@given(cents=CENTS, marker=st.sampled_from(NUMBER_MARKERS), pick=st.integers(min_value=0))
def test_an_amount_written_in_any_form_reads_equal_to_its_plain_value(cents, marker, pick):
    forms = _decimal_forms(cents)
    if marker == "{}":  # a reply that is nothing but a number: no unit, no LaTeX
        forms = [f for f in forms if not re.search(r"[A-Za-z\\]", f)]
    written = forms[pick % len(forms)]
    reading = read_answer(marker.format(written), "number")
    assert reading.status == "ok", (marker, written)
    plain = f"{Decimal(cents) / 100:.2f}"
    assert same_answer(reading.answer, plain, "number"), (written, reading.answer)
    assert same_answer(plain, reading.answer, "number")
    assert not same_answer(reading.answer, f"{Decimal(cents + 1) / 100:.2f}", "number")


def test_a_percentage_is_its_number_whatever_its_trailing_zeros():
    # Found by the property above: `42%` matched `42` (math-verify's text match) but not `42.0`.
    for answer, gold in (("42%", "42.0"), ("12.50%", "12.5"), ("12.5", "12.50 %"), ("$12.50\\%$", "12.5")):
        assert same_answer(answer, gold, "number") and same_answer(gold, answer, "number")
    assert same_answer("50%", "0.5", "number") and not same_answer("13%", "12.5", "number")


@PROPERTY
@given(p=st.integers(min_value=-999, max_value=999), q=st.sampled_from([1, 2, 4, 5, 8, 10, 16, 20, 25, 40]),
       form=st.sampled_from(["\\frac{{{p}}}{{{q}}}", "\\dfrac{{{p}}}{{{q}}}", "{p}/{q}", "$\\frac{{{p}}}{{{q}}}$"]))
def test_a_fraction_reads_equal_to_its_decimal(p, q, form):
    written = form.format(p=p, q=q) if p >= 0 else "-" + form.format(p=-p, q=q)
    decimal = str(Decimal(p) / Decimal(q))
    reading = read_answer(f"Final answer: {written}", "number")
    assert reading.status == "ok"
    assert same_answer(reading.answer, decimal, "number"), (written, decimal)
    assert not same_answer(reading.answer, str(Decimal(p + 1) / Decimal(q)), "number")


# --- JSON ------------------------------------------------------------------------------------------------------------


def _replies(text: str) -> list[str]:
    """One JSON text as models write it: bare, fenced (tagged or not), after prose, pretty-printed in a fence."""
    value = json.loads(text)
    pretty = json.dumps(value, indent=2, ensure_ascii=False)
    return [text, f"```json\n{text}\n```", f"```\n{pretty}\n```", f"Here is the record:\n\n{text}\n",
            f"Extracted as asked.\n\n```json\n{pretty}\n```\nLet me know if anything is missing."]


@st.composite
def schema_instances(draw: st.DrawFn) -> tuple[AnswerSpec, Any]:
    name, schema = draw(st.sampled_from([("record", RECORD), ("order", ORDER)]))
    instance = draw(INSTANCES[name])
    jsonschema.validate(instance, schema)
    return AnswerSpec("json", schema=schema), instance


@PROPERTY
@given(case=schema_instances())
def test_any_instance_of_the_schema_round_trips_through_every_form(case):
    spec, instance = case
    canonical = _canonical(instance)
    assume(_readable(canonical))
    for reply in _replies(json.dumps(instance, ensure_ascii=False)):
        assert read_answer(reply, spec) == Reading(canonical, "ok"), reply
    assert read_for_eval(json.dumps(instance, indent=2), spec) == canonical
    assert read_for_eval(f"```json\n{json.dumps(instance)}\n```", spec) == canonical
    assert is_valid(canonical, spec)
    assert canonical_answer(json.dumps(instance, indent=1), spec) == canonical
    assert same_answer(canonical, json.dumps(instance, indent=3), spec)
    assert json_field_accuracy(canonical, canonical) == 1.0
    assert json_field_accuracy(json.dumps(instance), canonical) == 1.0


@PROPERTY
@given(case=schema_instances(), drop=st.data())
def test_field_accuracy_is_the_share_of_gold_fields_the_answer_gets_and_ignores_extra_fields(case, drop):
    _, instance = case
    keys = sorted(instance)
    dropped = drop.draw(st.sets(st.sampled_from(keys), max_size=len(keys)))
    answer = {k: v for k, v in instance.items() if k not in dropped}
    assert json_field_accuracy(json.dumps(answer), json.dumps(instance)) == (len(keys) - len(dropped)) / len(keys)
    assume("zz_extra" not in instance)
    extended = {**instance, "zz_extra": [1, 2, 3]}
    assert json_field_accuracy(json.dumps(extended), json.dumps(instance)) == 1.0
    if dropped:
        assert not same_answer(json.dumps(answer), json.dumps(instance), "json")


def _changed(value: Any) -> Any:
    """A different value of the same shape, changed at its deepest first leaf (a nested value counts too)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1 if abs(value) < 1e15 else value / 2
    if isinstance(value, str):
        return f"{value} changed"
    if isinstance(value, list):
        return [_changed(value[0]), *value[1:]] if value else [0]
    if isinstance(value, dict):
        first = min(value, default=None)
        return {**value, first: _changed(value[first])} if value else {"changed": 1}
    return "changed"  # null


@PROPERTY
@given(case=schema_instances(), pick=st.integers(min_value=0))
def test_one_wrong_field_costs_exactly_its_share_and_the_match(case, pick):
    _, instance = case
    keys = sorted(instance)
    key = keys[pick % len(keys)]
    answer = json.dumps({**instance, key: _changed(instance[key])})
    assert json_field_accuracy(answer, json.dumps(instance)) == (len(keys) - 1) / len(keys)
    assert not same_answer(answer, json.dumps(instance), "json")


@PROPERTY
@given(instance=INSTANCES["order"], broken=st.sampled_from(["id", "status", "items", "extra"]))
def test_an_instance_that_breaks_the_schema_is_never_valid_and_kept_as_given(instance, broken):
    spec = AnswerSpec("json", schema=ORDER)
    wrong = dict(instance)
    if broken == "extra":
        wrong["unexpected"] = 1
    elif broken == "status":
        wrong["status"] = "lost"
    else:
        del wrong[broken]
    text = json.dumps(wrong)
    assert not is_valid(text, spec)
    assert canonical_answer(text, spec) == text
    assert not same_answer(text, json.dumps(instance), spec)
    assert read_answer(text, spec) == Reading(_canonical(wrong), "ok")  # read, then refused by `is_valid`


@PROPERTY
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                          lambda inner: st.lists(inner, max_size=3), max_leaves=10),
       prose=PROSE)
def test_a_json_value_that_is_no_object_is_read_only_whole_or_fenced(value, prose):
    text = json.dumps(value)
    assume(_readable(text))
    assert read_answer(text, "json") == Reading(_canonical(value), "ok")
    assert read_answer(f"```json\n{text}\n```", "json") == Reading(_canonical(value), "ok")
    trailing = read_answer(f"{prose}\n\n{text}", "json")
    assert trailing.status != "ok" or re.fullmatch(r"\{.*\}", trailing.answer or "", re.S)
