"""The reference teachers' HTTP face: a minimal OpenAI-compatible chat endpoint.

One app serves one or more teachers: each at `/<name>/v1/...`, and a single one also at `/v1/...`. The debate
service reaches them exactly as it reaches a paid API, over HTTP with the same client.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.config import ReferenceProfile, TeacherConfig
from services.teachers.labelled import LabelledTeacher
from services.teachers.reference import ReferenceTeacher, TeacherMind


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": code}}, status_code=status)


def _tokens(text: str) -> int:
    # No tokenizer behind a reference teacher: usage is an estimate of ~4 characters per token.
    return max(1, len(text) // 4)


def mind_of(name: str, profile: ReferenceProfile) -> TeacherMind:
    """A built-in teacher's mind: the labelled teacher when its profile names a `labels_file` (read once, here),
    else the arithmetic reference teacher."""
    if profile.labels_file is not None:
        return LabelledTeacher(name, profile)
    return ReferenceTeacher(name, profile)


def build_teacher_app(teachers: list[TeacherConfig]) -> FastAPI:
    minds = {t.name: mind_of(t.name, t.reference) for t in teachers if t.reference is not None}
    app = FastAPI(title="Distillery reference teachers", docs_url=None, redoc_url=None)

    def pick(name: str | None) -> TeacherMind | None:
        if name is None:
            return next(iter(minds.values())) if len(minds) == 1 else None
        return minds.get(name)

    async def chat(name: str | None, request: Request) -> JSONResponse:
        mind = pick(name)
        if mind is None:
            return _error(404, f"no reference teacher named {name!r}", "model_not_found")
        try:
            body = await request.json()
            messages = body["messages"]
            prompt = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        except Exception:
            return _error(400, "expected a JSON body with `messages` holding a user message", "invalid_request")
        if body.get("stream"):
            return _error(400, "the reference teacher does not stream; send stream: false", "unsupported")
        if not isinstance(prompt, str):
            prompt = " ".join(p.get("text", "") for p in prompt if isinstance(p, dict))
        if mind.profile.latency_s:
            await asyncio.sleep(mind.profile.latency_s)
        text = mind.reply(prompt)
        n = int(body.get("n") or 1)
        usage = {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(text) * n}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": mind.name, "usage": usage,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        for i in range(n)],
        })

    def models(name: str | None) -> JSONResponse:
        names = [name] if name else list(minds)
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "distillery"}
                                                        for m in names if m in minds]})

    @app.post("/v1/chat/completions")
    async def chat_default(request: Request) -> JSONResponse:
        return await chat(None, request)

    @app.post("/{name}/v1/chat/completions")
    async def chat_named(name: str, request: Request) -> JSONResponse:
        return await chat(name, request)

    @app.get("/v1/models")
    async def models_default() -> JSONResponse:
        return models(None)

    @app.get("/{name}/v1/models")
    async def models_named(name: str) -> JSONResponse:
        return models(name)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "teachers": list(minds)}

    return app
