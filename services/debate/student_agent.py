"""The student as a debate agent inside the service: its turns go straight to the Student deployment.

Going by Ray handle (not through the gateway) keeps debate turns out of the serving metrics and admission
limit, and marks them `background`, so the engine does not count them as serving load. Before each turn the
`TrafficGate` waits until the student has served no client for `yield_idle_s`; the turn then runs preemptibly
(the engine aborts it the moment a client request arrives, and it waits again). Past `yield_max_wait_s` a turn
runs to completion regardless, so debates are delayed under sustained traffic, never starved for ever.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from services.debate.agents import Reply
from services.student.events import Delta, Failed, GenerateRequest, Started
from services.student.tokenizer import PromptTokenizer
from services.tasks.answers import read_answer


class TrafficGate:
    """Waits until the student has served no client for `idle_s`; gives up after the caller's deadline."""

    def __init__(self, handle: Any, max_wait_s: float, idle_s: float, poll_s: float = 0.25) -> None:
        self.handle, self.max_wait_s, self.idle_s, self.poll_s = handle, max_wait_s, idle_s, poll_s
        self.waited_s = 0.0  # totals, for metrics
        self.preempted = 0

    async def wait(self, budget_s: float) -> bool:
        """True when the student went idle (the turn may run, preemptibly); False when `budget_s` ran out."""
        t0 = time.monotonic()
        try:
            while True:
                try:
                    in_flight, idle = await self.handle.serving_load.remote()
                except Exception:  # the replica is restarting: the turn itself will report the failure
                    return True
                if in_flight == 0 and idle >= self.idle_s:
                    return True
                if time.monotonic() - t0 >= budget_s:
                    return False
                await asyncio.sleep(self.poll_s)
        finally:
            self.waited_s += time.monotonic() - t0


PROMPT_MARGIN = 64  # tokens of chat template around a user message, with room to spare


class ServeStudentAgent:
    role = "student"

    def __init__(
        self,
        handle: Any,
        tokenizer: PromptTokenizer,
        *,
        model: str,
        samples: int,
        temperature: float,
        max_tokens: int,
        max_model_len: int,
        gate: TrafficGate | None = None,
        name: str = "student",
    ) -> None:
        self.name, self.model = name, model
        self._stream = handle.options(stream=True)
        self.tokenizer = tokenizer
        self.samples, self.temperature, self.max_tokens = samples, temperature, max_tokens
        self.max_model_len = max_model_len
        self.gate = gate
        # The longest debate prompt the student is given: room is left for a reply (the engine trims the other
        # agents' blocks to fit, so the student's turn never fails on its context).
        self.prompt_limit = max_model_len - min(max_tokens, max_model_len // 2) - PROMPT_MARGIN

    async def ask(self, prompt: str, kind: str) -> Reply:
        ids = self.tokenizer.chat([{"role": "user", "content": prompt}])
        room = self.max_model_len - len(ids)
        if room < 16:
            return Reply(None, prompt_tokens=len(ids), error="context_length_exceeded")
        n = self.samples if kind == "answer" else 1
        sampling = {"temperature": self.temperature, "top_p": 0.9, "n": n}
        # With a gate: run while the student is idle, preemptibly; once the wait budget is spent (or without a
        # gate), run to completion.
        deadline = time.monotonic() + (self.gate.max_wait_s if self.gate else 0.0)
        while True:
            idle = await self.gate.wait(max(0.0, deadline - time.monotonic())) if self.gate else False
            req = GenerateRequest(f"debate-{uuid.uuid4().hex[:12]}", self.model, [ids], min(self.max_tokens, room),
                                  sampling, stream=False, background=True, preemptible=idle)
            reply = await self._turn(req, ids)
            if not (reply.error or "").startswith("student_503: preempted"):
                return reply
            if self.gate is not None:
                self.gate.preempted += 1

    async def _turn(self, req: GenerateRequest, ids: list[int]) -> Reply:
        n = req.sampling["n"]
        t0 = time.monotonic()
        texts, tokens, adapter = [""] * n, 0, None
        finish: list[str | None] = [None] * n
        try:
            async for ev in self._stream.generate.remote(req):
                if isinstance(ev, Failed):
                    detail = "preempted" if ev.code == "preempted" else ev.message[:200]
                    return Reply(None, len(ids), tokens, time.monotonic() - t0, error=f"student_{ev.status}: {detail}")
                if isinstance(ev, Started):
                    adapter = ev.adapter
                elif isinstance(ev, Delta):
                    texts[ev.index] += ev.text
                    tokens += ev.tokens
                    finish[ev.index] = ev.finish_reason or finish[ev.index]
        except Exception as e:  # replica died mid-turn: the debate records an error node
            return Reply(None, len(ids), tokens, time.monotonic() - t0, error=f"student_unavailable: {e!r}"[:200])
        # D&R's retry for bad formatting: the first sample with a readable final answer.
        i = next((i for i, t in enumerate(texts) if read_answer(t, "text", finish_reason=finish[i]).status == "ok"), 0)
        return Reply(texts[i], len(ids), tokens, time.monotonic() - t0, model=adapter, finish_reason=finish[i])
