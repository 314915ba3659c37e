"""The student as a debate agent inside the service: its turns go straight to the Student deployment.

Going by Ray handle (not through the gateway) keeps debate turns out of the serving metrics and admission
limit, and marks them `background`, so the engine does not count them as serving load. Before each turn the
`TrafficGate` waits until no client request is running (up to `yield_max_wait_s`): debates use the student's
idle time and leave its busy time to traffic.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from services.debate.agents import Reply
from services.student.events import Delta, Failed, GenerateRequest, Started
from services.student.tokenizer import PromptTokenizer
from services.tasks.answers import parse_final_answer


class TrafficGate:
    def __init__(self, handle: Any, max_wait_s: float, poll_s: float = 0.2) -> None:
        self.handle, self.max_wait_s, self.poll_s = handle, max_wait_s, poll_s
        self.waited_s = 0.0  # total, for metrics

    async def wait(self) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.max_wait_s:
            try:
                if await self.handle.serving_load.remote() == 0:
                    break
            except Exception:  # the replica is restarting: the turn itself will report the failure
                break
            await asyncio.sleep(self.poll_s)
        self.waited_s += time.monotonic() - t0


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

    async def ask(self, prompt: str, kind: str) -> Reply:
        ids = self.tokenizer.chat([{"role": "user", "content": prompt}])
        room = self.max_model_len - len(ids)
        if room < 16:
            return Reply(None, prompt_tokens=len(ids), error="context_length_exceeded")
        n = self.samples if kind == "answer" else 1
        req = GenerateRequest(
            f"debate-{uuid.uuid4().hex[:12]}", self.model, [ids], min(self.max_tokens, room),
            {"temperature": self.temperature, "top_p": 0.9, "n": n}, stream=False, background=True,
        )
        if self.gate is not None:
            await self.gate.wait()
        t0 = time.monotonic()
        texts, tokens, adapter = [""] * n, 0, None
        try:
            async for ev in self._stream.generate.remote(req):
                if isinstance(ev, Failed):
                    return Reply(None, len(ids), tokens, time.monotonic() - t0, error=f"student_{ev.status}: "
                                 f"{ev.message[:200]}")
                if isinstance(ev, Started):
                    adapter = ev.adapter
                elif isinstance(ev, Delta):
                    texts[ev.index] += ev.text
                    tokens += ev.tokens
        except Exception as e:  # replica died mid-turn: the debate records an error node
            return Reply(None, len(ids), tokens, time.monotonic() - t0, error=f"student_unavailable: {e!r}"[:200])
        text = next((t for t in texts if parse_final_answer(t).status != "unparsed"), texts[0])
        return Reply(text, len(ids), tokens, time.monotonic() - t0, model=adapter)
