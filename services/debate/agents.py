"""Debate participants. Every agent answers a prompt with a `Reply` and never raises.

`OpenAIAgent` talks to any OpenAI-compatible endpoint over httpx: paid teachers, the reference teachers, or the
student behind the gateway (batch mode). Timeouts, retries with backoff on 429/5xx/transport errors, a
concurrency limit and an hourly token budget live here, so a failing teacher comes back as a `Reply` with
`error` set and the debate goes on without it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from services.config import DebateConfig, TeacherConfig
from services.tasks.answers import parse_final_answer


@dataclass
class Reply:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None  # timeout | http_500 | budget_exhausted | ... ; text is None then
    model: str | None = None  # the model (or student adapter version) that answered


class Agent(Protocol):
    name: str
    role: str  # student | teacher
    model: str

    async def ask(self, prompt: str, kind: str) -> Reply:
        """`kind` is answer | critique | reflection | review; answers may be sampled several times."""
        ...


class TokenBudget:
    """Tokens used in the last hour; `allows()` is False once `per_hour` is reached."""

    def __init__(self, per_hour: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour = per_hour
        self.clock = clock
        self._used: deque[tuple[float, int]] = deque()

    def _total(self) -> int:
        cutoff = self.clock() - 3600
        while self._used and self._used[0][0] < cutoff:
            self._used.popleft()
        return sum(n for _, n in self._used)

    def allows(self) -> bool:
        return self.per_hour is None or self._total() < self.per_hour

    def spend(self, tokens: int) -> None:
        if self.per_hour is not None:
            self._used.append((self.clock(), tokens))


class OpenAIAgent:
    def __init__(
        self,
        cfg: TeacherConfig,
        *,
        role: str = "teacher",
        base_url: str | None = None,
        max_tokens: int = 512,
        samples: int = 1,
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name, self.role, self.model, self.cfg = cfg.name, role, cfg.model, cfg
        self.base_url = (base_url or cfg.endpoint() or "").rstrip("/")
        if not self.base_url:
            raise ValueError(f"agent {cfg.name!r} has no base URL")
        self.max_tokens, self.samples = max_tokens, samples
        self.headers = dict(headers or {})
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ValueError(f"teacher {cfg.name!r}: environment variable {cfg.api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self._client = client
        self._limit = asyncio.Semaphore(cfg.max_concurrency)
        self.budget = TokenBudget(cfg.tokens_per_hour)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.cfg.timeout_s, connect=10.0))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        c = self.cfg
        return (prompt_tokens * c.price_prompt_per_1k + completion_tokens * c.price_completion_per_1k) / 1000

    async def ask(self, prompt: str, kind: str) -> Reply:
        if not self.budget.allows():
            return Reply(None, error="budget_exhausted")
        n = self.samples if kind == "answer" else 1
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": self.cfg.temperature, "max_tokens": self.max_tokens, "n": n}
        if self.cfg.temperature > 0:
            body["top_p"] = 0.9  # D&R's evaluation setting; greedy sampling ignores it
        t0 = time.monotonic()
        async with self._limit:
            reply = await self._post_with_retries(body)
        reply.latency_s = time.monotonic() - t0
        reply.cost_usd = self.cost(reply.prompt_tokens, reply.completion_tokens)
        self.budget.spend(reply.prompt_tokens + reply.completion_tokens)
        return reply

    async def _post_with_retries(self, body: dict) -> Reply:
        error, retry_after = "unknown", None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, error, retry_after))
            try:
                r = await self._http().post(f"{self.base_url}/chat/completions", json=body, headers=self.headers)
            except httpx.TimeoutException:
                error = "timeout"
                continue
            except httpx.TransportError as e:
                error = f"transport: {type(e).__name__}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                error = f"http_{r.status_code}"
                retry_after = r.headers.get("retry-after")
                continue
            if r.status_code >= 400:  # the request itself is wrong: retrying cannot help
                return Reply(None, error=f"http_{r.status_code}: {r.text[:200]}")
            return self._parse(r)
        return Reply(None, error=error)

    @staticmethod
    def _backoff(attempt: int, error: str, retry_after: str | None) -> float:
        if error == "http_429" and retry_after and retry_after.isdigit():
            return min(float(retry_after), 10.0)
        return min(0.5 * 2 ** (attempt - 1), 8.0) * (0.5 + random.random())

    def _parse(self, r: httpx.Response) -> Reply:
        try:
            data = r.json()
            texts = [c["message"]["content"] or "" for c in data["choices"]]
            usage = data.get("usage") or {}
        except Exception:
            return Reply(None, error="bad_response: not an OpenAI chat completion")
        if not texts:
            return Reply(None, error="bad_response: no choices")
        # D&R's student retry for bad formatting: keep the first sample with a parsable final answer.
        text = next((t for t in texts if parse_final_answer(t).status != "unparsed"), texts[0])
        return Reply(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                     model=data.get("model") or self.model)


def build_teachers(cfg: DebateConfig, embedded_url: str | None) -> list[OpenAIAgent]:
    """Agents for the configured teachers; built-in reference teachers live at `<embedded_url>/<name>/v1`."""
    agents = []
    for t in cfg.teachers:
        base = t.endpoint() or (f"{embedded_url.rstrip('/')}/{t.name}/v1" if embedded_url else None)
        if base is None:
            raise ValueError(f"teacher {t.name!r} is a built-in reference teacher but no teacher server is running")
        agents.append(OpenAIAgent(t, base_url=base, max_tokens=cfg.max_tokens))
    return agents
