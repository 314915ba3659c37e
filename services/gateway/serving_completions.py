"""POST /v1/completions: raw prompt(s) -> student -> text_completion objects."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from services.gateway.errors import ApiError, bad_request
from services.gateway.generation import GenerationService, Prepared, Served
from services.gateway.protocol import CompletionRequest, CompletionResponse
from services.gateway.serving_chat import sampling_fields
from services.gateway.validation import check_batch, check_context, parse_body
from services.store.debates import ANONYMOUS_KEY_ID
from services.student.events import Delta, GenerateRequest
from services.student.tokenizer import PromptTokenizer


@dataclass
class CompletionRenderer:
    model: str
    endpoint: str = "completions"
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices}

    def opening_chunks(self, n_choices: int) -> list[dict[str, Any]]:
        return []  # completions have no role delta

    def delta_chunk(self, d: Delta) -> dict[str, Any]:
        return self._chunk([{"index": d.index, "text": d.text, "logprobs": None, "finish_reason": d.finish_reason}])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._chunk([]), "usage": usage}

    def response(self, texts: list[str], finish: list[str | None], usage: dict[str, int]) -> dict[str, Any]:
        return CompletionResponse.model_validate({
            "id": self.id, "created": self.created, "model": self.model, "usage": usage,
            "choices": [{"index": i, "text": t, "finish_reason": f}
                        for i, (t, f) in enumerate(zip(texts, finish, strict=True))],
        }).model_dump()


class CompletionServing:
    def __init__(self, generation: GenerationService, tokenizer: PromptTokenizer, max_model_len: int) -> None:
        self.generation = generation
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def _prompts(self, prompt: Any) -> list[list[int]] | ApiError:
        if isinstance(prompt, str):
            prompts = [self.tokenizer.encode(prompt)]
        elif prompt and all(isinstance(p, str) for p in prompt):
            prompts = [self.tokenizer.encode(p) for p in prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]
        elif prompt and all(isinstance(p, list) for p in prompt):
            prompts = [list(p) for p in prompt]
        else:
            return bad_request("prompt must be a non-empty string, list of strings, or token ids", "prompt")
        vocab = self.tokenizer.vocab_size
        for p in prompts:
            if not p:
                return bad_request("prompt is empty", "prompt")
            if any(t < 0 or t >= vocab for t in p):
                return bad_request(f"prompt holds token ids outside the vocabulary [0, {vocab})", "prompt")
        return prompts

    async def create(
        self, raw: bytes, *, request_id: str, headers: dict[str, str], started_at: float, key_id: str = ANONYMOUS_KEY_ID
    ) -> Served | ApiError:
        req = parse_body(raw, CompletionRequest)
        if isinstance(req, ApiError):
            return req
        count = prompt_count(req.prompt)
        if (err := check_batch(count, req.n, self.generation.settings.server)) is not None:
            return err

        async def prepare() -> Prepared | ApiError:
            prompts = await asyncio.to_thread(self._prompts, req.prompt)  # tokenised off the event loop
            if isinstance(prompts, ApiError):
                return prompts
            limit = req.token_limit()
            for p in prompts:
                if (err := check_context(len(p), limit, self.max_model_len, "prompt")) is not None:
                    return err
            gen = GenerateRequest(request_id, req.model, prompts, limit, sampling_fields(req), stream=req.stream)
            return Prepared(gen, {"prompt": req.prompt, "max_tokens": limit})

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await self.generation.run(
            CompletionRenderer(req.model), count * req.n, prepare, stream=req.stream, include_usage=include_usage,
            started_at=started_at, headers=headers, key_id=key_id,
        )


def prompt_count(prompt: str | list[str] | list[int] | list[list[int]]) -> int:
    """How many prompts `prompt` holds, without tokenising it: one text or token list, or a list of them."""
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return 1
    return len(prompt)
