"""Real HTTP servers on 127.0.0.1 for tests: the reference teachers and small scripted OpenAI endpoints.

Each runs uvicorn in a thread of the test process on a free port; the code under test reaches it over TCP
exactly as it would reach a remote model.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(app: FastAPI) -> Iterator[str]:
    """Serve `app` on a free loopback port; yields its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Script:
    """What a scripted endpoint does with one request."""

    text: str | None = None
    status: int = 200
    delay_s: float = 0.0
    raw: str | None = None  # a non-JSON body
    finish_reason: str = "stop"  # "length": cut at max_tokens


def completion(text: str, model: str = "scripted", finish_reason: str = "stop") -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(text) // 4),
                                      "total_tokens": 10 + max(1, len(text) // 4)},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}]}


def scripted_app(behave: Callable[[str], Script], calls: list[str] | None = None) -> FastAPI:
    """An OpenAI chat endpoint at /v1 whose reply to each prompt is `behave(prompt)`."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        if calls is not None:
            calls.append(prompt)
        s = behave(prompt)
        if s.delay_s:
            await asyncio.sleep(s.delay_s)
        if s.raw is not None:
            return PlainTextResponse(s.raw, status_code=s.status)
        if s.status != 200:
            return JSONResponse({"error": {"message": "scripted failure", "type": "server_error"}},
                                status_code=s.status)
        return JSONResponse(completion(s.text or "", body.get("model", "scripted"), s.finish_reason))

    return app


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def chat(url: str, prompt: str) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": prompt}]})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]
