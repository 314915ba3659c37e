"""Reading an agent's final answer from a reply as hosted models write it, and deciding whether it is right.

One reader per answer type (issue 13 adds `label` and `json` behind the same two functions):
  number  math and numbers, compared by HF `math-verify` (fractions, LaTeX, `\\boxed{}`, thousands separators,
          units, percentages); no hand-written float comparer beside it;
  choice  option letters: `C`, `(C)`, `Option C`, `C) text`;
  text    a short phrase, compared after normalisation (case, punctuation, articles).

Where the final answer sits: `Final answer: X` (with markdown bold around either part, `is`/`:`/`=` after it), a
`## Final answer` / `**Final Answer**` heading with X on the next line, `The final answer is X`, `\\boxed{X}`,
`**Answer:** X` / `Answer: X` at the start of a line, a trailing JSON object `{"answer": X}` (bare or in a fence),
`The answer is X`. The last one written wins, whatever its form, so a reply that changes its mind is read at its
last word. `<think>...</think>` reasoning is not read. X is the rest of the marker's line (after a heading, the
next line with content), with markdown (`**`, backticks, `$`, `\\text{}`) and a trailing period removed; a choice
answer is reduced to its letter. Without any marker a reply is still read when it is nothing but the answer: a
number for `number` (never the last number of a longer text: that is only `read_for_eval`'s fallback), for
`choice` a letter (`C`, `(C)`, `**C**`, `... option C`) on its last line or `C) text` as the whole reply.

Four outcomes: `ok` (an answer, to be graded), `unparsed` (no final answer found), `abstained` (the agent said it
does not know: `I don't know`, `abstain`, `cannot be determined`, `unknown`, `N/A`, `insufficient information`...
as the final answer, or a reply that refuses outright without one), `truncated` (the reply was cut at
`max_tokens`, `finish_reason == "length"`). Only `ok` is ever graded: the other three are never wrong, never
critiqued, never a rejected child.

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
from dataclasses import dataclass
from typing import Any, Literal

AnswerType = Literal["number", "choice", "text"]
Status = Literal["ok", "unparsed", "abstained", "truncated"]


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


def read_answer(text: str | None, answer_type: AnswerType, *, finish_reason: str | None = None) -> Reading:
    """The final answer of a reply. `finish_reason == "length"` -> `truncated` whatever the text holds."""
    if finish_reason == "length":
        return Reading(None, "truncated")
    body = _body(text)
    if not body.strip():
        return Reading(None, "unparsed")
    raw = _marked_answer(body)
    if raw is None:
        return _unmarked(body, answer_type)
    if _is_abstention(raw):
        return Reading(None, "abstained")
    if answer_type == "choice":
        letter = _letter(raw)
        return Reading(letter, "ok") if letter else Reading(None, "unparsed")
    return Reading(raw, "ok")


def read_for_eval(text: str | None, answer_type: AnswerType) -> str | None:
    """What an evaluation grades, as D&R's evaluation reads a served reply: `read_answer`'s answer, else the last
    number in the text for a `number` question. None when there is nothing to grade.

    The fallback applies to an `unparsed` reply only: an abstention has nothing to grade."""
    reading = read_answer(text, answer_type)
    if reading.status != "unparsed" or answer_type != "number":
        return reading.answer
    found = _LAST_NUMBER.findall(_body(text))
    return found[-1].rstrip(",") if found else None


def same_answer(answer: str | None, gold: str | None, answer_type: AnswerType) -> bool:
    """Whether `answer` counts as `gold`. None on either side is never the same."""
    if answer is None or gold is None:
        return False
    if answer_type == "choice":
        a, g = _letter(_clean(answer)), _letter(_clean(gold))
        return a is not None and a == g
    if answer_type == "number":
        return _same_number(answer, gold)
    a, g = _norm_text(answer), _norm_text(gold)
    return bool(a) and a == g


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


def _unmarked(body: str, answer_type: AnswerType) -> Reading:
    """A reply without a marker: the answer alone, an abstention or refusal, else unparsed."""
    lines = [ln for ln in body.split("\n") if ln.strip()]
    first, last = _clean(lines[0]), _clean(lines[-1])
    if answer_type == "number" and len(lines) == 1 and _ONLY_NUMBER.fullmatch(first):
        return Reading(first, "ok")
    if answer_type == "choice" and last:
        # `C) Paris` only as the whole reply: as the last of several lines it is a list of the options
        lead = _LETTER_LEAD.match(last) if len(lines) == 1 else None
        m = _LETTER_ONLY.fullmatch(last) or lead or _LETTER_LAST.search(last)
        if m and (m.group(1).isupper() or last.startswith("(") or len(lines) == 1):
            return Reading(m.group(1).upper(), "ok")
    opening = " ".join(body[:400].replace("\u2019", "'").split())
    if _is_abstention(first) or _REFUSAL.match(opening):
        return Reading(None, "abstained")
    return Reading(None, "unparsed")


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
    s = unicodedata.normalize("NFKC", _clean(answer)).casefold()
    s = re.sub(r"[^\w\s]", " ", s)
    return " ".join(w for w in s.split() if w not in {"a", "an", "the"})


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
        return bool(verify(list(g), list(a), timeout_seconds=None))
    except Exception:
        return False


_SCORE_LABEL = r"(?:score|rating|grade|evaluation|overall)"
_SCORE_PATTERNS = (
    re.compile(r"\[\[?[ \t]*(?P<v>[0-9]+(?:\.[0-9]+)?)[ \t]*(?:(?:/|out[ \t]+of)[ \t]*(?P<d>[0-9]+))?[ \t]*\]\]?",
               re.I),
    re.compile(rf"\b{_SCORE_LABEL}\b[\"']?[ \t]*(?:[*_]{{1,2}}[ \t]*)?(?:[:=\uff1a]|is|of)[ \t]*(?:[*_]{{1,2}}[ \t]*)?"
               r"\(?(?P<v>[0-9]+(?:\.[0-9]+)?)(?:[ \t]*(?:/|out[ \t]+of)[ \t]*(?P<d>[0-9]+))?", re.I),
)
_SCORE_ALONE = re.compile(r"[*_`]*[ \t]*(?P<v>[0-9](?:\.[0-9]+)?)[ \t]*[*_`]*\.?")
