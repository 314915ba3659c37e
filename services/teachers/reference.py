"""The reference teacher's mind: reads a debate prompt, solves exactly, writes what an LLM teacher would.

It answers, critiques, reflects, explains a student's mistake (FAIR) and peer-reviews rationales and explanations
in the formats of `services.debate.prompts`, solving with the task suite's exact solver. An error profile makes it
a weaker teacher: at `error_rate`, as a deterministic
function of (seed, prompt), it picks one of its error styles (wrong operation, off-by-one, dropped step) and
writes a rationale that is wrong in that way, consistently from the faulty step on; its reviews err at the same
rate. Questions outside the suite get an honest abstention.

`TeacherMind` is what every built-in mind shares (the dispatch on the prompt's tags, errors on purpose); the
labelled teacher (`services.teachers.labelled`) is the other one.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import replace
from fractions import Fraction

from services.config import ReferenceProfile
from services.debate import prompts
from services.tasks.answers import read_answer, same_answer
from services.tasks.arithmetic import Solution, Step, apply, fmt, solve

ABSTAIN = "### Answer\nThis question is outside what I can solve reliably, so I abstain.\nFinal answer: abstain"
_SWAP = {"+": "-", "-": "+", "*": "+", "/": "*"}
_EQ = re.compile(r"(-?\d+(?:\.\d+)?)\s*([+\-*/x\u00d7])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")


# How a critique, an explanation of a student's mistake and a self-reflection open (every mind writes them alike).
CRITIQUE_OPENING = "Feedback: The final answer {x} is wrong; the correct answer is {gold}."
EXPLANATION_OPENING = "The student's final answer {x} is wrong; the correct answer is {gold}."
REFLECTION_OPENING = "Self-reflection: My final answer {x} was wrong; the correct answer is {gold}."


class TeacherMind:
    """What every built-in teacher shares: the dispatch on the prompt's shape and its errors on purpose, a
    deterministic function of (seed, name, prompt). A subclass writes the six replies."""

    def __init__(self, name: str, profile: ReferenceProfile) -> None:
        self.name = name
        self.profile = profile

    # ---- dispatch on the prompt's shape ------------------------------------------------------------------
    def reply(self, prompt: str) -> str:
        if (explanation := prompts.tag(prompt, "explanation")) is not None:
            return self._review_explanation(prompt, explanation)
        if (solution := prompts.tag(prompt, "solution")) is not None:
            return self._review(prompt, solution)
        if (other := prompts.tag(prompt, "other_answer")) is not None:
            return self._critique(prompt, other)
        if (student := prompts.tag(prompt, "student_answer")) is not None:
            return self._explain_mistake(prompt, student)
        if (own := prompts.tag(prompt, "your_answer")) is not None:
            return self._reflect(prompt, own)
        question = prompts.tag(prompt, "question") or prompt
        return self._answer(question, prompt)

    def _answer(self, question: str, prompt: str) -> str:
        raise NotImplementedError

    def _critique(self, prompt: str, other: str) -> str:
        raise NotImplementedError

    def _explain_mistake(self, prompt: str, student: str) -> str:
        raise NotImplementedError

    def _reflect(self, prompt: str, own: str) -> str:
        raise NotImplementedError

    def _review(self, prompt: str, solution: str) -> str:
        raise NotImplementedError

    def _review_explanation(self, prompt: str, explanation: str) -> str:
        raise NotImplementedError

    # ---- errors on purpose ----------------------------------------------------------------------------------
    def _rng(self, prompt: str) -> random.Random:
        digest = hashlib.sha256(f"{self.profile.seed}|{self.name}|{prompt}".encode()).hexdigest()
        return random.Random(int(digest[:16], 16))

    def _errs(self, prompt: str) -> bool:
        return self.profile.error_rate > 0 and self._rng(prompt).random() < self.profile.error_rate

    def _misjudged(self, prompt: str, score: int) -> int | None:
        """A careless reviewer, at `error_rate`: a high score turns low and a low one high. None: it judges right."""
        if self._errs(prompt + "#review"):
            return 2 if score >= 4 else 4
        return None


def explanation_verdict(score: int) -> str:
    verdict = "The explanation finds the mistake." if score >= 4 else "The explanation misses the mistake."
    return f"{verdict}\n[{score}]"


class ReferenceTeacher(TeacherMind):
    # ---- the tasks ----------------------------------------------------------------------------------
    def _answer(self, question: str, prompt: str) -> str:
        sol = solve(prompts.final_message(question))
        if sol is None:
            return ABSTAIN
        if self._errs(prompt):
            sol = self._corrupt(sol, prompt)
        return render(sol)

    def _critique(self, prompt: str, other: str) -> str:
        return _explain(prompt, other, CRITIQUE_OPENING,
                        "the other agent", "A correct solution: {eqs}.",
                        "Recheck each step of the reasoning against the question.")

    def _explain_mistake(self, prompt: str, student: str) -> str:
        return _explain(prompt, student, EXPLANATION_OPENING,
                        "the student", "A correct solution: {eqs}.",
                        "Recheck each step of the reasoning against the question.")

    def _review_explanation(self, prompt: str, explanation: str) -> str:
        """An explanation is good when it names the gold answer and finds a concrete mistake."""
        gold = gold_from(prompt)
        names_gold = bool(re.search(rf"(?<![\d.]){re.escape(gold)}(?![\d])", explanation))
        concrete = bool(_EQ.search(explanation)) or "step" in explanation.lower()
        score = 5 if names_gold and concrete else 4 if names_gold else 2
        return explanation_verdict(self._misjudged(prompt, score) or score)

    def _reflect(self, prompt: str, own: str) -> str:
        return _explain(prompt, own, REFLECTION_OPENING,
                        "I", "Next time I will recompute every step before answering.", "")

    def _review(self, prompt: str, solution: str) -> str:
        hint = prompts.tag(prompt, "hint")
        expected: str | None = None
        if hint is not None:
            expected = hint.rsplit(" ", 1)[-1].rstrip(".")
        else:
            sol = solve(prompts.final_message(prompts.tag(prompt, "question") or ""))
            if sol is not None:
                expected = fmt((self._corrupt(sol, prompt) if self._errs(prompt) else sol).answer)
        if expected is None:
            return "I cannot verify this solution: the question is outside what I can check reliably."
        theirs = read_answer(solution, "number").answer
        if not same_answer(theirs, expected, "number"):
            score, why = 1, f"The final answer {theirs or '(missing)'} is not the correct result {expected}."
        elif wrong := _wrong_equations(solution):
            score, why = 3, f"The final answer is right, but the arithmetic '{wrong[0]}' is wrong."
        elif not _EQ.search(solution):
            score, why = 4, "The final answer is right, but the steps are not shown."
        else:
            score, why = 5, "Every step checks out and the final answer is correct."
        if (misjudged := self._misjudged(prompt, score)) is not None:  # a careless reviewer
            score = misjudged
            why = "I am not fully convinced by this solution." if score == 2 else "This looks plausible to me."
        return f"{why}\n[{score}]"

    # ---- errors on purpose ----------------------------------------------------------------------------------
    def _corrupt(self, sol: Solution, prompt: str) -> Solution:
        rng = self._rng(prompt + "#style")
        style = rng.choice(self.profile.error_styles)
        if style == "dropped_step" and len(sol.steps) >= 2:
            i = rng.randrange(len(sol.steps))
            return _replay(sol, [s for k, s in enumerate(sol.steps) if k != i])
        if style == "wrong_operation" and sol.steps:
            i = rng.randrange(len(sol.steps))
            steps = list(sol.steps)
            steps[i] = replace(steps[i], op=_SWAP[steps[i].op])
            return _replay(sol, steps)
        delta = Fraction(rng.choice([-1, 1]))  # off-by-one (also the fallback for problems too short to err)
        if sol.steps:
            last = sol.steps[-1]
            steps = [*sol.steps[:-1], replace(last, after=last.after + delta)]
            return replace(sol, steps=tuple(steps), answer=sol.answer + delta)
        return replace(sol, answer=sol.answer + delta)


def _replay(sol: Solution, steps: list[Step]) -> Solution:
    """Recompute a solution from its start through `steps` (used after changing or dropping a step)."""
    value, out = sol.start, []
    for s in steps:
        after = apply(s.op, value, s.operand) if s.operand != 0 or s.op != "/" else value
        out.append(replace(s, before=value, after=after))
        value = after
    return replace(sol, steps=tuple(out), answer=value)


def render(sol: Solution) -> str:
    if sol.kind == "expression":
        return f"### Answer\nCompute {sol.expression} = {fmt(sol.answer)}.\nFinal answer: {fmt(sol.answer)}"
    lines = [f"Start: {fmt(sol.start)}."]
    lines += [f"Step {i}: {s.sentence} So {s.equation()}." for i, s in enumerate(sol.steps, 1)]
    return "### Answer\n" + "\n".join(lines) + f"\nFinal answer: {fmt(sol.answer)}"


def _equations(sol: Solution) -> str:
    if sol.kind == "expression":
        return f"{sol.expression} = {fmt(sol.answer)}"
    return "; ".join(s.equation() for s in sol.steps)


def _explain(prompt: str, text: str, opening: str, who: str, closing: str, unsolvable: str) -> str:
    """A critique or a self-reflection: what the answer was, the gold, and where the reasoning went wrong."""
    answer = read_answer(text, "number").answer or "(missing)"
    out = opening.format(x=answer, gold=gold_from(prompt))
    sol = solve(prompts.final_message(prompts.tag(prompt, "question") or ""))
    if sol is None:
        return f"{out} {unsolvable}".rstrip()
    return f"{out} {_diagnose(sol, text, who)} {closing.format(eqs=_equations(sol))}"


def gold_from(prompt: str) -> str:
    """The gold the prompt states: "The correct final answer is X." or "The teachers' consensus final answer is X."."""
    m = re.search(r"(?:correct|consensus) final answer (?:is )?(.+?)(?:\.\s|,\s|\.<|\.$|\s*$)", prompt, flags=re.M)
    return m.group(1).strip() if m else "unknown"


def _parse_equations(text: str) -> list[tuple[Fraction, str, Fraction, Fraction]]:
    out = []
    for a, op, b, c in _EQ.findall(text):
        out.append((Fraction(a), {"x": "*", "\u00d7": "*"}.get(op, op), Fraction(b), Fraction(c)))
    return out


def _wrong_equations(text: str) -> list[str]:
    bad = []
    for a, op, b, c in _parse_equations(text):
        if op == "/" and b == 0:
            continue
        if apply(op, a, b) != c:
            bad.append(f"{fmt(a)} {op} {fmt(b)} = {fmt(c)}")
    return bad


def _diagnose(sol: Solution, text: str, who: str) -> str:
    """Where a rationale departs from the exact solution, in words."""
    mine = "my" if who == "I" else "its"
    if wrong := _wrong_equations(text):
        return f"The arithmetic '{wrong[0]}' in {mine} reasoning is wrong."
    theirs = _parse_equations(text)
    for i, step in enumerate(sol.steps):
        if i >= len(theirs):
            return f"{'I' if who == 'I' else 'It'} left out a step: '{step.sentence}' ({step.equation()})."
        a, op, b, c = theirs[i]
        if op != step.op or b != step.operand:
            return (f"The step '{step.sentence}' needs {step.equation()}, but {mine} reasoning computed "
                    f"{fmt(a)} {op} {fmt(b)} = {fmt(c)}.")
    final = read_answer(text, "number").answer
    if final is not None and not same_answer(final, fmt(sol.answer), "number"):
        return f"The steps are right but {mine} final result {final} does not follow from them."
    return f"{'My' if who == 'I' else 'Its'} reasoning does not reach the correct result."
