"""Text training data -> token ids, in the exact format serving uses.

Prompts go through `PromptTokenizer.chat` (the gateway's own chat rendering), so the student learns on the token
sequence a client's plain user message produces. A completion is its text plus the end-of-turn token, the token
vLLM stops at, so the trained student learns to stop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from ray_jobs.tdpo.packing import Tree
from ray_jobs.trees.build import SftItem, TreeNode


@dataclass
class SftExample:
    prompt_ids: list[int]
    completion_ids: list[int]


class Encoder:
    def __init__(self, tokenizer: Any, max_prompt_tokens: int, max_completion_tokens: int) -> None:
        """`tokenizer`: a `services.student.tokenizer.PromptTokenizer`."""
        self.tok = tokenizer
        self.max_prompt = max_prompt_tokens
        self.max_completion = max_completion_tokens
        self.eos = tokenizer.tok.eos_token_id
        self.pad_id = tokenizer.tok.pad_token_id if tokenizer.tok.pad_token_id is not None else self.eos

    def prompt(self, user_message: str) -> list[int]:
        return self.tok.chat([{"role": "user", "content": user_message}])

    def completion(self, text: str) -> tuple[list[int], bool]:
        """(ids, cut): ids end with end-of-turn unless cut to the length limit."""
        ids = [*list(self.tok.tok(text, add_special_tokens=False).input_ids), self.eos]
        return (ids[: self.max_completion], True) if len(ids) > self.max_completion else (ids, False)

    def sft(self, items: list[SftItem], counts: Counter[str]) -> list[SftExample]:
        out = []
        for it in items:
            p = self.prompt(it.prompt)
            c, cut = self.completion(it.completion)
            if len(p) > self.max_prompt or cut:
                counts["sft_dropped_too_long"] += 1
                continue
            out.append(SftExample(p, c))
        return out

    def trees(self, nodes: list[TreeNode], level_weight: float, counts: Counter[str]) -> list[Tree]:
        out = []
        for node in nodes:
            p = self.prompt(node.prompt)
            if len(p) > self.max_prompt:
                counts["trees_dropped_long_prompt"] += 1
                continue
            chosen = [self.completion(t) for t in node.chosen]
            rejected = [self.completion(t)[0] for t in node.rejected]  # a cut rejected answer is still wrong
            keep = {i for i, (_, cut) in enumerate(chosen) if not cut}
            pairs = [(i, len(chosen) + j) for i, j in node.pairs if i in keep]
            if not pairs:
                counts["trees_dropped_long_chosen"] += 1
                continue
            out.append(Tree(p, [c for c, _ in chosen] + rejected, pairs, weight=level_weight ** node.round))
        return out
