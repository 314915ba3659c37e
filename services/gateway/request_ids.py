"""Every request's id and start time, set before anything else runs: a pure ASGI middleware.

The id is the client's `x-request-id` when it is a safe token, else a fresh one; it is echoed on the response
(except behind Ray Serve, whose proxy already returns it). Pure ASGI rather than `@app.middleware("http")`, so a
streaming response passes through unbuffered and a client that stops reading is dropped by the stream itself.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIds:
    def __init__(self, app: ASGIApp, *, echo: bool = True) -> None:
        self.app, self.echo = app, echo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == REQUEST_ID_HEADER.encode()), "")
        request_id = given if _SAFE_ID.match(given) else f"req-{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"], state["started_at"] = request_id, time.monotonic()

        async def send_with_id(message: Message) -> None:
            if self.echo and message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != REQUEST_ID_HEADER.encode()]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)
