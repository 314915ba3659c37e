"""POST /v1/chat/completions: messages -> chat template -> student -> chat.completion(.chunk) objects."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from services.gateway.errors import ApiError, bad_request
from services.gateway.generation import GenerationService, Prepared, Served
from services.gateway.protocol import ChatCompletionRequest, ChatCompletionResponse
from services.gateway.validation import check_batch, check_context, parse_body
from services.store.debates import ANONYMOUS_KEY_ID
from services.student.events import Delta, GenerateRequest
from services.student.tokenizer import PromptTokenizer
from services.tasks.routing import TaskRouter


def sampling_fields(req: Any) -> dict[str, Any]:
    return {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "n": req.n,
        "stop": req.stop,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty or None,
        "frequency_penalty": req.frequency_penalty or None,
    }


@dataclass
class ChatRenderer:
    model: str
    endpoint: str = "chat"
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices}

    def opening_chunks(self, n_choices: int) -> list[dict[str, Any]]:
        # The first delta of every choice carries the role, as OpenAI and vLLM send it.
        return [
            self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
            for i in range(n_choices)
        ]

    def delta_chunk(self, d: Delta) -> dict[str, Any]:
        return self._chunk([{"index": d.index, "delta": {"content": d.text}, "logprobs": None,
                             "finish_reason": d.finish_reason}])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._chunk([]), "usage": usage}

    def response(self, texts: list[str], finish: list[str | None], usage: dict[str, int]) -> dict[str, Any]:
        return ChatCompletionResponse.model_validate({
            "id": self.id, "created": self.created, "model": self.model, "usage": usage,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                        for i, (t, f) in enumerate(zip(texts, finish, strict=True))],
        }).model_dump()


class ChatServing:
    def __init__(self, generation: GenerationService, tokenizer: PromptTokenizer, max_model_len: int,
                 router: TaskRouter) -> None:
        self.generation = generation
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.router = router

    async def create(
        self, raw: bytes, *, request_id: str, headers: dict[str, str], started_at: float, key_id: str = ANONYMOUS_KEY_ID
    ) -> Served | ApiError:
        req = parse_body(raw, ChatCompletionRequest)
        if isinstance(req, ApiError):
            return req
        if (err := check_batch(1, req.n, self.generation.settings.server)) is not None:
            return err
        # `developer` is OpenAI's newer name for the system role; chat templates know `system`.
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]

        async def prepare() -> Prepared | ApiError:
            try:  # a 1 MB conversation is templated and tokenised off the event loop
                ids = await asyncio.to_thread(self.tokenizer.chat, messages)
            except Exception as e:  # templates raise on role orders they do not support
                return bad_request(f"The messages cannot be rendered with the model's chat template: {e}",
                                   "messages")
            limit = req.token_limit()
            if (err := check_context(len(ids), limit, self.max_model_len, "messages")) is not None:
                return err
            route = self.router.route(req.metadata, messages)
            self.generation.metrics.task_requests.labels(route.task, route.via).inc()
            payload = {"messages": messages, **{k: v for k, v in sampling_fields(req).items() if v is not None},
                       "max_tokens": limit, "task": route.task}
            gen = GenerateRequest(request_id, req.model, [ids], limit, sampling_fields(req), stream=req.stream)
            return Prepared(gen, payload)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await self.generation.run(
            ChatRenderer(req.model), req.n, prepare, stream=req.stream, include_usage=include_usage,
            started_at=started_at, headers=headers, key_id=key_id,
        )
