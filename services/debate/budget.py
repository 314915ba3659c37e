"""Token budgets for the parts of a debate prompt (D&R truncates each agent's block to ~470 tokens)."""

from __future__ import annotations

from typing import Any


class BlockBudget:
    """Cuts text to a token count with the student's tokenizer (the trees' prompts must fit the student).

    Without a tokenizer it falls back to ~4 characters per token, which is only used by tools that have no
    model at hand.
    """

    def __init__(self, tokenizer: Any | None = None) -> None:
        self.tok = tokenizer

    def count(self, text: str) -> int:
        if self.tok is None:
            return (len(text) + 3) // 4
        return len(self.tok.encode(text, add_special_tokens=False))

    def fit(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        if self.tok is None:
            return text if len(text) <= 4 * max_tokens else text[: 4 * max_tokens].rstrip() + " [...]"
        ids = self.tok.encode(text, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return text
        return self.tok.decode(ids[:max_tokens]).rstrip() + " [...]"
