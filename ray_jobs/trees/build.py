"""Preference trees and SFT data from MAGs (D&R section 3.3, FAIR's filtered data), as text.

A tree node is one debate round r of one MAG:
  prompt   round 0: the request as the client sent it (its messages: system prompt, format instruction, turns),
           so what is learnt is what the gate measures and traffic gets;
           round r >= 1: the debate prompt of round r, i.e. instruction + question + the structured information of
           round r-1 (every agent's reasoning and answer, its self-reflection, the feedback it received). The stored
           prompt of the student's turn is used (every agent saw the same blocks, only shuffled). A prompt longer
           than the training budget is split later, when it is tokenized (`encode.py`).
  children every agent's graded answer that round, teachers and student alike: chosen = correct AND accepted by
           peer review (FAIR's filter), rejected = incorrect; pairs = their cross product (seeded sample past
           `max_pairs_per_node`). Unparsed, abstained and truncated replies are neither.
  app format  a `label` or `json` task's app expects the answer alone: its round-0 node pairs the gold (chosen)
           with the wrong answers (rejected), each written alone, as the app's reply would be, and with what the
           student actually replied to the client when that was not the gold alone (prose, a wrong label).
SFT items (FAIR's two tasks, and the app's own format):
  rationale    every correct teacher answer of any round that peer review accepted, asked as the client asked (a
               `label`/`json` task: as the debated question, so the reasoning is learnt apart from the app's format);
  explanation  per student mistake, one of the teachers' accepted explanations of it (drawn at random, as FAIR
               does), asked with the prompt the teachers were given;
  app          a `label`/`json` task's request as the client sent it -> the gold alone (the label verbatim).
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
from services.store.debates import NodeStatus
from services.store.mags import Mag, Node
from services.tasks.answers import read_for_eval, same_answer

LEGACY_SOURCES = {"pseudo": "consensus"}  # stores written before gold provenance named a consensus `pseudo`
APP_FORMAT_KINDS = {"label", "json"}  # answer types whose app reads the answer alone


@dataclass
class TreeNode:
    mag_id: int
    round: int
    prompt: str  # the user message
    chosen: list[str]
    rejected: list[str]
    pairs: list[tuple[int, int]]  # (index into chosen, index into rejected)
    weight: float = 1.0  # the gold source's weight
    messages: list[dict[str, Any]] | None = None  # the client's request, instead of `prompt` as one user message


@dataclass
class SftItem:
    mag_id: int
    kind: str  # rationale | explanation | app
    prompt: str  # the user message
    completion: str
    weight: float = 1.0  # gold source weight x FAIR's mix share, normalised to mean 1 over the set
    messages: list[dict[str, Any]] | None = None  # the client's request, instead of `prompt` as one user message


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


def _served_wrong(mag: Mag) -> str | None:
    """The student's reply to the client when the app would not have read the gold from it."""
    out = (mag.served_output or "").strip()
    if not out or same_answer(read_for_eval(out, mag.answer_kind), mag.gold, mag.answer_kind):  # type: ignore[arg-type]
        return None
    return out


def app_format(mag: Mag) -> bool:
    """Whether the task's app expects the answer alone (a label, a JSON object), not reasoning."""
    return mag.answer_kind in APP_FORMAT_KINDS and bool(mag.messages)


def tree_nodes(mag: Mag, rng: random.Random, max_pairs: int, counts: Counter[str], weight: float) -> list[TreeNode]:
    out = []
    for r in range(mag.rounds):
        answers = [n for n in mag.answers(r) if n.answered and n.correct is not None]
        alone = r == 0 and app_format(mag)
        chosen = [mag.gold or ""] if alone and any(n.correct and n.accepted for n in answers) else _dedup(
            [answer_text(n) for n in answers if n.correct and n.accepted])
        rejected = _dedup([(n.answer or "") if alone else answer_text(n) for n in answers if not n.correct]
                          + ([served] if alone and (served := _served_wrong(mag)) else []))
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
        out.append(TreeNode(mag.id, r, prompt, chosen, rejected, pairs, weight,
                            mag.messages if r == 0 and mag.messages else None))
        counts[f"round_{r}_nodes"] += 1
        counts[f"round_{r}_pairs"] += len(pairs)
    return out


def rationale_items(mag: Mag, teachers: set[str] | None, rounds: set[int] | None, weight: float) -> list[SftItem]:
    texts = [answer_text(n) for n in mag.answers() if n.role == "teacher" and n.correct and n.accepted
             and (teachers is None or n.agent in teachers) and (rounds is None or n.round in rounds)]
    messages = None if app_format(mag) else mag.messages
    return [SftItem(mag.id, "rationale", mag.question, t, weight, messages) for t in _dedup(texts)]


def app_items(mag: Mag, weight: float) -> list[SftItem]:
    """A `label`/`json` task: the request as the client sent it -> the gold alone, as the app expects it."""
    return [SftItem(mag.id, "app", mag.question, mag.gold or "", weight, mag.messages)] if app_format(mag) else []


def explanation_items(mag: Mag, rng: random.Random, weight: float) -> list[SftItem]:
    """FAIR: the student's mistake -> one teacher explanation of it that peer review accepted, drawn at random."""
    accepted = [n for n in mag.of_kind("explanation")
                if n.status == NodeStatus.OK and n.accepted and n.text and n.prompt]
    if not accepted:
        return []
    pick = rng.choice(accepted)
    return [SftItem(mag.id, "explanation", pick.prompt or "", (pick.text or "").strip(), weight)]


def mix_weights(items: list[SftItem], explanation_share: float) -> None:
    """FAIR's loss mix: explanations carry `explanation_share` of the SFT loss and rationales the rest (when both
    are present), on top of each item's gold weight; weights are scaled to mean 1 so the learning rate keeps its
    meaning."""
    n = Counter("explanation" if i.kind == "explanation" else "rationale" for i in items)
    if n["explanation"] and n["rationale"]:
        share = {"explanation": explanation_share, "rationale": 1 - explanation_share}
        for i in items:
            side = "explanation" if i.kind == "explanation" else "rationale"  # app items answer as rationales do
            i.weight *= share[side] * len(items) / n[side]
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
    without_reasoning: frozenset[str] = frozenset(),
) -> TrainingData:
    """Trees and SFT items from usable MAGs. `sft_teachers`/`sft_rounds` restrict the rationale items (e.g. one
    teacher's round-0 answers: single-teacher distillation); `with_explanations=False` drops FAIR's explanation
    items. `gold_weights`: weight by gold source (None: every source 1); a MAG whose weight is 0 is skipped.
    `without_reasoning`: tasks trained on their app-format answers only: their rationale and explanation items,
    prose in the debate's format, are left out (`tasks[].train_reasoning: false`)."""
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
        reasoning = (mag.task or "default") not in without_reasoning
        if reasoning:
            data.sft += rationale_items(mag, sft_teachers, sft_rounds, weight)
        data.sft += app_items(mag, weight)
        if with_explanations and reasoning:
            data.sft += explanation_items(mag, rng, weight)
    mix_weights(data.sft, explanation_share)
    data.counts.update(f"sft_{i.kind}" for i in data.sft)
    return data
