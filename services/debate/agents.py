"""Debate participants. Every agent answers a prompt with a `Reply` and never raises.

`OpenAIAgent` talks to any OpenAI-compatible endpoint over httpx: hosted teachers (OpenAI, Anthropic's and
Google's OpenAI-compatible APIs, DeepSeek, ...), the reference teachers, or the student behind the gateway (batch
mode). Timeouts, retries with backoff on 429/5xx/transport errors, a concurrency limit and an hourly token budget
live here, so a failing teacher comes back as a `Reply` with `error` set and the debate goes on without it.

Errors, by class (the text before the first colon is the metric label); none is raised:
  misconfigured: http_<code>: <message>  a 4xx other than 429, with the provider's message: the request itself is
                                         refused (model name, key, a parameter the model rejects); not retried,
                                         logged, kept in `OpenAIAgent.misconfigured` until the next success
  http_<code>                            429 (after waiting Retry-After) or 5xx, still failing after the retries
  timeout, transport: <kind>             still failing after the retries (connection refused, reset, ...)
  bad_response: not JSON | no choices    a body that is not a chat completion (an HTML page, no choices, ...)
  provider_error: <message>              a 200 whose JSON is an error object
  empty_reply: ...                       the chosen choice has no text (`content: null`, or all spent thinking)
  reply_too_large: ...                   a body over `max_reply_bytes` (read up to the limit, never whole)
  budget_exhausted                       the hourly token budget is spent
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from services.config import DebateConfig, TeacherConfig
from services.tasks.answers import read_answer

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 10.0
MESSAGE_CHARS = 200


@dataclass
class Reply:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None  # timeout | http_500 | misconfigured: ... | budget_exhausted | ... ; text is None then
    model: str | None = None  # the model (or student adapter version) that answered
    finish_reason: str | None = None  # of the chosen choice; "length": cut at max_tokens


class Agent(Protocol):
    name: str
    role: str  # student | teacher
    model: str

    async def ask(self, prompt: str, kind: str) -> Reply:
        """`kind` is answer | critique | reflection | review | ...; answers may be sampled several times."""
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


class ReplyTooLarge(Exception):
    """The response body passed `max_reply_bytes` (raised while reading, before it is all in memory)."""


@dataclass
class _Response:
    status: int
    headers: httpx.Headers
    body: bytes


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
        kind_temperature: dict[str, float] | None = None,
    ) -> None:
        self.name, self.role, self.model, self.cfg = cfg.name, role, cfg.model, cfg
        self.base_url = (base_url or cfg.endpoint() or "").rstrip("/")
        if not self.base_url:
            raise ValueError(f"agent {cfg.name!r} has no base URL")
        self.max_tokens, self.samples = max_tokens, samples
        self.kind_temperature = dict(kind_temperature or {})
        self.headers = {**cfg.headers, **(headers or {})}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ValueError(f"teacher {cfg.name!r}: environment variable {cfg.api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self._secret = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or None
        self.misconfigured: str | None = None  # the last 4xx refusal ("http_400: <message>"); None after a success
        self._client = client
        self._limit = asyncio.Semaphore(cfg.max_concurrency)
        self.budget = TokenBudget(cfg.tokens_per_hour)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(self.cfg.timeout_s, connect=min(10.0, self.cfg.timeout_s))
            self._client = httpx.AsyncClient(timeout=timeout)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        c = self.cfg
        return (prompt_tokens * c.price_prompt_per_1k + completion_tokens * c.price_completion_per_1k) / 1000

    def request_body(self, prompt: str, kind: str) -> dict[str, Any]:
        """The chat completion request for one turn, shaped by the teacher's request options."""
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                                self.cfg.max_tokens_param: self.max_tokens}
        n = self.samples if kind == "answer" else 1
        if n > 1:  # many providers reject `n` altogether
            body["n"] = n
        if self.cfg.send_temperature:
            temperature = self.kind_temperature.get(kind, self.cfg.temperature)
            body["temperature"] = temperature
            if temperature > 0:
                body["top_p"] = 0.9  # D&R's evaluation setting; greedy sampling ignores it
        return {**body, **self.cfg.extra_body}

    async def ask(self, prompt: str, kind: str) -> Reply:
        if not self.budget.allows():
            return Reply(None, error="budget_exhausted")
        t0 = time.monotonic()
        async with self._limit:
            reply = await self._post_with_retries(self.request_body(prompt, kind))
        reply.latency_s = time.monotonic() - t0
        reply.cost_usd = self.cost(reply.prompt_tokens, reply.completion_tokens)
        self.budget.spend(reply.prompt_tokens + reply.completion_tokens)
        if reply.error is None:
            self.misconfigured = None
        return reply

    async def _post_with_retries(self, body: dict[str, Any]) -> Reply:
        error, retry_after = "unknown", None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, error, retry_after))
            try:
                r = await self._post(body)
            except ReplyTooLarge:
                return Reply(None, error=f"reply_too_large: over {self.cfg.max_reply_bytes} bytes")
            except httpx.TimeoutException:
                error = "timeout"
                continue
            except httpx.HTTPError as e:  # connection refused or reset, protocol errors
                error = f"transport: {type(e).__name__}"
                continue
            if r.status == 429 or r.status >= 500:
                error, retry_after = f"http_{r.status}", r.headers.get("retry-after")
                continue
            if r.status >= 400:  # the request itself is wrong: retrying cannot help
                return self._refused(r)
            return self._parse(r.body)
        return Reply(None, error=error)

    async def _post(self, body: dict[str, Any]) -> _Response:
        url = f"{self.base_url}/chat/completions"
        async with self._http().stream("POST", url, json=body, headers=self.headers) as r:
            return _Response(r.status_code, r.headers, await self._read_limited(r))

    async def _read_limited(self, r: httpx.Response) -> bytes:
        limit = self.cfg.max_reply_bytes
        declared = r.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ReplyTooLarge
        body = bytearray()
        async for chunk in r.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise ReplyTooLarge
        return bytes(body)

    @staticmethod
    def _backoff(attempt: int, error: str, retry_after: str | None) -> float:
        if error == "http_429" and retry_after:
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER_S)
            except ValueError:  # an HTTP date: fall back to our own backoff
                pass
        return min(0.5 * 2 ** (attempt - 1), 8.0) * (0.5 + random.random())

    def _refused(self, r: _Response) -> Reply:
        message = self._redact(provider_message(r.body))
        self.misconfigured = f"http_{r.status}: {message}"
        log.warning("teacher %s is misconfigured: its endpoint refused the request with HTTP %d: %s",
                    self.name, r.status, message)
        return Reply(None, error=f"misconfigured: {self.misconfigured}")

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "[API key]") if self._secret else text

    def _parse(self, raw: bytes) -> Reply:
        try:
            data = json.loads(raw)
        except ValueError:
            return Reply(None, error="bad_response: not JSON")
        if not isinstance(data, dict):
            return Reply(None, error="bad_response: not a chat completion")
        if data.get("error"):
            return Reply(None, error=f"provider_error: {self._redact(error_message(data['error']))}")
        # The usage a reply reports is counted (cost, hourly budget) even when the reply holds no answer.
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        tokens = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return Reply(None, *tokens, error="bad_response: no choices")
        try:
            samples = [_sample(c) for c in choices]
        except (TypeError, AttributeError):
            return Reply(None, *tokens, error="bad_response: malformed choices")
        text, finish_reason = _pick(samples)
        reply = Reply(text or None, *tokens, model=data.get("model") or self.model, finish_reason=finish_reason)
        if not text:
            cut = " (cut at max_tokens)" if finish_reason == "length" else ""
            reply.error = f"empty_reply: no text in the reply{cut}"
        return reply


def _sample(choice: dict[str, Any]) -> tuple[str, str | None]:
    """One choice's text (content parts joined) and finish reason."""
    content = (choice.get("message") or {}).get("content")
    if isinstance(content, list):  # content parts, as some OpenAI-compatible APIs return
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return (content if isinstance(content, str) else ""), choice.get("finish_reason")


def _pick(samples: list[tuple[str, str | None]]) -> tuple[str, str | None]:
    """D&R's student retry for bad formatting: the first sample with a readable final answer, else the first
    with any text, else the first."""
    if len(samples) > 1:
        for text, fr in samples:
            if text and read_answer(text, "text", finish_reason=fr).status == "ok":
                return text, fr
    return next(((t, fr) for t, fr in samples if t), samples[0])


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def error_message(error: Any) -> str:
    """The message of an OpenAI-style `error` value (an object with `message`, or a string), cut short."""
    message = error.get("message") if isinstance(error, dict) else error
    return " ".join(str(message or error).split())[:MESSAGE_CHARS]


def provider_message(body: bytes) -> str:
    """What a provider said in an error response: the JSON error's message, else the body's text."""
    try:
        data = json.loads(body)
    except ValueError:
        return " ".join(body.decode(errors="replace").split())[:MESSAGE_CHARS]
    if isinstance(data, list) and len(data) == 1:  # Gemini wraps its error object in a list
        data = data[0]
    if isinstance(data, dict) and data.get("error"):
        return error_message(data["error"])
    if isinstance(data, dict) and data.get("message"):
        return error_message(data)
    return " ".join(json.dumps(data).split())[:MESSAGE_CHARS]


def build_teacher(t: TeacherConfig, cfg: DebateConfig, embedded_url: str | None,
                  embedded_token: str | None = None) -> OpenAIAgent:
    """The agent of one configured teacher; a built-in reference teacher lives at `<embedded_url>/<name>/v1`,
    behind `embedded_token` (`services.teachers.token`, sent as its bearer token and scrubbed from logs like an
    API key). Raises ValueError when it cannot be reached (no URL, an unset environment variable)."""
    base = t.endpoint()
    headers: dict[str, str] = {}
    if base is None and embedded_url:
        base = f"{embedded_url.rstrip('/')}/{t.name}/v1"
        headers = {"Authorization": f"Bearer {embedded_token}"} if embedded_token else {}
    if base is None:
        raise ValueError(f"teacher {t.name!r} is a built-in reference teacher but no teacher server is running")
    # FAIR's fault-aware explanations are sampled warmer than answers (its code uses 0.8).
    return OpenAIAgent(t, base_url=base, max_tokens=t.max_tokens or cfg.max_tokens, headers=headers,
                       kind_temperature={"explanation": cfg.explanation_temperature})


def build_teachers(cfg: DebateConfig, embedded_url: str | None,
                   embedded_token: str | None = None) -> list[OpenAIAgent]:
    """Agents for the configured teachers."""
    return [build_teacher(t, cfg, embedded_url, embedded_token) for t in cfg.teachers]
