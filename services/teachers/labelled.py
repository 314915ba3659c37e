"""The labelled teacher's mind: a reference teacher for intent routing, backed by a labelled JSONL file.

A teacher whose profile sets `labels_file` (`text`, `label` per line, e.g. BANKING77's train.jsonl) answers a
debated message found in the file with the file's label, in prose as an LLM would, ending `Final answer: <label>`.
The message is the question's last user message (after the app's `<system_prompt>`), looked up as written, then
with whitespace and case normalised. At `error_rate`, as a deterministic function of (seed, name, prompt), it
answers with a plausible wrong label instead: a seeded choice among the few labels closest to the right one (the
labels whose messages read most alike, see `_neighbours`), never the right one, with a rationale consistent with
it. A message not in the file gets an honest abstention. Critiques, self-reflections and explanations of a
student's mistake name the gold the prompt states and say why the other label does not fit; peer reviews score
against the file's label and err at the same rate, as the reference teacher's do.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from services.config import ReferenceProfile
from services.debate import prompts
from services.tasks.answers import read_answer
from services.teachers.reference import (
    ABSTAIN,
    CRITIQUE_OPENING,
    EXPLANATION_OPENING,
    REFLECTION_OPENING,
    TeacherMind,
    explanation_verdict,
    gold_from,
)

NEIGHBOURS = 3  # a wrong answer is a seeded choice among this many labels closest to the right one
_GLUE = frozenset({"a", "an", "and", "by", "for", "into", "my", "of", "on", "or", "the", "to", "via"})


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _key(label: str) -> str:
    """A label as compared: `Refund_not_showing_up`, `refund not showing up` and `reverted_card_payment?` alike."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", label.casefold()).split())


def _words(text: str) -> set[str]:
    """Content words, crudely stemmed (`limits` ~ `limit`), for how close two labels or a message and a label are."""
    out = set()
    for w in re.findall(r"[a-z0-9]+", text.casefold()):
        if w in _GLUE:
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def human(label: str) -> str:
    """What a label is about, in words: `card_payment_fee_charged` -> `card payment fee charged`."""
    return _key(label)


class LabelledData:
    """A labelled JSONL file, indexed once: message -> label (exact and normalised), the label set, an example
    message per label, and each label's nearest other labels."""

    def __init__(self, path: Path) -> None:
        self.exact: dict[str, str] = {}
        self.normalised: dict[str, str] = {}
        self.examples: dict[str, str] = {}  # label -> its first message in the file
        words: dict[str, Counter[str]] = {}  # label -> the words of its messages
        with Path(path).open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text, label = str(row["text"]), str(row["label"])
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: expected a JSON object with `text` and `label`") from e
                self.exact.setdefault(text, label)
                self.normalised.setdefault(_norm(text), label)
                self.examples.setdefault(label, text)
                words.setdefault(label, Counter()).update(_words(text))
        if not self.examples:
            raise ValueError(f"{path}: no labelled rows")
        self.labels = list(self.examples)
        self._by_key = {_key(lab): lab for lab in self.labels}
        self.neighbours = _neighbours(words)

    def label_of(self, message: str) -> str | None:
        return self.exact.get(message) or self.normalised.get(_norm(message))

    def canonical(self, answer: str | None) -> str | None:
        """The label an answer names (`Card arrival` -> `card_arrival`); None when it names none."""
        return self._by_key.get(_key(answer)) if answer else None


def _neighbours(words: dict[str, Counter[str]]) -> dict[str, list[str]]:
    """Each label's `NEIGHBOURS` closest other labels: the ones a careless reader confuses it with. Closeness is the
    cosine of the labels' messages as TF-IDF word vectors (labels as documents), plus 0.1 a word the two labels'
    names share (`card_arrival` -> card_delivery_estimate, order_physical_card, ...)."""
    df = Counter(w for c in words.values() for w in c)
    n = len(words)
    vectors: dict[str, dict[str, float]] = {}
    for label, counts in words.items():
        v = {w: k * math.log(n / df[w]) for w, k in counts.items() if df[w] < n}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        vectors[label] = {w: x / norm for w, x in v.items()}

    def closeness(a: str, b: str) -> float:
        va, vb = sorted((vectors[a], vectors[b]), key=len)
        return sum(x * vb.get(w, 0.0) for w, x in va.items()) + 0.1 * len(_words(a) & _words(b))

    return {a: sorted((b for b in words if b != a), key=lambda b: (-closeness(a, b), b))[:NEIGHBOURS] for a in words}


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> LabelledData:
    return LabelledData(Path(path))


def load_labelled(path: Path) -> LabelledData:
    """The file's index, read once per process while the file stays as it is (teachers sharing a file share it)."""
    st = Path(path).stat()
    return _load(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


class LabelledTeacher(TeacherMind):
    def __init__(self, name: str, profile: ReferenceProfile) -> None:
        super().__init__(name, profile)
        if profile.labels_file is None:
            raise ValueError(f"teacher {name!r}: a labelled teacher needs `reference.labels_file`")
        self.data = load_labelled(profile.labels_file)

    # ---- the tasks ----------------------------------------------------------------------------------
    def _answer(self, question: str, prompt: str) -> str:
        message = prompts.final_message(question)
        label = self.data.label_of(message)
        if label is None:
            return ABSTAIN
        if self._errs(prompt):
            label = self._rng(prompt + "#label").choice(self.data.neighbours[label])
        return "### Answer\n" + _rationale(message, label) + f"\nFinal answer: {label}"

    def _critique(self, prompt: str, other: str) -> str:
        return self._explain(prompt, other, CRITIQUE_OPENING, "The answer should be the intent {gold}, written "
                             "exactly as the system prompt lists it.")

    def _explain_mistake(self, prompt: str, student: str) -> str:
        return self._explain(prompt, student, EXPLANATION_OPENING, "Ask what the customer wants done, compare it "
                             "with what each intent covers, and answer {gold}, written exactly as listed.")

    def _reflect(self, prompt: str, own: str) -> str:
        return self._explain(prompt, own, REFLECTION_OPENING, "Next time I will check what the customer actually "
                             "asks for against what each candidate intent covers before answering.")

    def _review(self, prompt: str, solution: str) -> str:
        message = prompts.final_message(prompts.tag(prompt, "question") or "")
        expected = self.data.label_of(message)
        if expected is None and (hint := prompts.tag(prompt, "hint")) is not None:
            expected = self.data.canonical(gold_from(hint))
        if expected is None:
            return "I cannot verify this solution: the message is outside what I can check reliably."
        theirs = self._label_in(solution)
        if theirs == expected:
            score, why = 5, f"The message is about {human(expected)}, so {expected} is the right intent."
        elif theirs is not None:
            score, why = 2, (f"The final answer {theirs} is an intent, but not this message's: it is about "
                             f"{human(expected)}, so the right intent is {expected}.")
        else:
            given = read_answer(solution, "text").answer or "(missing)"
            score, why = 1, f"The final answer {given} is not one of the listed intents; the right one is {expected}."
        if (misjudged := self._misjudged(prompt, score)) is not None:  # a careless reviewer
            score = misjudged
            why = "I am not sure this intent fits the message." if score == 2 else "This intent seems right to me."
        return f"{why}\n[{score}]"

    def _review_explanation(self, prompt: str, explanation: str) -> str:
        """An explanation is good when it names the gold label and says why the student's label does not fit."""
        gold = gold_from(prompt)
        said = _key(explanation)
        names_gold = gold.casefold() in explanation.casefold() or f" {_key(gold)} " in f" {said} "
        student = self._label_in(prompts.tag(prompt, "student_answer") or "")
        concrete = student is not None and student != self.data.canonical(gold) and (
            student.casefold() in explanation.casefold() or f" {_key(student)} " in f" {said} ")
        score = 5 if names_gold and concrete else 4 if names_gold else 2
        return explanation_verdict(self._misjudged(prompt, score) or score)

    # ---- helpers ----------------------------------------------------------------------------------------
    def _label_in(self, text: str) -> str | None:
        """The label a reply ends on: its `Final answer:`, else a reply that is the label alone."""
        reading = read_answer(text, "text")
        if reading.answer is not None:
            return self.data.canonical(reading.answer)
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        return self.data.canonical(lines[-1]) if reading.status == "unparsed" and lines else None

    def _explain(self, prompt: str, text: str, opening: str, closing: str) -> str:
        """A critique, a self-reflection or an explanation: the answer given, the gold, why the given label does not
        fit this message and what does."""
        given = self._label_in(text)
        shown = given or read_answer(text, "text").answer or "(missing)"
        gold = self.data.canonical(gold_from(prompt)) or gold_from(prompt)
        message = prompts.final_message(prompts.tag(prompt, "question") or "")
        out = [opening.format(x=shown, gold=gold), f'The customer\'s message "{message}" is about {human(gold)}.']
        if given is not None and given != gold:
            example = self.data.examples[given]
            out.append(f"{given} is for messages about {human(given)}, such as \"{example}\"; this message is not "
                       f"one of those.")
        elif given is None:
            out.append(f"{shown} is not one of the intents the system prompt lists.")
        out.append(closing.format(gold=gold))
        return " ".join(out)


def _rationale(message: str, label: str) -> str:
    """Why a message has a label, in prose, pointing at the words of the message the label's name shares."""
    out = f'The customer says: "{message}"\nThey are asking about {human(label)}'
    if cues := sorted(_words(message) & _words(label)):
        out += ", as the mention of " + " and ".join(f'"{w}"' for w in cues[:3]) + " shows"
    return out + f".\nOf the intents listed in the system prompt, {label} covers exactly this."
