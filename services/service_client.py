"""The service's own HTTP API as the training loop and the scheduler use it (evaluation, promote, rollback).

Evaluation goes through the gateway like any client (chat template, vLLM, the adapter the model name resolves
to), with the opt-out header so evaluation questions are never captured for debates. Promotion and rollback go
through the admin API, which loads and validates a version in the engine before the registry records it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from services.capture.policy import OPT_OUT_HEADER
from services.config import Settings


class ServiceError(RuntimeError):
    pass


def service_url(settings: Settings) -> str:
    if settings.server.internal_url:
        return settings.server.internal_url.rstrip("/")
    host = "127.0.0.1" if settings.server.host in {"0.0.0.0", "::"} else settings.server.host
    return f"http://{host}:{settings.server.port}"


class ServiceClient:
    def __init__(self, settings: Settings, url: str | None = None, timeout_s: float = 600.0) -> None:
        self.url = (url or service_url(settings)).rstrip("/")
        key = settings.server.admin_key or (settings.server.api_keys[0] if settings.server.api_keys else None)
        self.headers = {OPT_OUT_HEADER: "1", **({"Authorization": f"Bearer {key.get_secret_value()}"} if key else {})}
        self.timeout = timeout_s

    async def chat(self, client: httpx.AsyncClient, model: str, question: str, *, max_tokens: int,
                   temperature: float, retries: int = 5, messages: list[dict[str, Any]] | None = None
                   ) -> dict[str, Any]:
        """`messages`: the request as a client sent it; default: `question` as one user message."""
        body = {"model": model, "messages": messages or [{"role": "user", "content": question}],
                "max_tokens": max_tokens, "temperature": temperature}
        for attempt in range(retries + 1):
            r = await client.post(f"{self.url}/v1/chat/completions", json=body, headers=self.headers)
            if r.status_code in {429, 503} and attempt < retries:  # admission control: back off and retry
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
                continue
            if r.status_code != 200:
                raise ServiceError(f"chat with {model} failed: HTTP {r.status_code}: {r.text[:300]}")
            out: dict[str, Any] = r.json()
            out["adapter"] = r.headers.get("x-distillery-adapter")
            return out
        raise AssertionError("unreachable")

    def _admin(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        r = httpx.request(method, f"{self.url}{path}", json=json, headers=self.headers, timeout=self.timeout)
        if r.status_code != 200:
            raise ServiceError(f"{method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()  # type: ignore[no-any-return]

    def promote(self, version: str, reason: str) -> dict[str, Any]:
        return self._admin("POST", f"/admin/adapters/{version}/promote", {"reason": reason})

    def rollback(self, reason: str) -> dict[str, Any]:
        return self._admin("POST", "/admin/adapters/rollback", {"reason": reason})

    def metrics_text(self) -> str:
        r = httpx.get(f"{self.url}/metrics", timeout=30)
        r.raise_for_status()
        return r.text

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ready", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False
