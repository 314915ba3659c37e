"""Ray Serve deployment of the debate worker: one actor next to the student, reached by the gateway only
for metrics. It reads the capture queue from the store and writes MAGs back; serving never waits for it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from services.config import Settings
from services.debate.agents import build_teachers
from services.debate.budget import BlockBudget
from services.debate.engine import DebateEngine
from services.debate.metrics import DebateMetrics
from services.debate.student_agent import ServeStudentAgent, TrafficGate
from services.debate.worker import DebateWorker
from services.store.controls import Controls
from services.store.db import Database
from services.store.mags import MagStore
from services.student.tokenizer import PromptTokenizer
from services.teachers.token import teachers_token


@serve.deployment(name="Debate", num_replicas=1)
class DebateDeployment:
    async def __init__(self, student: Any, settings: Settings, model_path: str, teachers_url: str) -> None:
        logging.basicConfig(level=settings.log_level)
        cfg = settings.debate
        db = Database(settings.db_url)
        db.create_all()
        self.store = MagStore(db)
        tokenizer = PromptTokenizer(model_path)
        self.gate = TrafficGate(student, cfg.yield_max_wait_s, cfg.yield_idle_s) if cfg.yield_to_traffic else None
        agent = ServeStudentAgent(
            student, tokenizer, model=settings.student.served_name, samples=cfg.student_samples,
            temperature=cfg.student_temperature, max_tokens=cfg.max_tokens,
            max_model_len=settings.student.max_model_len, gate=self.gate,
        )
        self.metrics = DebateMetrics(self.store)
        engine = DebateEngine(agent, build_teachers(cfg, teachers_url, teachers_token(settings)), cfg, self.store,
                              budget=BlockBudget(tokenizer.tok), observer=self.metrics)
        self.worker = DebateWorker(engine, self.store, cfg, controls=Controls(self.store.db),
                                   task_of=settings.task)
        self._task = asyncio.create_task(self.worker.run_forever())

    def metrics_text(self) -> bytes:
        if self.gate is not None:
            self.metrics.sync_gate(self.gate.waited_s, self.gate.preempted)
        return self.metrics.render()

    def status(self) -> dict[str, Any]:
        return {"running": list(self.worker.running), "finished": self.worker.finished,
                "queue": self.store.queue_counts()}

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"debate worker loop ended: {self._task.exception()!r}")
