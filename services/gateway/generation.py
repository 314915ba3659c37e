"""The generation path shared by /v1/chat/completions and /v1/completions.

It admits the request, charged its sequences (429 past the in-flight limits), before the endpoint prepares it
(tokenisation, off the event loop), waits for the student's first event to learn which version serves it (so the
response headers can name it before any byte of the body), then either collects a full response or streams SSE
chunks. The admission slot is released exactly once when the request ends, however it ends (`Served.close` covers
a stream whose body never started). Metrics and the capture hook run then; the capture sink is only offered the
result, never awaited. The endpoints differ only in their `Renderer` and how they prepare the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.capture.policy import CapturePolicy, FinishedRequest
from services.config import Settings
from services.gateway.errors import ApiError
from services.gateway.metrics import ServingMetrics
from services.gateway.student_client import StudentClient
from services.store.debates import ANONYMOUS_KEY_ID
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
    close: Callable[[], Awaitable[None]] | None = None  # with `stream`: ends it, run whatever became of the body
    send_timeout_s: float = 30.0  # with `stream`: how long one frame may wait for its client


@dataclass
class Prepared:
    """A request ready for the student, made by the endpoint once admitted."""

    req: GenerateRequest
    capture_payload: dict[str, Any]


@dataclass
class Slot:
    """What admission charged one request: held from before its prompt is tokenised until its response ends."""

    svc: GenerationService
    sequences: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.svc._leave(self.sequences)


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
        self.sequences_in_flight = 0

    async def run(
        self,
        renderer: Renderer,
        sequences: int,
        prepare: Callable[[], Awaitable[Prepared | ApiError]],
        *,
        stream: bool,
        include_usage: bool,
        started_at: float,
        headers: dict[str, str],
        key_id: str = ANONYMOUS_KEY_ID,
    ) -> Served | ApiError:
        """Admit a request of `sequences` (prompts x n), then `prepare` it and generate. The slot stays taken
        while a stream is served; every other outcome releases it here."""
        slot = self._admit(sequences)
        if slot is None:
            self._count(renderer.endpoint, "-", "-", 429)
            return ApiError(
                429,
                f"Too many sequences in flight ({self.sequences_in_flight} in {self.in_flight} requests); "
                "retry with backoff",
                None,
                "rate_limit_exceeded",
            )
        result: Served | ApiError | None = None
        try:
            prepared = await prepare()
            if isinstance(prepared, ApiError):
                return prepared
            result = await self._generate(prepared, renderer, slot, stream=stream, include_usage=include_usage,
                                          started_at=started_at, headers=headers, key_id=key_id)
            return result
        finally:
            if not (isinstance(result, Served) and result.stream is not None):
                slot.release()

    async def _generate(
        self,
        prepared: Prepared,
        renderer: Renderer,
        slot: Slot,
        *,
        stream: bool,
        include_usage: bool,
        started_at: float,
        headers: dict[str, str],
        key_id: str,
    ) -> Served | ApiError:
        req = prepared.req
        events = self.student.generate(req)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = Failed(500, "the student ended the request without a result")
        except Exception as e:
            log.exception("student unavailable")
            first = Failed(503, f"student unavailable: {type(e).__name__}", None, "student_unavailable")
        except BaseException:
            await _cancel(events)
            raise
        if isinstance(first, Failed):
            # The client's spelling of the model never becomes a label: it has not resolved to a canonical name.
            self._count(renderer.endpoint, "unknown" if first.code == "model_not_found" else "-", "-", first.status)
            return ApiError(first.status, first.message, first.param, first.code)

        n_choices = len(req.prompts) * (req.sampling.get("n") or 1)
        tally = _Tally(n_choices, sum(len(p) for p in req.prompts))
        model = self.settings.student.served_name if req.model == self.settings.student.served_name else first.adapter
        finish = _Finisher(self, slot, req, renderer.endpoint, model, first.adapter, tally, started_at,
                           prepared.capture_payload, headers, key_id, renderer.id)
        if stream:
            body = self._sse(events, renderer, tally, include_usage, finish)

            async def close() -> None:
                await body.aclose()  # a started body runs its own `finally`
                if not finish.done:  # one that never started: its client left before the first frame
                    finish(499)
                    await _cancel(events)

            return Served(first.adapter, stream=body, close=close,
                          send_timeout_s=self.settings.server.stream_send_timeout_s)
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
    def _admit(self, sequences: int) -> Slot | None:
        server = self.settings.server
        if (self.in_flight >= server.max_concurrent_requests
                or self.sequences_in_flight + sequences > server.max_sequences_in_flight):
            return None
        self.in_flight += 1
        self.sequences_in_flight += sequences
        self.metrics.in_flight.inc()
        self.metrics.sequences_in_flight.inc(sequences)
        return Slot(self, sequences)

    def _leave(self, sequences: int) -> None:
        self.in_flight -= 1
        self.sequences_in_flight -= sequences
        self.metrics.in_flight.dec()
        self.metrics.sequences_in_flight.dec(sequences)

    def _count(self, endpoint: str, model: str, adapter: str, status: int) -> None:
        self.metrics.requests.labels(endpoint, model, adapter, str(status)).inc()


def _with_usage_field(chunk: dict[str, Any], include_usage: bool) -> dict[str, Any]:
    # With stream_options.include_usage, OpenAI sends `"usage": null` on every chunk but the last.
    return {**chunk, "usage": None} if include_usage else chunk


@dataclass
class _Finisher:
    """Runs once when a started request ends: metrics, in-flight count, capture offer."""

    svc: GenerationService
    slot: Slot
    req: GenerateRequest
    endpoint: str
    model: str  # the canonical name the request resolved to, never the client's spelling
    adapter: str
    tally: _Tally
    started_at: float
    capture_payload: dict[str, Any]
    headers: dict[str, str]
    key_id: str
    response_id: str = ""
    done: bool = False

    def __call__(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        svc, m, t = self.svc, self.svc.metrics, self.tally
        self.slot.release()
        svc._count(self.endpoint, self.model, self.adapter, status)
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
        if svc.capture.wants(self.endpoint, self.headers, self.capture_payload.get("task"), key_id=self.key_id):
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
                key_id=self.key_id,
            )
            try:
                accepted = svc.capture.sink.offer(item)
            except Exception:  # a broken sink must never fail a served request
                log.exception("capture sink failed")
                accepted = False
            if not accepted:
                m.capture_dropped.inc()
