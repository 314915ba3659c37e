"""The built-in task suite: verifiable arithmetic word problems, generated from a seed, and their exact solver.

Problems are written in a small sentence grammar (a start sentence, 1-3 step sentences, a question), so the
solver is a parser for that grammar, not a lookup table: it solves any text written in it, and abstains on
anything else. It also solves plain arithmetic ("What is 17 + 25?"). The reference teacher and the evaluation
job both use it; train and eval splits are disjoint by construction (a question's hash picks its split).
"""

from __future__ import annotations

import ast
import hashlib
import operator
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

NAMES = [("Mia", "She", "her"), ("Noah", "He", "his"), ("Ava", "She", "her"), ("Liam", "He", "his"),
         ("Zoe", "She", "her"), ("Omar", "He", "his"), ("Lena", "She", "her"), ("Ravi", "He", "his")]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "shells", "stamps", "coins"]
FRIENDS = ["a friend", "a cousin", "a neighbour", "a classmate"]


@dataclass(frozen=True)
class Step:
    """One operation of a solution: `before op operand = after`, with the sentence it came from."""

    sentence: str
    op: str  # + - * /
    operand: Fraction
    before: Fraction
    after: Fraction

    def equation(self) -> str:
        sym = {"*": "*", "/": "/", "+": "+", "-": "-"}[self.op]
        return f"{fmt(self.before)} {sym} {fmt(self.operand)} = {fmt(self.after)}"


@dataclass(frozen=True)
class Solution:
    start: Fraction
    steps: tuple[Step, ...]
    answer: Fraction
    kind: str  # word | expression
    expression: str = ""


def fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{float(x):g}"


_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    return _OPS[op](a, b)


# ---- the grammar: one regex per sentence kind ------------------------------------------------------------
_NUM = r"(\d+)"
_START = re.compile(rf"^(?P<name>[A-Z][a-z]+) has {_NUM} (?P<item>[a-z]+)\.$")
_STEPS: list[tuple[re.Pattern[str], str, int]] = [  # (pattern, op, how many numbers multiply into the operand)
    (re.compile(rf"^(?:He|She) buys {_NUM} more [a-z]+\.$"), "+", 1),
    (re.compile(rf"^(?:He|She) finds {_NUM} more [a-z]+\.$"), "+", 1),
    (re.compile(rf"^(?:He|She) gives {_NUM} [a-z]+ to [a-z ]+\.$"), "-", 1),
    (re.compile(rf"^(?:He|She) loses {_NUM} [a-z]+\.$"), "-", 1),
    (re.compile(rf"^(?:He|She) buys {_NUM} boxes with {_NUM} [a-z]+ in each box\.$"), "+", 2),
    (re.compile(r"^(?:He|She) doubles (?:his|her) [a-z]+\.$"), "*2", 0),
    (re.compile(r"^(?:He|She) triples (?:his|her) [a-z]+\.$"), "*3", 0),
]
_Q_TOTAL = re.compile(r"^How many [a-z]+ does [A-Z][a-z]+ have now\?$")
_Q_SHARE = re.compile(
    rf"^(?:He|She) shares them equally among {_NUM} friends\. How many [a-z]+ does each friend get\?$"
)
_SENTENCE = re.compile(r"[^.?!]+[.?!]")


def _sentences(text: str) -> list[str]:
    # The share question is two sentences the grammar reads as one.
    parts = [s.strip() for s in _SENTENCE.findall(" ".join(text.split()))]
    out: list[str] = []
    for s in parts:
        if out and s.startswith("How many") and out[-1].startswith(("He shares", "She shares")):
            out[-1] = f"{out[-1]} {s}"
        else:
            out.append(s)
    return out


def solve_word_problem(text: str) -> Solution | None:
    sents = _sentences(text)
    if len(sents) < 2 or (m := _START.match(sents[0])) is None:
        return None
    value = start = Fraction(int(m.group(2)))
    steps: list[Step] = []
    for s in sents[1:-1]:
        for pat, op, k in _STEPS:
            if (sm := pat.match(s)) is not None:
                if op.startswith("*") and k == 0:
                    op, operand = "*", Fraction(int(op[1:]))
                else:
                    operand = Fraction(1)
                    for g in sm.groups():
                        operand *= int(g)
                after = apply(op, value, operand)
                steps.append(Step(s, op, operand, value, after))
                value = after
                break
        else:
            return None
    last = sents[-1]
    if (qm := _Q_SHARE.match(last)) is not None:
        k = Fraction(int(qm.group(1)))
        if k == 0:
            return None
        after = value / k
        steps.append(Step(last.split(". ")[0] + ".", "/", k, value, after))
        value = after
    elif not _Q_TOTAL.match(last):
        return None
    return Solution(start, tuple(steps), value, "word") if steps else None


# ---- plain arithmetic ------------------------------------------------------------------------------------
_EXPR_Q = re.compile(
    r"^\s*(?:what is|what's|compute|calculate|evaluate)?\s*"
    r"(?P<expr>[\d\s+\-*/x\u00d7\u00f7().]+?)\s*(?:=\s*)?\??\s*$",
    re.I,
)


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    if isinstance(node, ast.Constant) and isinstance(node.value, float):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    if isinstance(node, ast.BinOp):
        ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
        op = ops.get(type(node.op))
        if op is not None:
            return apply(op, _eval(node.left), _eval(node.right))
    raise ValueError("not plain arithmetic")


def solve_expression(text: str) -> Solution | None:
    m = _EXPR_Q.match(text.strip())
    if m is None or not re.search(r"\d\s*[+\-*/x\u00d7\u00f7]\s*[\d(]", m.group("expr")):
        return None
    expr = m.group("expr").replace("\u00d7", "*").replace("\u00f7", "/")
    expr = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", expr)
    try:
        value = _eval(ast.parse(expr.strip(), mode="eval").body)
    except (ValueError, SyntaxError, ZeroDivisionError, RecursionError):
        return None
    return Solution(value, (), value, "expression", " ".join(expr.split()))


def solve(text: str) -> Solution | None:
    """The exact solution of a suite problem or a plain arithmetic question; None: not solvable here."""
    return solve_word_problem(text) or solve_expression(text)


# ---- the generator ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    steps: int


def _step_sentence(rng: random.Random, pron: str, poss: str, item: str, value: int) -> tuple[str, int]:
    choices = ["more", "find", "box", "double"]
    if value > 3:
        choices += ["give", "lose"]
    kind = rng.choice(choices)
    if kind == "more":
        b = rng.randint(2, 30)
        return f"{pron} buys {b} more {item}.", value + b
    if kind == "find":
        b = rng.randint(2, 20)
        return f"{pron} finds {b} more {item}.", value + b
    if kind == "box":
        b, c = rng.randint(2, 6), rng.randint(2, 12)
        return f"{pron} buys {b} boxes with {c} {item} in each box.", value + b * c
    if kind == "double":
        return (f"{pron} doubles {poss} {item}.", value * 2) if value < 200 else (f"{pron} finds 5 more {item}.",
                                                                                   value + 5)
    b = rng.randint(1, value - 1)
    if kind == "give":
        return f"{pron} gives {b} {item} to {rng.choice(FRIENDS)}.", value - b
    return f"{pron} loses {b} {item}.", value - b


def _problem(rng: random.Random) -> Problem:
    name, pron, poss = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    steps = rng.randint(1, 3)
    value = rng.randint(5, 60)
    sents = [f"{name} has {value} {item}."]
    share = steps >= 2 and rng.random() < 0.35
    for _ in range(steps - 1 if share else steps):
        s, value = _step_sentence(rng, pron, poss, item, value)
        sents.append(s)
    if share:
        divisors = [k for k in range(2, 9) if value % k == 0]
        if divisors:
            k = rng.choice(divisors)
            sents.append(f"{pron} shares them equally among {k} friends. How many {item} does each friend get?")
            return Problem(" ".join(sents), str(value // k), steps)
        s, value = _step_sentence(rng, pron, poss, item, value)
        sents.append(s)
    sents.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(sents), str(value), steps)


def split_of(question: str) -> str:
    """Every fifth question (by hash) belongs to eval: the splits can never share a question."""
    return "eval" if int(hashlib.sha256(question.encode()).hexdigest(), 16) % 5 == 0 else "train"


def generate(split: str, n: int, seed: int = 0) -> list[Problem]:
    if split not in {"train", "eval"}:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"distillery-arith-{seed}")
    out: list[Problem] = []
    seen: set[str] = set()
    for p in _stream(rng):
        if p.question not in seen and split_of(p.question) == split:
            seen.add(p.question)
            out.append(p)
            if len(out) == n:
                return out
    raise AssertionError("unreachable")


def _stream(rng: random.Random) -> Iterator[Problem]:
    while True:
        yield _problem(rng)
