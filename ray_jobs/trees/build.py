"""Preference trees and SFT data from MAGs (D&R section 3.3, FAIR's filtered data), as text.

A tree node is one debate round r of one MAG:
  prompt   round 0: the question as the user sent it (the format traffic arrives in, so gains show on traffic);
           round r >= 1: the debate prompt of round r, i.e. instruction + question + the structured information of
           round r-1 (every agent's reasoning and answer, its self-reflection, the feedback it received). The stored
           prompt of the student's turn is used (every agent saw the same blocks, only shuffled). A prompt longer
           than the training budget is split later, when it is tokenized (`encode.py`).
  children every agent's graded answer that round, teachers and student alike: chosen = correct AND accepted by
           peer review (FAIR's filter), rejected = incorrect; pairs = their cross product (seeded sample past
           `max_pairs_per_node`). Unparsed, abstained and truncated replies are neither.
SFT items (FAIR's two tasks):
  rationale    every correct teacher answer of any round that peer review accepted, asked as the plain question;
  explanation  per student mistake, one of the teachers' accepted explanations of it (drawn at random, as FAIR
               does), asked with the prompt the teachers were given.
Weights: every item and tree carries the weight of its debate's gold source (`training.gold_weights`: a
consensus trains below a label), and the SFT items are weighted so rationales and explanations contribute
FAIR's `explanation_share` of the loss.
Deterministic: MAGs and nodes are read in id order and every sample draws from a seeded RNG.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from services.debate.prompts import reasoning_of
from services.store.mags import Mag, Node

LEGACY_SOURCES = {"pseudo": "consensus"}  # stores written before gold provenance named a consensus `pseudo`


@dataclass
class TreeNode:
    mag_id: int
    round: int
    prompt: str  # the user message
    chosen: list[str]
    rejected: list[str]
    pairs: list[tuple[int, int]]  # (index into chosen, index into rejected)
    weight: float = 1.0  # the gold source's weight


@dataclass
class SftItem:
    mag_id: int
    kind: str  # rationale | explanation
    prompt: str  # the user message
    completion: str
    weight: float = 1.0  # gold source weight x FAIR's mix share, normalised to mean 1 over the set


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


def tree_nodes(mag: Mag, rng: random.Random, max_pairs: int, counts: Counter[str], weight: float) -> list[TreeNode]:
    out = []
    for r in range(mag.rounds):
        answers = [n for n in mag.answers(r) if n.answered and n.correct is not None]
        chosen = _dedup([answer_text(n) for n in answers if n.correct and n.accepted])
        rejected = _dedup([answer_text(n) for n in answers if not n.correct])
        counts[f"round_{r}_correct_not_accepted"] += sum(bool(n.correct and not n.accepted) for n in answers)
        if not chosen or not rejected:
            counts[f"round_{r}_nodes_without_pairs"] += 1
            continue
        if r == 0:
            prompt = mag.question
        else:
            turn = next((n for n in answers if n.role == "student"), answers[0])
            if not turn.prompt:
                counts[f"round_{r}_nodes_without_prompt"] += 1
                continue
            prompt = turn.prompt
        pairs = [(i, j) for i in range(len(chosen)) for j in range(len(rejected))]
        if len(pairs) > max_pairs:
            pairs = sorted(rng.sample(pairs, max_pairs))
        out.append(TreeNode(mag.id, r, prompt, chosen, rejected, pairs, weight))
        counts[f"round_{r}_nodes"] += 1
        counts[f"round_{r}_pairs"] += len(pairs)
    return out


def rationale_items(mag: Mag, teachers: set[str] | None, rounds: set[int] | None, weight: float) -> list[SftItem]:
    texts = [answer_text(n) for n in mag.answers() if n.role == "teacher" and n.correct and n.accepted
             and (teachers is None or n.agent in teachers) and (rounds is None or n.round in rounds)]
    return [SftItem(mag.id, "rationale", mag.question, t, weight) for t in _dedup(texts)]


def explanation_items(mag: Mag, rng: random.Random, weight: float) -> list[SftItem]:
    """FAIR: the student's mistake -> one teacher explanation of it that peer review accepted, drawn at random."""
    accepted = [n for n in mag.of_kind("explanation") if n.status == "ok" and n.accepted and n.text and n.prompt]
    if not accepted:
        return []
    pick = rng.choice(accepted)
    return [SftItem(mag.id, "explanation", pick.prompt or "", (pick.text or "").strip(), weight)]


def mix_weights(items: list[SftItem], explanation_share: float) -> None:
    """FAIR's loss mix: explanations carry `explanation_share` of the SFT loss and rationales the rest (when both
    are present), on top of each item's gold weight; weights are scaled to mean 1 so the learning rate keeps its
    meaning."""
    n = Counter(i.kind for i in items)
    if n["explanation"] and n["rationale"]:
        share = {"explanation": explanation_share, "rationale": 1 - explanation_share}
        for i in items:
            i.weight *= share[i.kind] * len(items) / n[i.kind]
    total = sum(i.weight for i in items)
    if total > 0:
        for i in items:
            i.weight *= len(items) / total


def build(
    mags: list[Mag],
    *,
    seed: int = 0,
    max_pairs_per_node: int = 16,
    gold_weights: dict[str, float] | None = None,
    explanation_share: float = 0.5,
    sft_teachers: set[str] | None = None,
    sft_rounds: set[int] | None = None,
    with_explanations: bool = True,
) -> TrainingData:
    """Trees and SFT items from usable MAGs. `sft_teachers`/`sft_rounds` restrict the rationale items (e.g. one
    teacher's round-0 answers: single-teacher distillation); `with_explanations=False` drops FAIR's explanation
    items. `gold_weights`: weight by gold source (None: every source 1); a MAG whose weight is 0 is skipped."""
    data = TrainingData()
    rng = random.Random(f"trees-{seed}")
    for mag in sorted(mags, key=lambda m: m.id):
        source = LEGACY_SOURCES.get(mag.gold_source, mag.gold_source)
        weight = 1.0 if gold_weights is None else gold_weights.get(source, 0.0)
        if not mag.usable or mag.gold is None or weight <= 0:
            data.counts["mags_skipped_unusable" if weight > 0 else "mags_skipped_weight_0"] += 1
            continue
        data.mag_ids.append(mag.id)
        data.counts[f"mags_gold_{source}"] += 1
        data.trees += tree_nodes(mag, rng, max_pairs_per_node, data.counts, weight)
        data.sft += rationale_items(mag, sft_teachers, sft_rounds, weight)
        if with_explanations:
            data.sft += explanation_items(mag, rng, weight)
    mix_weights(data.sft, explanation_share)
    data.counts.update(f"sft_{i.kind}" for i in data.sft)
    return data
