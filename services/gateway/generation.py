"""The generation path shared by /v1/chat/completions and /v1/completions.

It admits the request (429 past the concurrency limit), waits for the student's first event to learn which
version serves it (so the response headers can name it before any byte of the body), then either collects
a full response or streams SSE chunks. Metrics and the capture hook run when the request ends; the capture
sink is only offered the result, never awaited. The endpoints differ only in their `Renderer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.capture.policy import CapturePolicy, FinishedRequest
from services.config import Settings
from services.gateway.errors import ApiError
from services.gateway.metrics import ServingMetrics
from services.gateway.student_client import StudentClient
from services.student.events import Delta, Failed, GenerateRequest

log = logging.getLogger(__name__)


class Renderer(Protocol):
    """Turns generation results into one endpoint's wire objects."""

    endpoint: str
    id: str  # the response id (chatcmpl-... / cmpl-...), also recorded with a captured request

    def opening_chunks(self, n_choices: int) -> list[dict[str, Any]]: ...
    def delta_chunk(self, delta: Delta) -> dict[str, Any]: ...
    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]: ...
    def response(self, texts: list[str], finish: list[str | None], usage: dict[str, int]) -> dict[str, Any]: ...


@dataclass
class Served:
    adapter: str
    body: dict[str, Any] | None = None
    stream: AsyncIterator[str] | None = None


@dataclass
class _Tally:
    """What a request produced so far; becomes usage, metrics and the capture record."""

    n_choices: int
    prompt_tokens: int
    texts: list[str] = field(init=False)
    finish: list[str | None] = field(init=False)
    completion_tokens: int = 0
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.texts = [""] * self.n_choices
        self.finish = [None] * self.n_choices

    def add(self, d: Delta) -> None:
        if self.first_token_at is None and d.tokens:
            now = time.monotonic()
            # An aggregated (non-streaming) delta carries when its first token really came.
            self.first_token_at = now - max(0.0, time.time() - d.first_token_wall) if d.first_token_wall else now
        self.texts[d.index] += d.text
        self.completion_tokens += d.tokens
        if d.finish_reason is not None:
            self.finish[d.index] = d.finish_reason

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _cancel(events: Any) -> None:
    """Stop the student's generation (aborts the vLLM request) when the client has gone."""
    if hasattr(events, "cancel"):  # Ray Serve DeploymentResponseGenerator
        events.cancel()
    elif hasattr(events, "aclose"):
        with contextlib.suppress(Exception):
            await events.aclose()


class GenerationService:
    def __init__(
        self, settings: Settings, student: StudentClient, metrics: ServingMetrics, capture: CapturePolicy
    ) -> None:
        self.settings = settings
        self.student = student
        self.metrics = metrics
        self.capture = capture
        self.in_flight = 0

    async def run(
        self,
        req: GenerateRequest,
        renderer: Renderer,
        *,
        stream: bool,
        include_usage: bool,
        started_at: float,
        capture_payload: dict[str, Any],
        headers: dict[str, str],
    ) -> Served | ApiError:
        if self.in_flight >= self.settings.server.max_concurrent_requests:
            self._count(renderer.endpoint, req.model, "-", 429)
            return ApiError(
                429,
                f"Too many requests in flight ({self.in_flight}); retry with backoff",
                None,
                "rate_limit_exceeded",
            )
        self._enter()
        events = self.student.generate(req)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = Failed(500, "the student ended the request without a result")
        except Exception as e:
            log.exception("student unavailable")
            first = Failed(503, f"student unavailable: {type(e).__name__}", None, "student_unavailable")
        except BaseException:
            self._leave()
            await _cancel(events)
            raise
        if isinstance(first, Failed):
            self._leave()
            # An unknown model name is the client's free text: keep it out of the label set.
            model_label = "unknown" if first.code == "model_not_found" else req.model
            self._count(renderer.endpoint, model_label, "-", first.status)
            return ApiError(first.status, first.message, first.param, first.code)

        n_choices = len(req.prompts) * (req.sampling.get("n") or 1)
        tally = _Tally(n_choices, sum(len(p) for p in req.prompts))
        finish = _Finisher(self, req, renderer.endpoint, first.adapter, tally, started_at, capture_payload, headers,
                           renderer.id)
        if stream:
            return Served(first.adapter, stream=self._sse(events, renderer, tally, include_usage, finish))
        try:
            async for ev in events:
                if isinstance(ev, Failed):
                    finish(ev.status)
                    return ApiError(ev.status, ev.message, ev.param, ev.code)
                tally.add(ev)
        except BaseException:
            finish(499)
            await _cancel(events)
            raise
        finish(200)
        return Served(first.adapter, body=renderer.response(tally.texts, tally.finish, tally.usage()))

    async def _sse(
        self, events: Any, renderer: Renderer, tally: _Tally, include_usage: bool, finish: _Finisher
    ) -> AsyncIterator[str]:
        status = 200
        try:
            for chunk in renderer.opening_chunks(tally.n_choices):
                yield sse(_with_usage_field(chunk, include_usage))
            async for ev in events:
                if isinstance(ev, Failed):
                    status = ev.status
                    yield ApiError(ev.status, ev.message, ev.param, ev.code).sse()
                    break
                tally.add(ev)
                yield sse(_with_usage_field(renderer.delta_chunk(ev), include_usage))
            else:
                if include_usage:
                    yield sse(renderer.usage_chunk(tally.usage()))
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            status = 499  # client went away: stop the engine's work too
            await _cancel(events)
            raise
        except Exception as e:
            log.exception("stream failed")
            status = 500
            yield ApiError(500, f"stream failed: {type(e).__name__}", None, "stream_error").sse()
            yield "data: [DONE]\n\n"
        finally:
            finish(status)

    # ---- bookkeeping ------------------------------------------------------------------------------------
    def _enter(self) -> None:
        self.in_flight += 1
        self.metrics.in_flight.inc()

    def _leave(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.dec()

    def _count(self, endpoint: str, model: str, adapter: str, status: int) -> None:
        self.metrics.requests.labels(endpoint, model, adapter, str(status)).inc()


def _with_usage_field(chunk: dict[str, Any], include_usage: bool) -> dict[str, Any]:
    # With stream_options.include_usage, OpenAI sends `"usage": null` on every chunk but the last.
    return {**chunk, "usage": None} if include_usage else chunk


@dataclass
class _Finisher:
    """Runs once when a started request ends: metrics, in-flight count, capture offer."""

    svc: GenerationService
    req: GenerateRequest
    endpoint: str
    adapter: str
    tally: _Tally
    started_at: float
    capture_payload: dict[str, Any]
    headers: dict[str, str]
    response_id: str = ""
    done: bool = False

    def __call__(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        svc, m, t = self.svc, self.svc.metrics, self.tally
        svc._leave()
        svc._count(self.endpoint, self.req.model, self.adapter, status)
        latency = time.monotonic() - self.started_at
        m.latency.labels(self.endpoint, self.adapter).observe(latency)
        if t.first_token_at is not None:
            m.ttft.labels(self.endpoint, self.adapter).observe(t.first_token_at - self.started_at)
        m.prompt_tokens.labels(self.adapter).inc(t.prompt_tokens)
        m.generation_tokens.labels(self.adapter).inc(t.completion_tokens)
        if status != 200:
            return
        m.tokens_per_query.labels(self.adapter).observe(t.prompt_tokens + t.completion_tokens)
        m.completion_tokens_per_query.labels(self.adapter).observe(t.completion_tokens)
        if svc.capture.wants(self.endpoint, self.headers, self.capture_payload.get("task")):
            item = FinishedRequest(
                request_id=self.req.request_id,
                endpoint=self.endpoint,
                model=self.req.model,
                adapter=self.adapter,
                request=self.capture_payload,
                outputs=list(t.texts),
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
                latency_s=latency,
                headers=self.headers,
                response_id=self.response_id,
            )
            try:
                accepted = svc.capture.sink.offer(item)
            except Exception:  # a broken sink must never fail a served request
                log.exception("capture sink failed")
                accepted = False
            if not accepted:
                m.capture_dropped.inc()
