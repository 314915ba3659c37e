"""Preference trees and SFT data from MAGs (D&R section 3.3, FAIR's fault-aware items), as text.

A tree node is one debate round r of one MAG:
  prompt   round 0: the question as the user sent it (the format traffic arrives in, so gains show on traffic);
           round r >= 1: the debate prompt of round r, i.e. instruction + question + the structured information of
           round r-1 (every agent's reasoning and answer, its self-reflection, the feedback it received), each
           agent block already cut to `debate.block_tokens` when the debate ran. The stored prompt of the student's
           turn is used (every agent saw the same blocks, only shuffled).
  children every agent's answer that round, teachers and student alike: chosen = correct, rejected = incorrect;
           pairs = their cross product (seeded sample past `max_pairs_per_node`).
SFT items:
  rationale  every correct teacher answer of any round, asked as the plain question (D&R's SFT set);
  fault      FAIR: question + the student's wrong initial answer -> one teacher's explanation of the mistake
             (drawn at random, as FAIR does), only from teachers whose own rationale passed peer review.
Deterministic: MAGs and nodes are read in id order and every sample draws from a seeded RNG.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from services.debate.prompts import reasoning_of
from services.store.mags import Mag, Node

FAULT_PROMPT = """A student answered the question below incorrectly.

<question>
{question}
</question>

<student_answer>
{answer}
</student_answer>

The correct final answer is {gold}. Explain the student's mistake and how to correct it."""


@dataclass
class TreeNode:
    mag_id: int
    round: int
    prompt: str  # the user message
    chosen: list[str]
    rejected: list[str]
    pairs: list[tuple[int, int]]  # (index into chosen, index into rejected)


@dataclass
class SftItem:
    mag_id: int
    kind: str  # rationale | fault
    prompt: str  # the user message
    completion: str


@dataclass
class TrainingData:
    trees: list[TreeNode] = field(default_factory=list)
    sft: list[SftItem] = field(default_factory=list)
    mag_ids: list[int] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def pairs(self) -> int:
        return sum(len(t.pairs) for t in self.trees)

    def summary(self) -> dict[str, Any]:
        return {"mags": len(self.mag_ids), "trees": len(self.trees), "pairs": self.pairs, "sft": len(self.sft),
                **dict(sorted(self.counts.items()))}


def answer_text(node: Node) -> str:
    """A graded answer in the answer format (`### Answer`, reasoning, `Final answer: X`); raw text if unparsed."""
    if node.answer is None:
        return (node.text or "").strip()
    return f"### Answer\n{reasoning_of(node.text or '')}\nFinal answer: {node.answer}"


def _dedup(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(t for t in texts if t))


def tree_nodes(mag: Mag, rng: random.Random, max_pairs: int, counts: Counter[str]) -> list[TreeNode]:
    out = []
    for r in range(mag.rounds):
        answers = [n for n in mag.answers(r) if n.answered and n.correct is not None]
        chosen = _dedup([answer_text(n) for n in answers if n.correct])
        rejected = _dedup([answer_text(n) for n in answers if not n.correct])
        if not chosen or not rejected:
            counts["nodes_without_pairs"] += 1
            continue
        if r == 0:
            prompt = mag.question
        else:
            turn = next((n for n in answers if n.role == "student"), answers[0])
            if not turn.prompt:
                counts["nodes_without_prompt"] += 1
                continue
            prompt = turn.prompt
        pairs = [(i, j) for i in range(len(chosen)) for j in range(len(rejected))]
        if len(pairs) > max_pairs:
            pairs = sorted(rng.sample(pairs, max_pairs))
        out.append(TreeNode(mag.id, r, prompt, chosen, rejected, pairs))
        counts[f"trees_round_{r}"] += 1
    return out


def rationale_items(mag: Mag, teachers: set[str] | None, rounds: set[int] | None) -> list[SftItem]:
    texts = [answer_text(n) for n in mag.answers() if n.role == "teacher" and n.correct
             and (teachers is None or n.agent in teachers) and (rounds is None or n.round in rounds)]
    return [SftItem(mag.id, "rationale", mag.question, t) for t in _dedup(texts)]


def fault_items(mag: Mag, rng: random.Random) -> list[SftItem]:
    """FAIR: the student's wrong initial answer -> one teacher explanation of the mistake, drawn at random among
    those by teachers whose own rationale passed peer review (none accepted: no item)."""
    student = next((n for n in mag.answers(0) if n.role == "student" and n.answered), None)
    if student is None or student.correct is not False:
        return []
    accepted = {n.agent for n in mag.answers(0) if n.role == "teacher" and n.accepted}
    explanations = _dedup([c.text.strip() for c in mag.of_kind("critique", 0)
                           if c.status == "ok" and c.role == "teacher" and c.agent in accepted
                           and c.target_agent == student.agent and c.text])
    if not explanations:
        return []
    prompt = FAULT_PROMPT.format(question=mag.question, answer=(student.text or "").strip(), gold=mag.gold)
    return [SftItem(mag.id, "fault", prompt, rng.choice(explanations))]


def build(
    mags: list[Mag],
    *,
    seed: int = 0,
    max_pairs_per_node: int = 16,
    sft_teachers: set[str] | None = None,
    sft_rounds: set[int] | None = None,
    with_fault_items: bool = True,
) -> TrainingData:
    """Trees and SFT items from usable MAGs. `sft_teachers`/`sft_rounds` restrict the rationale items (e.g. one
    teacher's round-0 answers: single-teacher distillation); `with_fault_items=False` drops FAIR's items."""
    data = TrainingData()
    rng = random.Random(f"trees-{seed}")
    for mag in sorted(mags, key=lambda m: m.id):
        if not mag.usable or mag.gold is None:
            data.counts["mags_skipped_unusable"] += 1
            continue
        data.mag_ids.append(mag.id)
        data.trees += tree_nodes(mag, rng, max_pairs_per_node, data.counts)
        data.sft += rationale_items(mag, sft_teachers, sft_rounds)
        if with_fault_items:
            data.sft += fault_items(mag, rng)
    data.counts.update(f"sft_{i.kind}" for i in data.sft)
    return data
