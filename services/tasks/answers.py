"""Reading an agent's `Final answer: X` and deciding whether two answers are the same.

Three answer kinds, chosen from the gold (or candidate) answer: numeric (float equality after removing
currency, thousands separators and units, as D&R does for GSM8K), multiple choice (letter match), free text
(normalised string match). An explicit abstention is not an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

Kind = Literal["numeric", "choice", "text"]
Status = Literal["ok", "unparsed", "abstained"]

_FINAL = re.compile(r"final\s+answer\s*(?:is)?\s*[:\uff1a]\s*(.+)", re.I)
_ABSTAIN = {"abstain", "[abstain]", "unknown", "none", "n/a", "i don't know", "i do not know", "cannot determine",
            "cannot be determined", "no answer"}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_CHOICE = re.compile(r"^\(?([A-J])\)?(?:[.):]|\s|$)")


@dataclass(frozen=True)
class Parsed:
    answer: str | None
    status: Status


def parse_final_answer(text: str | None) -> Parsed:
    """The text after the last `Final answer:` (markdown and a trailing period removed)."""
    if not text:
        return Parsed(None, "unparsed")
    matches = _FINAL.findall(text)
    if not matches:
        return Parsed(None, "unparsed")
    ans = matches[-1].strip()
    ans = re.sub(r"^\\boxed\{(.*)\}$", r"\1", ans.strip("*$` ")).strip().rstrip(".").strip("*$` ")
    if not ans:
        return Parsed(None, "unparsed")
    if ans.lower() in _ABSTAIN:
        return Parsed(None, "abstained")
    return Parsed(ans, "ok")


def extract_answer(text: str | None, kind: Kind) -> str | None:
    """The answer an evaluation grades: `Final answer: X` if present, else (as D&R's evaluation falls back) the
    last number in the text for a numeric question. An abstention is no answer."""
    parsed = parse_final_answer(text)
    if parsed.status != "unparsed" or not text:
        return parsed.answer
    if kind == "numeric":
        found = _NUMBER.findall(text)
        return found[-1] if found else None
    return None


def to_number(ans: str) -> Fraction | None:
    m = _NUMBER.search(ans.replace(" ", "") if re.fullmatch(r"[\d ,.]+", ans) else ans)
    if m is None:
        return None
    s = m.group(0).replace(",", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def kind_of(ans: str) -> Kind:
    if _CHOICE.match(ans.strip()) and len(ans.strip()) <= 3:
        return "choice"
    if to_number(ans) is not None and re.fullmatch(r"[-$€£\d,./% ]+(?:[a-zA-Z ]{0,20})?", ans.strip()):
        return "numeric"
    return "text"


def _norm_text(ans: str) -> str:
    s = re.sub(r"[^\w\s]", " ", ans.lower())
    return " ".join(w for w in s.split() if w not in {"a", "an", "the"})


def equivalent(a: str | None, b: str | None, kind: Kind | None = None) -> bool:
    """Whether answer `a` counts as answer `b` (the reference: gold or candidate decides the kind)."""
    if a is None or b is None:
        return False
    kind = kind or kind_of(b)
    if kind == "numeric":
        x, y = to_number(a), to_number(b)
        return x is not None and y is not None and abs(float(x) - float(y)) <= 1e-6 * max(1.0, abs(float(y)))
    if kind == "choice":
        ma, mb = _CHOICE.match(a.strip().upper()), _CHOICE.match(b.strip().upper())
        return ma is not None and mb is not None and ma.group(1) == mb.group(1)
    return _norm_text(a) == _norm_text(b)


def gsm8k_gold(answer_field: str) -> str:
    """GSM8K keeps the final answer after `####`."""
    return answer_field.rsplit("####", 1)[-1].strip().replace(",", "")
