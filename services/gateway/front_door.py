"""The front door: what every request must pass before any route parses, authenticates or reads it.

A pure ASGI middleware, so it sees the raw byte stream: the body is counted as it arrives (Content-Length or
chunked alike) and refused with 413 once it passes `max_body_bytes`; a body that is not `application/json` gets
415. Bound to loopback, it also refuses cross-site requests: a Host that is not a loopback name (DNS rebinding,
421) and an Origin that is not a loopback origin (a web page posting to the service, 403).
"""

from __future__ import annotations

import contextlib
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from services.gateway.errors import ApiError
from services.gateway.exposure import is_loopback


class _BodyTooLarge(Exception):
    """Raised from `receive` once the counted body passes the limit; the middleware answers 413."""


def _hostname(url: str) -> str:
    """The host name of a URL or of `//<Host header>` (`//[::1]:8000` -> `::1`); "" when it is malformed."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _media_type(content_type: str) -> str:
    message = Message()
    message["content-type"] = content_type
    return message.get_content_type()


class FrontDoor:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, loopback_only: bool) -> None:
        self.app, self.limit, self.loopback_only = app, max_body_bytes, loopback_only

    def _too_large(self) -> ApiError:
        return ApiError(413, f"Request body exceeds the limit of {self.limit} bytes", None, "request_too_large")

    def refusal(self, headers: dict[str, str]) -> ApiError | None:
        """Why these request headers are refused, before anything reads the body; None: let it in."""
        if self.loopback_only:
            host = headers.get("host")
            if host is not None and not is_loopback(_hostname(f"//{host}")):
                return ApiError(421, "This service answers only to loopback host names (127.0.0.1, ::1, "
                                "localhost)", None, "invalid_host")
            origin = headers.get("origin")
            if origin is not None and not is_loopback(_hostname(origin)):
                return ApiError(403, "Cross-site requests are refused: the Origin is not a loopback origin", None,
                                "cross_origin_refused")
        length = headers.get("content-length", "")
        has_body = "transfer-encoding" in headers or (length.isdigit() and int(length) > 0)
        if length.isdigit() and int(length) > self.limit:
            return self._too_large()
        if has_body and _media_type(headers.get("content-type", "")) != "application/json":
            return ApiError(415, "Request bodies must be JSON: send `Content-Type: application/json`",
                            "content-type", "unsupported_media_type")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refused = self.refusal(headers)
        if refused is not None:
            await refused.response()(scope, receive, send)
            return
        counted, overflow, started = 0, False, False

        async def counting_receive() -> AsgiMessage:
            nonlocal counted, overflow
            message = await receive()
            if message["type"] == "http.request":
                counted += len(message.get("body", b""))
                if counted > self.limit:
                    overflow = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: AsgiMessage) -> None:
            # After an overflow the app may still answer (FastAPI turns a failed body read into a 400): drop that.
            nonlocal started
            if overflow:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if overflow and not started:
            await self._too_large().response()(scope, receive, send)


def install_front_door(app: Any, max_body_bytes: int, host: str) -> None:
    """Add the front door to a Starlette/FastAPI app; `host`: the address the service binds to."""
    app.add_middleware(FrontDoor, max_body_bytes=max_body_bytes, loopback_only=is_loopback(host))
