"""Text training data -> token ids, in the exact format serving uses.

Prompts go through `PromptTokenizer.chat` (the gateway's own chat rendering), so the student learns on the token
sequence a client's plain user message produces. A completion is its text plus the end-of-turn token, the token
vLLM stops at, so the trained student learns to stop.

A debate prompt (round >= 1) longer than `max_prompt_tokens` is split the way D&R's code splits it
(`prompts.split_debate_prompt`): several prompts, each with the instruction, the question and the agent blocks that
fit, each the root of a tree with the node's children and 1/k of its weight, so a split node weighs what it did
whole. Nothing is dropped silently: per round, `round_R_nodes_kept`, `round_R_nodes_split` (into how many extra
prompts: `round_R_split_prompts`), `round_R_nodes_cut` (a block that could not fit alone was left out, or a round-0
question over the budget), and the pairs kept per round, are counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ray_jobs.tdpo.packing import Tree
from ray_jobs.trees.build import SftItem, TreeNode
from services.debate.prompts import split_debate_prompt


@dataclass
class SftExample:
    prompt_ids: list[int]
    completion_ids: list[int]
    weight: float = 1.0


class Encoder:
    def __init__(self, tokenizer: Any, max_prompt_tokens: int, max_completion_tokens: int) -> None:
        """`tokenizer`: a `services.student.tokenizer.PromptTokenizer`."""
        self.tok = tokenizer
        self.max_prompt = max_prompt_tokens
        self.max_completion = max_completion_tokens
        self.eos = tokenizer.tok.eos_token_id
        self.pad_id = tokenizer.tok.pad_token_id if tokenizer.tok.pad_token_id is not None else self.eos

    def prompt(self, user_message: str, messages: list[dict[str, Any]] | None = None) -> list[int]:
        """The prompt as serving renders it: the client's messages when known, else one user message."""
        return self.tok.chat(messages or [{"role": "user", "content": user_message}])

    def completion(self, text: str) -> tuple[list[int], bool]:
        """(ids, cut): ids end with end-of-turn unless cut to the length limit."""
        ids = [*list(self.tok.tok(text, add_special_tokens=False).input_ids), self.eos]
        return (ids[: self.max_completion], True) if len(ids) > self.max_completion else (ids, False)

    def sft(self, items: list[SftItem], counts: Counter[str]) -> list[SftExample]:
        out = []
        for it in items:
            p = self.prompt(it.prompt, it.messages)
            c, cut = self.completion(it.completion)
            if len(p) > self.max_prompt or cut:
                counts["sft_dropped_too_long"] += 1
                continue
            out.append(SftExample(p, c, it.weight))
        return out

    def _prompts(self, node: TreeNode, counts: Counter[str]) -> list[list[int]]:
        """The node's prompt as token ids, split into several within budget when it is a long debate prompt."""
        p = self.prompt(node.prompt, node.messages)
        if len(p) <= self.max_prompt:
            return [p]
        if node.round == 0:
            counts["round_0_nodes_cut"] += 1
            return []
        parts, complete = split_debate_prompt(node.prompt, lambda text: len(self.prompt(text)) <= self.max_prompt)
        counts[f"round_{node.round}_nodes_split"] += 1
        counts[f"round_{node.round}_split_prompts"] += len(parts)
        if not complete:
            counts[f"round_{node.round}_nodes_cut"] += 1
        return [self.prompt(text) for text in parts]

    def trees(self, nodes: list[TreeNode], level_weight: float, counts: Counter[str]) -> list[Tree]:
        out = []
        for node in nodes:
            prompts = self._prompts(node, counts)
            chosen = [self.completion(t) for t in node.chosen]
            rejected = [self.completion(t)[0] for t in node.rejected]  # a cut rejected answer is still wrong
            keep = {i for i, (_, cut) in enumerate(chosen) if not cut}
            pairs = [(i, len(chosen) + j) for i, j in node.pairs if i in keep]
            if not pairs:
                counts["trees_dropped_long_chosen"] += 1
                continue
            if not prompts:
                continue
            counts[f"round_{node.round}_nodes_kept"] += 1
            counts[f"round_{node.round}_pairs_kept"] += len(pairs)
            weight = level_weight ** node.round * node.weight / len(prompts)
            children = [c for c, _ in chosen] + rejected
            out += [Tree(p, children, pairs, weight=weight) for p in prompts]
        return out
