"""Prompt rendering and token counting in the gateway, with the base model's own tokenizer.

Tokenizing here (as vLLM's API server does in its frontend) lets the gateway refuse an over-long prompt
with a 400 before it reaches the engine, and report exact prompt token counts.
"""

from __future__ import annotations

import os
from typing import Any


class PromptTokenizer:
    def __init__(self, model_path: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_path)

    def chat(self, messages: list[dict[str, Any]]) -> list[int]:
        # Render to text then encode without special tokens: the template already holds them.
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tok(text, add_special_tokens=False).input_ids)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text).input_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.tok)
