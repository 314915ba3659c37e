"""The generation path shared by /v1/chat/completions and /v1/completions.

It admits the request, charged its sequences (429 past the in-flight limits), sends vLLM's request object to the
student replica, and waits for its first event to learn which version serves it (so the response headers can name
it before any byte of the body). The body is what vLLM's serving classes made: one JSON object, or the frames of
a stream passed through as they come. The admission slot is released exactly once when the request ends, however
it ends (`Served.close` covers a stream whose body never started). Metrics and the capture hook run then, from the
student's `Finished` tally; the capture sink is only offered the result, never awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.capture.policy import CapturePolicy, FinishedRequest
from services.config import Settings
from services.gateway.errors import ApiError
from services.gateway.metrics import ServingMetrics
from services.gateway.openai_requests import Generation
from services.gateway.student_client import StudentClient
from services.store.debates import ANONYMOUS_KEY_ID
from services.student.events import Body, Chunks, Failed, Finished, Started

log = logging.getLogger(__name__)


@dataclass
class Served:
    adapter: str
    replica: str = ""  # the student replica that served it
    body: dict[str, Any] | None = None
    stream: AsyncIterator[str] | None = None
    close: Callable[[], Awaitable[None]] | None = None  # with `stream`: ends it, run whatever became of the body
    send_timeout_s: float = 30.0  # with `stream`: how long one frame may wait for its client


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


async def _cancel(events: Any) -> None:
    """Stop the student's generation (aborts the vLLM request) when the client has gone."""
    if hasattr(events, "cancel"):  # Ray Serve DeploymentResponseGenerator
        events.cancel()
    elif hasattr(events, "aclose"):
        with contextlib.suppress(Exception):
            await events.aclose()


class GenerationService:
    def __init__(self, settings: Settings, student: StudentClient, metrics: ServingMetrics, capture: CapturePolicy,
                 base_id: str) -> None:
        """`base_id`: the base model's name (with `student.served_name`, the models that are not an exact version)."""
        self.settings = settings
        self.student = student
        self.metrics = metrics
        self.capture = capture
        self.base_id = base_id
        self.in_flight = 0
        self.sequences_in_flight = 0

    async def run(self, gen: Generation, *, request_id: str, started_at: float, headers: dict[str, str],
                  key_id: str = ANONYMOUS_KEY_ID) -> Served | ApiError:
        """Admit `gen`, then generate. The slot stays taken while a stream is served; every other outcome
        releases it here."""
        slot = self._admit(gen.sequences)
        if slot is None:
            self._count(gen.endpoint, "-", "-", 429)
            return ApiError(
                429,
                f"Too many sequences in flight ({self.sequences_in_flight} in {self.in_flight} requests); "
                "retry with backoff",
                None,
                "rate_limit_exceeded",
            )
        result: Served | ApiError | None = None
        try:
            gen.for_request(request_id)
            result = await self._generate(gen, slot, request_id=request_id, started_at=started_at, headers=headers,
                                          key_id=key_id)
            return result
        finally:
            if not (isinstance(result, Served) and result.stream is not None):
                slot.release()

    async def _generate(self, gen: Generation, slot: Slot, *, request_id: str, started_at: float,
                        headers: dict[str, str], key_id: str) -> Served | ApiError:
        student = self.settings.student.served_name
        exact = gen.model if gen.model not in (student, self.base_id) else None
        events = self.student.serve(gen.endpoint, gen.request, exact)
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
        if isinstance(first, Body):  # a request without `stream`: the whole answer came at once
            finish = self._finisher(gen, slot, request_id, first.adapter, started_at, headers, key_id)
            finish.tally = first.finished
            finish(200)
            async for _ in events:  # the student's generator ends here: let it finish (and release its pin)
                pass
            return Served(first.adapter, first.replica, body=first.json)
        if not isinstance(first, Started):
            failed = first if isinstance(first, Failed) else Failed(500, f"unexpected {type(first).__name__}")
            # The client's spelling of the model never becomes a label: it has not resolved to a canonical name.
            self._count(gen.endpoint, "unknown" if failed.code == "model_not_found" else "-", "-", failed.status)
            return ApiError(failed.status, failed.message, failed.param, failed.code)

        finish = self._finisher(gen, slot, request_id, first.adapter, started_at, headers, key_id)
        body = self._sse(events, finish)

        async def close() -> None:
            await body.aclose()  # a started body runs its own `finally`
            if not finish.done:  # one that never started: its client left before the first frame
                finish(499)
                await _cancel(events)

        return Served(first.adapter, first.replica, stream=body, close=close,
                      send_timeout_s=self.settings.server.stream_send_timeout_s)

    def _finisher(self, gen: Generation, slot: Slot, request_id: str, adapter: str, started_at: float,
                  headers: dict[str, str], key_id: str) -> _Finisher:
        served = self.settings.student.served_name
        model = served if gen.model == served else adapter  # canonical: the alias, or the version that served
        return _Finisher(self, slot, gen, request_id, model, adapter, started_at, headers, key_id)

    async def _sse(self, events: Any, finish: _Finisher) -> AsyncIterator[str]:
        status = 200
        try:
            async for ev in events:
                if isinstance(ev, Chunks):
                    for frame in ev.frames:
                        yield frame
                elif isinstance(ev, Finished):
                    finish.tally = ev
                elif isinstance(ev, Failed):
                    status = ev.status
                    yield ApiError(ev.status, ev.message, ev.param, ev.code).sse()
                    yield "data: [DONE]\n\n"
                    break
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


@dataclass
class _Finisher:
    """Runs once when a started request ends: metrics, in-flight count, capture offer."""

    svc: GenerationService
    slot: Slot
    gen: Generation
    request_id: str
    model: str  # the canonical name the request resolved to, never the client's spelling
    adapter: str
    started_at: float
    headers: dict[str, str]
    key_id: str
    tally: Finished | None = None  # the student's count, once it arrived
    done: bool = False

    def __call__(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        svc, m, endpoint = self.svc, self.svc.metrics, self.gen.endpoint
        t = self.tally or Finished([], 0, 0, None)
        self.slot.release()
        svc._count(endpoint, self.model, self.adapter, status)
        latency = time.monotonic() - self.started_at
        m.latency.labels(endpoint, self.adapter).observe(latency)
        if t.first_token_wall is not None:  # the student's wall clock, read on this process's monotonic one
            first_token_at = t.first_token_wall - (time.time() - time.monotonic())
            m.ttft.labels(endpoint, self.adapter).observe(max(0.0, first_token_at - self.started_at))
        m.prompt_tokens.labels(self.adapter).inc(t.prompt_tokens)
        m.generation_tokens.labels(self.adapter).inc(t.completion_tokens)
        if status != 200 or self.tally is None:
            return
        m.tokens_per_query.labels(self.adapter).observe(t.prompt_tokens + t.completion_tokens)
        m.completion_tokens_per_query.labels(self.adapter).observe(t.completion_tokens)
        if svc.capture.wants(endpoint, self.headers, self.gen.task, key_id=self.key_id):
            item = FinishedRequest(
                request_id=self.request_id,
                endpoint=endpoint,
                model=self.gen.model,
                adapter=self.adapter,
                request=self.gen.capture,
                outputs=list(t.texts),
                prompt_tokens=t.prompt_tokens,
                completion_tokens=t.completion_tokens,
                latency_s=latency,
                headers=self.headers,
                response_id=self.gen.response_id,
                key_id=self.key_id,
            )
            try:
                accepted = svc.capture.sink.offer(item)
            except Exception:  # a broken sink must never fail a served request
                log.exception("capture sink failed")
                accepted = False
            if not accepted:
                m.capture_dropped.inc()
