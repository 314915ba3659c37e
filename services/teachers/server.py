"""The reference teachers' HTTP face: a minimal OpenAI-compatible chat endpoint.

One app serves one or more teachers: each at `/<name>/v1/...`, and a single one also at `/v1/...`. The debate
service reaches them exactly as it reaches a paid API, over HTTP with the same client. Deployed, the app requires
the internal bearer token (`services.teachers.token`; 401 without it) and bounds each request: its body (the
gateway's front door, 413), its messages and `n` (400).
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from services.config import ReferenceProfile, ServerConfig, TeacherConfig
from services.gateway.front_door import install_front_door
from services.teachers.labelled import LabelledTeacher
from services.teachers.reference import ReferenceTeacher, TeacherMind

MAX_N = 8  # choices per request
MAX_MESSAGES = 64


class _Refused(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _error(status: int, message: str, code: str) -> JSONResponse:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


def _bounded_n(body: dict[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise _Refused(400, f"`n` must be an integer from 1 to {MAX_N}", "invalid_n")
    return n


def _tokens(text: str) -> int:
    # No tokenizer behind a reference teacher: usage is an estimate of ~4 characters per token.
    return max(1, len(text) // 4)


def mind_of(name: str, profile: ReferenceProfile) -> TeacherMind:
    """A built-in teacher's mind: the labelled teacher when its profile names a `labels_file` (read once, here),
    else the arithmetic reference teacher."""
    if profile.labels_file is not None:
        return LabelledTeacher(name, profile)
    return ReferenceTeacher(name, profile)


def build_teacher_app(teachers: list[TeacherConfig], *, token: str | None = None,
                      max_body_bytes: int = ServerConfig().max_body_bytes) -> FastAPI:
    """`token`: the bearer token every route but /health requires (None: open, for tests and the standalone
    `distillery teacher serve`)."""
    minds = {t.name: mind_of(t.name, t.reference) for t in teachers if t.reference is not None}
    app = FastAPI(title="Distillery reference teachers", docs_url=None, redoc_url=None)
    install_front_door(app, max_body_bytes, host="0.0.0.0")  # reached by name from the debate: no Host check

    @app.exception_handler(_Refused)
    async def refused(_: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.status, exc.message, exc.code)

    def require_token(request: Request) -> None:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token is not None and not hmac.compare_digest(sent.encode(), token.encode()):
            raise _Refused(401, "Missing or incorrect teachers token", "invalid_api_key")

    guarded = [Depends(require_token)]

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
            if len(messages) > MAX_MESSAGES:
                raise _Refused(400, f"at most {MAX_MESSAGES} messages per request", "too_many_messages")
            prompt = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        except _Refused:
            raise
        except Exception:
            return _error(400, "expected a JSON body with `messages` holding a user message", "invalid_request")
        n = _bounded_n(body)
        if body.get("stream"):
            return _error(400, "the reference teacher does not stream; send stream: false", "unsupported")
        if not isinstance(prompt, str):
            prompt = " ".join(p.get("text", "") for p in prompt if isinstance(p, dict))
        if mind.profile.latency_s:
            await asyncio.sleep(mind.profile.latency_s)
        text = mind.reply(prompt)
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

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_default(request: Request) -> JSONResponse:
        return await chat(None, request)

    @app.post("/{name}/v1/chat/completions", dependencies=guarded)
    async def chat_named(name: str, request: Request) -> JSONResponse:
        return await chat(name, request)

    @app.get("/v1/models", dependencies=guarded)
    async def models_default() -> JSONResponse:
        return models(None)

    @app.get("/{name}/v1/models", dependencies=guarded)
    async def models_named(name: str) -> JSONResponse:
        return models(name)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "teachers": list(minds)}

    return app
