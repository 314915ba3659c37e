"""Reading an agent's final answer from a reply as hosted models write it, and deciding whether it is right.

One reader per answer type, all behind the same functions (`read_answer`, `read_for_eval`, `same_answer`,
`is_valid`), which take the type alone or an `AnswerSpec` (the type with its label set or JSON Schema):
  number  math and numbers, compared by HF `math-verify` (fractions, LaTeX, `\\boxed{}`, thousands separators,
          units, percentages); no hand-written float comparer beside it;
  choice  option letters: `C`, `(C)`, `Option C`, `C) text`;
  label   one of a closed label set (intents, categories): read as `text` is, then mapped to the set, exactly or
          without case, spaces/`-`/`_` differences, quotes, a trailing period or a trailing `(remark)`, to the
          label as the set writes it; an answer outside the set is still an answer (`ok`), a wrong one
          (`is_valid` False). Compared exactly. With an empty label set it reads like `text`;
  text    a short phrase, compared after normalisation (case, punctuation, articles);
  json    a JSON value: the whole reply, else the last ```json fence, else the last balanced `{...}` object in it,
          returned as canonical JSON (keys sorted, no spaces). Compared field by field (keys as sets, lists in
          order, numbers as numbers, strings after text normalisation), after validation against the schema.

Where the final answer sits: `Final answer: X` (with markdown bold around either part, `is`/`:`/`=` after it), a
`## Final answer` / `**Final Answer**` heading with X on the next line, `The final answer is X`, `\\boxed{X}`,
`**Answer:** X` / `Answer: X` at the start of a line, a trailing JSON object `{"answer": X}` (bare or in a fence),
`The answer is X` (for every type but `json`, read as above). The last one written wins, whatever its form, so a
reply that changes its mind is read at its last word. `<think>...</think>` reasoning is not read. X is the rest of
the marker's line (after a heading, the next line with content), with markdown (`**`, backticks, `$`, `\\text{}`)
and a trailing period removed; a choice answer is reduced to its letter. Without any marker a reply is still read
when it is nothing but the answer: a number for `number` (never the last number of a longer text: that is only
`read_for_eval`'s fallback), for `choice` a letter (`C`, `(C)`, `**C**`, `... option C`) on its last line or
`C) text` as the whole reply, for `label` a label of the set as the whole reply (one line).

`read_for_eval` grades a served reply in the app's own format: for `label` the whole reply must be a label as the
set writes it (surrounding whitespace, quotes and one trailing period aside; anything else is graded as written, so
wrong), for `json` the whole reply (in one code fence or not) must be JSON (else nothing to grade). JSON is only
parsed up to 100 kB and 64 levels of nesting, so hostile input costs little.

Four outcomes: `ok` (an answer, to be graded), `unparsed` (no final answer found), `abstained` (the agent said it
does not know: `I don't know`, `abstain`, `cannot be determined`, `unknown`, `N/A`, `insufficient information`... as
the final answer, or a reply that refuses outright without one or, for `json`, without any JSON), `truncated` (the
reply was cut at `max_tokens`, `finish_reason == "length"`). Only `ok` is ever graded: the other three are never
wrong, never critiqued, never a rejected child.

An answer and its gold go to math-verify as written when plain (`1,234`, `42 apples`, `$42`, `50%`), inside
`$...$` when they hold LaTeX: the form each of its two readers gets right. math-verify runs with its timeouts
off (`parsing_timeout=None`, `timeout_seconds=None`): its timeout is a SIGALRM, which raises outside the main
thread (Ray actors, asyncio executors). Instead an expression is only compared when it is small and tame (no
towers of powers, huge factorials, integrals...), which is what could otherwise keep sympy busy for minutes.
Parses are cached; sympy objects are immutable, so the cache is shared between threads safely.

Peer-review scores are read as leniently as FAIR's code reads them (`[4]`, `[[4]]`, `[4/5]`, `Score: 4/5`,
`**Score:** 4`, `Rating: 4 out of 5`, `4.5` alone on the last line), the last one written, and dropped outside
1-5.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

AnswerType = Literal["number", "choice", "label", "text", "json"]
Status = Literal["ok", "unparsed", "abstained", "truncated"]


@dataclass(frozen=True)
class AnswerSpec:
    """An answer type with what its answers are checked against: the label set of `label`, the JSON Schema of
    `json` (None: any JSON value). Equal specs hash alike; the schema is compared but not hashed."""

    type: AnswerType
    labels: tuple[str, ...] = ()
    schema: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.type not in get_args(AnswerType):
            raise ValueError(f"unknown answer type {self.type!r}")
        if isinstance(self.labels, str):
            raise ValueError("labels must be a sequence of labels, not one string")
        if not isinstance(self.labels, tuple):  # a list from a config
            object.__setattr__(self, "labels", tuple(self.labels))
        if not all(isinstance(label, str) for label in self.labels):
            raise ValueError("labels must be strings")
        if self.schema is not None:
            _validator(_schema_key(self.schema))  # an invalid schema is refused here, not at the first answer

    @classmethod
    def of(cls, x: AnswerType | AnswerSpec) -> AnswerSpec:
        return spec_of(x)


def spec_of(x: AnswerType | AnswerSpec) -> AnswerSpec:
    """The spec of an answer type given alone (no labels, no schema), or the spec itself."""
    return x if isinstance(x, AnswerSpec) else AnswerSpec(x)


@dataclass(frozen=True)
class Reading:
    answer: str | None  # the final answer as written, markup removed; None unless status is ok
    status: Status


# --- where the final answer sits ---------------------------------------------------------------------------------

# `Final answer: X`, `**Final Answer:** X`, `**Final answer: X**`, `The final answer is X`, `Final answer = X`, and
# the heading forms `## Final answer` / `**Final Answer**` / `Final answer:` with X on a later line.
_FINAL = re.compile(
    r"\bfinal[ \t]+answer(?:[ \t]*[*_]{1,2})?[ \t]*(?![ \t])"  # (?!): no space given back, no quadratic retry
    r"(?:(?:is|was|would[ \t]+be|will[ \t]+be)\b[ \t]*[:\uff1a]?|[:\uff1a=]|(?=[*_#\t ]*(?:\n|$)))",
    re.I,
)
_BOXED = re.compile(r"\\(?:boxed|fbox)[ \t]*\{")
_ANSWER_LABEL = re.compile(r"^[ \t>#*_-]*answer(?:[ \t]*[*_]{1,2})?[ \t]*[:\uff1a](?:[ \t]*[*_]{1,2})?", re.I | re.M)
_ANSWER_IS = re.compile(r"\b(?:the|my)[ \t]+(?:(?:correct|right|best)[ \t]+)?answer[ \t]+is\b[ \t]*[:\uff1a]?", re.I)
_JSON_KEYS = ("answer", "finalanswer")  # compared without case, spaces, `_` or `-`

# Matched against a stripped line: a whitespace run between two `\s*` would cost quadratic time on a long one.
_SKIP_LINE = re.compile(r"(?:\\\[|\\\]|\$\$|`{3,}\w*|[*_#=-]+)?")

# --- cleaning an answer -----------------------------------------------------------------------------------------

_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|operatorname|mbox)[ \t]*\{([^{}]*)\}")
_EDGE = " \t*_`\"'\u201c\u201d\u2018\u2019"
_TRAIL = " \t*_`\"'\u201c\u201d\u2018\u2019.,;!"

# --- abstentions and refusals -----------------------------------------------------------------------------------

_ABSTAIN = re.compile(  # matched against the whole answer, lowercased, punctuation but `'` and `/` removed
    r"(?:(?:the )?(?:final )?(?:answer|it|this|that) (?:is |are )?)?(?:i |i'm |im |i am )?(?:"
    r"(?:don't|do not|dont) know|not sure|abstain(?:ing|s)?|abstention|"
    r"(?:can ?not|can't|could not|couldn't) (?:be )?determined?|undetermined|indeterminate|undeterminable|"
    r"unknown|unknowable|n/a|n a|(?:can ?not|can't|unable to) (?:answer|say|tell|determine)|"
    r"(?:there is )?(?:insufficient|not enough) (?:information|info|data)|no answer|unanswerable"
    r")(?: (?:from|with|given|because|based|without|due|as|since|to|for|in|on|the|this|that|it|here|yet|either)\b.*)?",
)
_NOT = r"(?:can't|cant|cannot|can not|won't|wont|will not|unable|not able|am unable to|am not able to)"
_REFUSAL = re.compile(  # matched against the reply's start, whitespace collapsed, curly apostrophes straight
    rf"\W*(?:(?:(?:i'm|im|i am) (?:sorry|afraid)|sorry|(?:i )?apologi[sz]e)\b.{{0,80}}?\b{_NOT}\b"
    rf"|i {_NOT} (?:help|assist|answer|provide|comply|do that|support))",
    re.I,
)

# --- choice letters ---------------------------------------------------------------------------------------------

_LETTER_ONLY = re.compile(r"\(?\[?([A-J])\]?\)?[.:]?", re.I)
_LETTER_OPTION = re.compile(r"(?:option|choice)[ \t]*[:#]?[ \t]*\(?([A-J])\)?(?![A-Za-z])", re.I)
_LETTER_LEAD = re.compile(r"\(?([A-J])(?:\)|[.:])[ \t]+\S")
_LETTER_PAREN = re.compile(r"\(([A-J])\)")
_LETTER_LAST = re.compile(r"\b(?:option|choice)[ \t]*\(?([A-J])\)?[.!]?$", re.I)  # "I'd go with option C."

# --- numbers ----------------------------------------------------------------------------------------------------

_NUM_TOKEN = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_ONLY_NUMBER = re.compile(
    rf"[-+\u2212]?[ \t]*\\?[$\u20ac\u00a3\u00a5]?[ \t]*[-\u2212]?(?:{_NUM_TOKEN})(?:[ \t]*/[ \t]*\d+)?[ \t]*\\?%?"
    r"|[-\u2212]?\\d?frac\{-?\d+\}\{\d+\}"
)
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_NUMERIC_GOLD = re.compile(
    rf"[-+\u2212]?[ \t]*\\?[$\u20ac\u00a3\u00a5]?[ \t]*[-\u2212]?(?:{_NUM_TOKEN})(?:[ \t]*/[ \t]*\d+)?[ \t]*\\?%?"
    r"(?:[ \t]*[A-Za-z]{1,15}(?:[ \t]+[A-Za-z]{1,15})?)?"
)
_MATHY_GOLD = re.compile(r"(?=\D*\d)[\d\s+\-*/^().,=\u2212\u221a\u03c0{}]+")
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")

_MAX_MATH_CHARS = 200
_MAX_CANDIDATES = 64  # markers tried, from the last one back


def read_answer(text: str | None, spec: AnswerType | AnswerSpec, *, finish_reason: str | None = None) -> Reading:
    """The final answer of a reply. `finish_reason == "length"` -> `truncated` whatever the text holds."""
    spec = spec_of(spec)
    if finish_reason == "length":
        return Reading(None, "truncated")
    body = _body(text)
    if not body.strip():
        return Reading(None, "unparsed")
    if spec.type == "json":
        return _read_json(body)
    raw = _marked_answer(body)
    if raw is None:
        return _unmarked(body, spec)
    if spec.type == "label" and spec.labels:
        label = _to_label(raw, spec.labels)  # before abstentions: `unknown` may be a label
        if label is not None:
            return Reading(label, "ok")
    if _is_abstention(raw):
        return Reading(None, "abstained")
    if spec.type == "choice":
        letter = _letter(raw)
        return Reading(letter, "ok") if letter else Reading(None, "unparsed")
    return Reading(raw, "ok")


def read_for_eval(text: str | None, spec: AnswerType | AnswerSpec) -> str | None:
    """What an evaluation grades, as D&R's evaluation reads a served reply: `read_answer`'s answer, else the last
    number in the text for a `number` question. None when there is nothing to grade.

    The fallback applies to an `unparsed` reply only: an abstention has nothing to grade. `label` and `json` replies
    are graded in the app's format instead: the label alone (else the reply as written, wrong), JSON alone (else
    None)."""
    spec = spec_of(spec)
    if spec.type == "label":
        return _label_alone(_body(text), spec.labels)
    if spec.type == "json":
        value = _json_alone(_body(text))
        return None if value is _NO_JSON else _canonical(value)
    reading = read_answer(text, spec)
    if reading.status != "unparsed" or spec.type != "number":
        return reading.answer
    found = _LAST_NUMBER.findall(_body(text))
    return found[-1].rstrip(",") if found else None


def same_answer(answer: str | None, gold: str | None, spec: AnswerType | AnswerSpec) -> bool:
    """Whether `answer` counts as `gold`. None on either side is never the same."""
    spec = spec_of(spec)
    if answer is None or gold is None:
        return False
    if spec.type == "choice":
        a, g = _letter(_clean(answer)), _letter(_clean(gold))
        return a is not None and a == g
    if spec.type == "number":
        return _same_number(answer, gold)
    if spec.type == "label":
        a, g = answer.strip(), gold.strip()
        return bool(a) and a == g and (not spec.labels or g in spec.labels)
    if spec.type == "json":
        a_value, g_value = _json_alone(answer), _json_alone(gold)
        if a_value is _NO_JSON or g_value is _NO_JSON:
            return False
        if spec.schema is not None and not _validator(_schema_key(spec.schema)).is_valid(a_value):
            return False
        return _same_json(a_value, g_value)
    a, g = _norm_text(answer), _norm_text(gold)
    return bool(a) and a == g


def is_valid(answer: str | None, spec: AnswerType | AnswerSpec) -> bool:
    """Whether an answer is one the task allows: a label of the set (any answer when the set is empty), JSON valid
    against the schema (any JSON value without one); any answer of the other types. None is never valid."""
    spec = spec_of(spec)
    if answer is None:
        return False
    if spec.type == "label":
        return not spec.labels or answer in spec.labels
    if spec.type == "json":
        value = _json_alone(answer)
        if value is _NO_JSON:
            return False
        return spec.schema is None or _validator(_schema_key(spec.schema)).is_valid(value)
    return True


def canonical_answer(answer: str, spec: AnswerType | AnswerSpec) -> str:
    """A given answer (a client's label) in the form debates and evaluations compare: a label's spelling from the
    set (`Card Arrival` -> `card_arrival`), canonical JSON; any other answer, or one that cannot be read, as given."""
    spec = spec_of(spec)
    if spec.type in {"label", "json"}:
        reading = read_answer(answer, spec)
        if reading.status == "ok" and is_valid(reading.answer, spec):
            return reading.answer  # type: ignore[return-value]
    return answer


def json_field_accuracy(answer: str | None, gold: str | None) -> float:
    """The share of the gold object's top-level fields the answer gets right (`same_answer`'s rule per value), for
    reports; fields the answer adds do not count. 0.0 when either is not a JSON object; an empty gold object is
    matched by an empty answer object only."""
    a = _json_alone(answer) if answer is not None else _NO_JSON
    g = _json_alone(gold) if gold is not None else _NO_JSON
    if not isinstance(a, dict) or not isinstance(g, dict):
        return 0.0
    if not g:
        return float(not a)
    return sum(key in a and _same_json(a[key], value) for key, value in g.items()) / len(g)


def answer_type_of(gold: str) -> AnswerType:
    """The answer type a label implies (a debate without a task profile): a letter -> choice, a number or a math
    expression -> number, anything else -> text."""
    s = _clean(gold)
    if re.fullmatch(r"[A-J]|\([A-Ja-j]\)|\[[A-J]\]", s):
        return "choice"
    if _NUMERIC_GOLD.fullmatch(s) or _MATHY_GOLD.fullmatch(s):
        return "number"
    if _LATEX_CMD.search(s) and _parse_math(s):
        return "number"
    return "text"


def read_score(text: str | None) -> float | None:
    """A peer review's 1-5 score, the last one written; None when none is readable or it is outside 1-5."""
    if not text:
        return None
    best: tuple[int, str, str | None] | None = None
    for pattern in _SCORE_PATTERNS:
        for m in pattern.finditer(text):
            if best is None or m.start() >= best[0]:
                best = (m.start(), m.group("v"), m.groupdict().get("d"))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines:
        m = _SCORE_ALONE.fullmatch(lines[-1].strip())
        if m:
            pos = text.rfind(lines[-1])
            if best is None or pos >= best[0]:
                best = (pos, m.group("v"), None)
    if best is None:
        return None
    _, value, denominator = best
    if denominator is not None and float(denominator) != 5:
        return None
    score = float(value)
    return score if 1.0 <= score <= 5.0 else None


def gsm8k_gold(answer_field: str) -> str:
    """GSM8K keeps the final answer after `####`."""
    return answer_field.rsplit("####", 1)[-1].strip().replace(",", "")


# --- reading ------------------------------------------------------------------------------------------------------


def _body(text: str | None) -> str:
    """The reply after its `<think>` reasoning: what follows the last `</think>` (templates that pre-fill `<think>`
    leave only the closing tag), cut at a `<think>` left open (reasoning that never ended is no reply)."""
    if not text:
        return ""
    lowered = text.lower()
    closed = lowered.rfind("</think>")
    start = closed + len("</think>") if closed >= 0 else 0
    opened = lowered.find("<think>", start)
    return text[start:] if opened < 0 else text[start:opened]


def _marked_answer(body: str) -> str | None:
    """The cleaned answer after the last marker that has one; None when no marker has."""
    candidates: list[tuple[int, Any]] = []
    for m in _FINAL.finditer(body):
        candidates.append((m.end(), functools.partial(_after_marker, body, m.end())))
    for m in _ANSWER_LABEL.finditer(body):
        candidates.append((m.end(), functools.partial(_after_marker, body, m.end())))
    for m in _ANSWER_IS.finditer(body):
        candidates.append((m.end(), functools.partial(_rest_of_line, body, m.end())))
    for m in _BOXED.finditer(body):
        candidates.append((m.end(), functools.partial(_braced, body, m.end())))
    json_at = _trailing_json(body)
    if json_at is not None:  # markers inside the object's strings (its "reasoning") are not the answer
        candidates = [c for c in candidates if c[0] < json_at[0]] + [json_at]
    for _, extract in sorted(candidates, key=lambda c: c[0], reverse=True)[:_MAX_CANDIDATES]:
        raw = extract()
        if raw is None:
            continue
        cleaned = _clean(raw)
        if cleaned:
            return cleaned
    return None


def _rest_of_line(body: str, at: int) -> str:
    end = body.find("\n", at)
    return body[at:] if end < 0 else body[at:end]


def _after_marker(body: str, at: int) -> str | None:
    """The rest of the marker's line, or (a heading) the first line with content after it."""
    line = _rest_of_line(body, at)
    if _clean(line):
        return line
    for nxt in body[at:].split("\n", 9)[1:9]:
        if _SKIP_LINE.fullmatch(nxt.strip()):
            continue
        return None if _BOXED.search(nxt) else nxt  # a box is a later candidate of its own
    return None


def _braced(body: str, at: int) -> str | None:
    """The content of a `{` opened just before `at`, braces balanced."""
    depth = 1
    for i in range(at, min(len(body), at + 2000)):
        ch = body[i]
        if ch == "{" and body[i - 1] != "\\":
            depth += 1
        elif ch == "}" and body[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return body[at:i].replace("\n", " ")
    return None


def _trailing_json(body: str) -> tuple[int, Any] | None:
    """A JSON object at the very end of the reply (in a code fence or not) with an `answer` key."""
    tail = body.rstrip()
    if tail.endswith("```"):
        tail = tail.rstrip("`").rstrip()
    if not tail.endswith("}"):
        return None
    end, start, tries = len(tail), len(tail), 0
    while tries < 50:
        start = tail.rfind("{", 0, start)
        if start < 0 or end - start > 20000:
            return None
        tries += 1
        try:
            obj = json.loads(tail[start:end])
        except ValueError:
            continue
        if not isinstance(obj, dict):
            return None
        keys = {re.sub(r"[\s_-]", "", str(k)).lower(): v for k, v in obj.items()}
        for key in _JSON_KEYS:
            if key in keys:
                return start, functools.partial(_json_value, keys[key])
        return None
    return None


def _json_value(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _unmarked(body: str, spec: AnswerSpec) -> Reading:
    """A reply without a marker: the answer alone, an abstention or refusal, else unparsed."""
    lines = [ln for ln in body.split("\n") if ln.strip()]
    first, last = _clean(lines[0]), _clean(lines[-1])
    answer_type = spec.type
    if answer_type == "number" and len(lines) == 1 and _ONLY_NUMBER.fullmatch(first):
        return Reading(first, "ok")
    if answer_type == "label" and spec.labels and len(lines) == 1 and first:
        label = _to_label(first, spec.labels)
        if label is not None:
            return Reading(label, "ok")
    if answer_type == "choice" and last:
        # `C) Paris` only as the whole reply: as the last of several lines it is a list of the options
        lead = _LETTER_LEAD.match(last) if len(lines) == 1 else None
        m = _LETTER_ONLY.fullmatch(last) or lead or _LETTER_LAST.search(last)
        if m and (m.group(1).isupper() or last.startswith("(") or len(lines) == 1):
            return Reading(m.group(1).upper(), "ok")
    return Reading(None, "abstained") if _refuses(body, first) else Reading(None, "unparsed")


def _refuses(body: str, first: str) -> bool:
    """Whether a reply without an answer abstains (its first line) or refuses outright (its opening)."""
    opening = " ".join(body[:400].replace("\u2019", "'").split())
    return _is_abstention(first) or bool(_REFUSAL.match(opening))


def _clean(raw: str) -> str:
    """An answer phrase without markup: first line, `\\boxed{}`/`\\text{}` unwrapped, bold, backticks, math
    delimiters, surrounding quotes and a trailing period removed."""
    s = raw.strip()
    s = s.split("\n", 1)[0] if "\n" in s else s
    if len(s) > 2000:
        s = s[:2000]
    s = s.lstrip(" \t:\uff1a=")
    box = _BOXED.search(s)
    if box:
        inner = _braced(s, box.end())
        if inner is not None:
            s = inner
    for _ in range(3):
        s, n = _TEXT_CMD.subn(r"\1", s)
        if not n:
            break
    for a, b in (("\\[", "\\]"), ("\\(", "\\)")):
        if s.startswith(a) and s.endswith(b):
            s = s[len(a) : -len(b)]
    s = s.replace("**", "").replace("__", "").replace("`", "")
    s = s.replace("\\$", "").replace("$", "")  # math delimiters or a currency sign: neither is the answer
    s = s.strip(_EDGE)
    if s.startswith(("- ", "+ ")):  # a list bullet, not a sign
        s = s[2:]
    s = s.strip(_EDGE).rstrip(_TRAIL).lstrip(" \t:")
    s = s.replace("\\%", "%").replace("\\!", "").replace("\\,", "")
    return " ".join(s.split())


def _is_abstention(answer: str) -> bool:
    if len(answer) > 160:
        return False
    norm = unicodedata.normalize("NFKC", answer).lower().replace("\u2019", "'")
    norm = " ".join(re.sub(r"[^\w\s/']", " ", norm).split())
    return bool(_ABSTAIN.fullmatch(norm))


def _letter(answer: str | None) -> str | None:
    if not answer:
        return None
    s = answer.strip().rstrip(".").strip()
    m = _LETTER_ONLY.fullmatch(s)
    if m:
        return m.group(1).upper()
    for pattern in (_LETTER_OPTION, _LETTER_LEAD):
        m = pattern.match(s)
        if m:
            return m.group(1).upper()
    m = _LETTER_PAREN.search(s) or _LETTER_OPTION.search(s)
    if m:
        return m.group(1).upper()
    m = re.fullmatch(r"(?:it\s+is\s+|it's\s+)?([A-J])\b.*", s)  # "C, Paris" / "B because ..."
    return m.group(1) if m and not re.match(r"(?:A|I)\s+[a-z]", s) else None


def _norm_text(answer: str) -> str:
    return _norm_words(_clean(answer))


def _norm_words(s: str) -> str:
    """Words only: case, punctuation and articles dropped."""
    s = unicodedata.normalize("NFKC", s).casefold()
    s = re.sub(r"[^\w\s]", " ", s)
    return " ".join(w for w in s.split() if w not in {"a", "an", "the"})


# --- labels -------------------------------------------------------------------------------------------------------

_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
_LABEL_SEP = re.compile(r"[\s_-]+")
_REMARK = re.compile(r"(?<=\S)[ \t]+\([^()]*\)$")  # "card_arrival (the card has not come)"


def _label_key(s: str) -> str:
    """A label as compared without its spelling: case, spaces/`-`/`_`, quotes and a trailing period aside."""
    s = unicodedata.normalize("NFKC", s).casefold().strip().strip(_QUOTES).strip()
    s = s[:-1] if s.endswith(".") else s
    return _LABEL_SEP.sub(" ", s.strip(_QUOTES)).strip()


@functools.lru_cache(maxsize=64)
def _label_index(labels: tuple[str, ...]) -> tuple[frozenset[str], dict[str, str | None]]:
    """The set, and each label by its key (None for a key two labels share: no guess between them)."""
    by_key: dict[str, str | None] = {}
    for label in labels:
        key = _label_key(label)
        by_key[key] = label if by_key.get(key, label) == label else None
    return frozenset(labels), by_key


def _to_label(answer: str, labels: tuple[str, ...]) -> str | None:
    """The label of the set an answer names, as the set writes it; None when it names none."""
    exact, by_key = _label_index(labels)
    candidates = (answer, _REMARK.sub("", answer))
    for candidate in candidates:
        if candidate in exact:
            return candidate
    for candidate in candidates:
        label = by_key.get(_label_key(candidate))
        if label is not None:
            return label
    return None


def _label_alone(body: str, labels: tuple[str, ...]) -> str | None:
    """A served reply as the app reads it: a label verbatim (whitespace, quotes, one trailing period aside), else the
    reply as written (a wrong answer); None when empty."""
    s = body.strip()
    if not s:
        return None
    if s in labels:
        return s
    bare = s.strip(_QUOTES).strip()
    bare = (bare[:-1] if bare.endswith(".") else bare).strip(_QUOTES).strip()
    if bare in labels or (not labels and bare):
        return bare
    return s


# --- JSON -----------------------------------------------------------------------------------------------------------

_MAX_JSON_CHARS = 100_000
_MAX_JSON_DEPTH = 64
_MAX_JSON_TRIES = 32
_NO_JSON: Any = object()  # what a text that is no JSON parses to (None is JSON's null)
_JSON_START = frozenset('{["-0123456789tfn')
_BRACE_TOKEN = re.compile(r'\\.|[{}"]', re.S)  # an escape pair is one token: `\{` in LaTeX is no brace
_NEST_TOKEN = re.compile(r'\\.|[\[\]{}"]', re.S)
_FENCE_TAG = re.compile(r"[ \t]*([A-Za-z0-9_+.-]*)[ \t]*")


def _read_json(body: str) -> Reading:
    """A `json` reply: its JSON, canonical; a refusal or abstention without any; else unparsed."""
    if len(body) > _MAX_JSON_CHARS:
        return Reading(None, "unparsed")
    for i, candidate in enumerate(_json_candidates(body)):
        if i >= _MAX_JSON_TRIES:
            break
        value = _load_json(candidate)
        if value is not _NO_JSON:
            return Reading(_canonical(value), "ok")
    lines = [ln for ln in body.split("\n") if ln.strip()]
    return Reading(None, "abstained") if _refuses(body, _clean(lines[0])) else Reading(None, "unparsed")


def _json_candidates(body: str) -> Iterator[str]:
    """Where a reply's JSON may be, in order: the whole reply, its fenced blocks from the last one back, its
    balanced `{...}` objects from the last one back."""
    yield body
    parts = body.split("```")
    for i in range(len(parts) - 2 - (len(parts) % 2 == 0), 0, -2):  # parts[1], parts[3]...: inside a fence
        inner = _fence_inner(parts[i])
        if inner is not None:
            yield inner
    spans = _object_spans(body)
    for start, end in sorted(spans, key=lambda sp: (sp[1], -sp[0]), reverse=True):
        yield body[start:end]


def _fence_inner(inner: str) -> str | None:
    """A fenced block's content without its language tag; None for a block tagged as something other than JSON."""
    first, sep, rest = inner.partition("\n")
    tag = _FENCE_TAG.fullmatch(first)
    if not sep or tag is None:
        return inner
    return rest if tag.group(1).lower() in ("", "json", "jsonc", "json5") else None


def _object_spans(s: str) -> list[tuple[int, int]]:
    """The outermost balanced `{...}` spans of a text, JSON strings inside braces respected, in linear time. A brace
    never closed (`the set {1, 2`) is no span and hides none after it."""
    opened: list[int] = []
    spans: list[tuple[int, int]] = []
    in_string = False
    for m in _BRACE_TOKEN.finditer(s):
        token = m.group()
        if in_string:
            in_string = token != '"'
        elif token == "{":
            opened.append(m.start())
        elif token == "}" and opened:
            start = opened.pop()
            while spans and spans[-1][0] > start:  # the spans inside this one: not outermost
                spans.pop()
            spans.append((start, m.end()))
        elif token == '"' and opened:
            in_string = True
    return spans


def _json_alone(text: str) -> Any:
    """A text that is nothing but JSON, in one code fence or not; `_NO_JSON` otherwise."""
    s = text.strip()
    if s.startswith("```") and s.endswith("```") and len(s) >= 6 and s.count("```") == 2:
        inner = _fence_inner(s[3:-3])
        if inner is None:
            return _NO_JSON
        s = inner
    return _load_json(s)


def _load_json(text: str) -> Any:
    """The JSON value a text is, when small and shallow enough to parse safely and finite; `_NO_JSON` otherwise."""
    s = text.strip()
    if not s or s[0] not in _JSON_START or len(s) > _MAX_JSON_CHARS or _too_deep(s):
        return _NO_JSON
    try:
        value = json.loads(s, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return _NO_JSON
    return value if _finite(value) else _NO_JSON


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(s: str) -> bool:
    """Whether a text nests brackets deeper than `_MAX_JSON_DEPTH` (outside JSON strings)."""
    if s.count("[") + s.count("{") <= _MAX_JSON_DEPTH:
        return False
    depth, in_string = 0, False
    for m in _NEST_TOKEN.finditer(s):
        token = m.group()
        if in_string:
            in_string = token != '"'
        elif token in "[{":
            depth += 1
            if depth > _MAX_JSON_DEPTH:
                return True
        elif token in "]}":
            depth -= 1
        elif token == '"':
            in_string = True
    return False


def _finite(value: Any) -> bool:
    """No infinite number (`1e999` parses to one; canonical JSON cannot write it)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _same_json(a: Any, g: Any) -> bool:
    """Field by field: keys as sets, lists in order, numbers as numbers (a bool is none), strings as words."""
    if isinstance(g, bool) or g is None:
        return a is g
    if isinstance(g, (int, float)):
        return isinstance(a, (int, float)) and not isinstance(a, bool) and a == g
    if isinstance(g, str):
        if not isinstance(a, str):
            return False
        na, ng = _norm_words(a), _norm_words(g)
        return na == ng if na or ng else a.strip() == g.strip()
    if isinstance(g, list):
        return isinstance(a, list) and len(a) == len(g) and all(map(_same_json, a, g))
    if isinstance(g, dict):
        return isinstance(a, dict) and a.keys() == g.keys() and all(_same_json(a[k], g[k]) for k in g)
    return False


def _schema_key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True)


@functools.lru_cache(maxsize=64)
def _validator(schema_key: str) -> Any:
    """A JSON Schema validator, built once per schema (by its canonical text); ValueError for an invalid schema."""
    import jsonschema

    schema = json.loads(schema_key)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"invalid JSON Schema: {e.message}") from None
    return cls(schema)


# --- numbers: math-verify -----------------------------------------------------------------------------------------


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns once per process that its timeout is off: here that is on purpose (see the module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


@functools.cache
def _math_verify() -> tuple[Any, Any]:
    """math-verify, imported on first use (it pulls in sympy, about a second)."""
    from math_verify import parse, verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutWarning())
    return parse, verify


def _math_form(s: str) -> str:
    """An answer as math-verify reads it best: plain for numbers with units, currency, separators or
    percentages (its LaTeX reading misses `€20` and reads `42 dollars` as a product); inside `$...$` for LaTeX
    (its plain reading misses `\\dfrac` and reads `2\\sqrt{2}` as 2)."""
    s = _clean(s).replace("\u2212", "-").replace("\u2013", "-")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"[\u20ac\u00a3\u00a5]|\b(?:USD|EUR|GBP)\b", "", s)
    s = re.sub(r"(?<=\S)\s+\([^()]*\)$", "", s)  # "42 (17 + 25)": the remark is not the answer
    s = re.sub(r"^\+\s*", "", s.strip())
    if re.search(r"[\\^{}]", s):
        s = f"${s}$"
    return s.strip()


@functools.lru_cache(maxsize=4096)
def _parse_math(s: str) -> tuple[Any, ...]:
    """math-verify's parse of one answer, only what is safe to compare; () when nothing is."""
    form = _math_form(s)
    if not form or len(form) > _MAX_MATH_CHARS:
        return ()
    parse, _ = _math_verify()
    try:
        parsed = parse(form, parsing_timeout=None)
    except Exception:
        return ()
    return tuple(p for p in parsed if isinstance(p, str) or _tame(p))


_HEAVY = {"Integral", "Sum", "Product", "Limit", "Derivative"}
_COMBINATORIAL = {"factorial", "factorial2", "subfactorial", "gamma", "binomial", "RisingFactorial",
                  "FallingFactorial"}


def _tame(expr: Any) -> bool:
    """Whether sympy can compare `expr` quickly: no towers of powers, no huge powers or factorials, no calculus."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return not isinstance(expr, sympy.MatrixBase) or expr.shape[0] * expr.shape[1] <= 100
    for nodes, node in enumerate(sympy.preorder_traversal(expr)):
        name = type(node).__name__
        if nodes >= 500 or name in _HEAVY:
            return False
        if isinstance(node, sympy.Pow) or name == "exp":
            base, exponent = (node.args if isinstance(node, sympy.Pow) else (sympy.E, node.args[0]))
            if not exponent.is_Number or abs(exponent) > 1000:
                return False
            digits = abs(int(exponent)) * math.log10(abs(float(base)) + 1) if base.is_Number else 0
            if exponent.is_Integer and digits > 5000:
                return False
        if name in _COMBINATORIAL and not all(a.is_Integer and abs(a) <= 1000 for a in node.args):
            return False
    return True


def _same_number(answer: str, gold: str) -> bool:
    a, g = _parse_math(answer), _parse_math(gold)
    if not a or not g:
        return bool(_norm_text(answer)) and _norm_text(answer) == _norm_text(gold)
    _, verify = _math_verify()
    try:
        if verify(list(g), list(a), timeout_seconds=None):
            return True
    except Exception:
        return False
    # math-verify reads `12.5%` as 0.125, and matches it with a plain `12.5` by its text alone: the percentage of
    # a plain number is compared as that number, so `12.50%` (or `42%` and `42.0`) matches as well.
    percent_a, percent_g = _percent_of(answer), _percent_of(gold)
    if (percent_a is None) != (percent_g is None):
        return _same_number(percent_a or answer, percent_g or gold)
    return False


def _percent_of(s: str) -> str | None:
    """The number of a percentage (`12.50%` -> `12.50`); None for anything else."""
    m = re.fullmatch(r"(.*\d)[ \t]*%", _math_form(s))
    return m.group(1) if m else None


_SCORE_LABEL = r"(?:score|rating|grade|evaluation|overall)"
_SCORE_PATTERNS = (
    re.compile(r"\[\[?[ \t]*(?P<v>[0-9]+(?:\.[0-9]+)?)[ \t]*(?:(?:/|out[ \t]+of)[ \t]*(?P<d>[0-9]+))?[ \t]*\]\]?",
               re.I),
    re.compile(rf"\b{_SCORE_LABEL}\b[\"']?[ \t]*(?:[*_]{{1,2}}[ \t]*)?(?:[:=\uff1a]|is|of)[ \t]*(?:[*_]{{1,2}}[ \t]*)?"
               r"\(?(?P<v>[0-9]+(?:\.[0-9]+)?)(?:[ \t]*(?:/|out[ \t]+of)[ \t]*(?P<d>[0-9]+))?", re.I),
)
_SCORE_ALONE = re.compile(r"[*_`]*[ \t]*(?P<v>[0-9](?:\.[0-9]+)?)[ \t]*[*_`]*\.?")
