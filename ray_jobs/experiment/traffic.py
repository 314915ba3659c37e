"""`distillery experiment --task banking77`: the loop on a task's real traffic, exactly as production runs it.

One run starts a private service (its own data directory) with the task's profile and two offline teachers backed
by the labelled file (`reference.labels_file`: answers from the file, erring at their rates with a close wrong
label, rationales in prose), then, cycle after cycle:
  1. traffic   sends a batch of the dataset's messages through the gateway as the app sends them (its system
               prompt + the message, `metadata.task`), with the official `openai` client; for a share of them the
               app's agents post the right label to `POST /v1/feedback`, as a ticket resolved by a person would;
  2. debates   waits while capture and the debate worker process the batch (held-out requests are the task's
               evaluation slice, never trained on);
  3. training  runs a training cycle in the foreground, as `distillery train --once` does (the scheduler's own
               cycle, with the demo's settings): SFT + T-DPO on the usable MAGs, evaluation of candidate and
               incumbent through the service on every task's slice, the gate, promotion through the admin API.
Then it measures the base model and the promoted `student` on the task's held-out slice itself (through the
gateway, the app's format: the label alone, verbatim) and writes results.json, results.md and results.png.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from services.config import Settings

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class TrafficPlan:
    """Sizes of one run, CPU-sized: the student's debate turns and training tokens cost real seconds on 2 cores."""

    task: str = "banking77"
    cycles: int = 2
    requests_per_cycle: int = 160
    feedback_share: float = 0.5  # requests the app labels through POST /v1/feedback
    holdout: float = 0.25
    concurrency: int = 4
    debate_rounds: int = 2
    debate_max_tokens: int = 128
    sft_epochs: float = 2.0
    sft_max_steps: int | None = None
    tdpo_max_steps: int | None = 4
    eval_max_tokens: int = 48
    teacher_error_rates: tuple[float, float] = (0.1, 0.25)
    train_reasoning: bool = False  # the app reads the label alone: train its format, not the debate's reasoning
    seed: int = 0


def demo_settings(base: Settings, out_dir: Path, plan: TrafficPlan, data: Path) -> Settings:
    """The user's settings with the demo's own state, the task's profile and its labelled-file teachers."""
    from services.student.model_prep import resolve_base_model

    d = base.model_dump(mode="json")
    d["student"]["model"] = resolve_base_model(base, lambda _m: None)
    d["data_dir"] = str(out_dir / "state")
    d["database_url"] = None
    teachers = [{"name": f"{plan.task}-{k}", "reference": {"labels_file": str(data / "train.jsonl"),
                                                             "error_rate": rate, "seed": 11 + i}}
                for i, (k, rate) in enumerate(zip("ab", plan.teacher_error_rates, strict=True))]
    d["debate"]["teachers"] = [*d["debate"]["teachers"], *teachers]
    d["debate"].update(max_rounds=plan.debate_rounds, max_tokens=plan.debate_max_tokens, student_samples=1,
                       concurrency=plan.concurrency)
    system_prompt = (data / "system_prompt.txt").read_text().removesuffix("\n")
    # The bank's deployment serves this one task (`default`, a text task, has no traffic and no golden set here).
    d["tasks"] = [{
        "name": plan.task, "answer_type": "label", "labels_file": str(data / "labels.json"),
        "match": {"system_prompt_prefix": system_prompt[:80]}, "teachers": [t["name"] for t in teachers],
        "train_reasoning": plan.train_reasoning,
        "eval": {"holdout": plan.holdout, "max_items": 400, "tolerance": 0.05}}]
    t = d["training"]
    t.update(enabled=False, seed=plan.seed, min_mags=4)
    t["watch"]["enabled"] = False
    t["eval"].update(max_tokens=plan.eval_max_tokens)
    t["sft"].update(epochs=plan.sft_epochs, max_steps=plan.sft_max_steps)
    t["tdpo"].update(max_steps=plan.tdpo_max_steps)
    return Settings(**d)


class TrafficDemo:
    def __init__(self, settings: Settings, out_dir: Path, plan: TrafficPlan, data: Path,
                 progress: Callable[[str], None] = print) -> None:
        self.out_dir, self.plan, self.data, self.progress = out_dir, plan, data, progress
        out_dir.mkdir(parents=True, exist_ok=True)
        self.settings = demo_settings(settings, out_dir, plan, data)
        self.system_prompt = (data / "system_prompt.txt").read_text().removesuffix("\n")
        rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines() if line.strip()]
        random.Random(plan.seed).shuffle(rows)
        self.rows = rows
        self.t0 = time.monotonic()
        self.results: dict[str, Any] = {"plan": asdict(plan), "cycles": [], "variants": {}}

    def say(self, msg: str) -> None:
        self.progress(f"[{time.monotonic() - self.t0:6.0f}s] {msg}")

    def run(self) -> dict[str, Any]:
        from services.launcher import start, stop
        from services.store.db import Database
        from services.store.mags import MagStore

        url = start(self.settings, self.say)
        store = MagStore(Database(self.settings.db_url))
        try:
            for c in range(self.plan.cycles):
                batch = self.rows[c * self.plan.requests_per_cycle: (c + 1) * self.plan.requests_per_cycle]
                sent = asyncio.run(self._send(url, batch))
                self.say(f"cycle {c + 1}: sent {sent['requests']} requests ({sent['labelled']} labelled by the app)")
                self._wait_debates(store)
                job = self._train(url)
                self.results["cycles"].append({"sent": sent, "queue": store.queue_counts(), "job": job})
            self.results["variants"] = self._final(url, store)
        finally:
            stop()
        self.results["seconds"] = round(time.monotonic() - self.t0, 1)
        self.results["captured"] = store.task_counts().get(self.plan.task, 0)
        from ray_jobs.experiment.report import write_traffic_report

        write_traffic_report(self.results, self.out_dir)
        self.say(f"wrote {self.out_dir / 'results.json'}, results.md, results.png")
        return self.results

    async def _send(self, url: str, batch: list[dict[str, Any]]) -> dict[str, int]:
        """The bank's app: each message as its two-message chat, then its label for a share of them."""
        import openai

        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=5)
        sem = asyncio.Semaphore(self.plan.concurrency)
        rng = random.Random(f"feedback-{self.plan.seed}-{len(self.results['cycles'])}")
        labelled = 0

        async def one(http: httpx.AsyncClient, row: dict[str, Any]) -> None:
            nonlocal labelled
            async with sem:
                raw = await client.chat.completions.with_raw_response.create(
                    model=self.settings.student.served_name, max_tokens=self.plan.eval_max_tokens, temperature=0,
                    messages=[{"role": "system", "content": self.system_prompt},
                              {"role": "user", "content": row["text"]}],
                    metadata={"task": self.plan.task})
            if rng.random() < self.plan.feedback_share:
                r = await http.post(f"{url}/v1/feedback", json={"request_id": raw.headers["x-request-id"],
                                                                  "answer": row["label"]})
                r.raise_for_status()
                labelled += 1

        async with httpx.AsyncClient(timeout=120) as http:
            await asyncio.gather(*(one(http, row) for row in batch))
        return {"requests": len(batch), "labelled": labelled}

    def _wait_debates(self, store: Any) -> None:
        from services.store.debates import CaptureStatus

        t0, last = time.monotonic(), 0.0
        while True:
            counts = store.queue_counts()
            left = counts.get(CaptureStatus.QUEUED, 0) + counts.get(CaptureStatus.RUNNING, 0)
            if left == 0:
                break
            if time.monotonic() - last > 60:
                last = time.monotonic()
                self.say(f"  debates: {counts}")
            time.sleep(5)
        self.say(f"  debates done in {time.monotonic() - t0:.0f}s: {store.queue_counts()}, "
                 f"{store.count_usable_since(None)} usable MAGs in all")

    def _train(self, url: str) -> dict[str, Any]:
        from ray_jobs.cycle import run_job
        from services.store.db import Database
        from services.store.jobs import JobStore

        jobs = JobStore(Database(self.settings.db_url))
        job_id = jobs.start("experiment")
        self.say(f"  training cycle: job {job_id}")
        try:
            run_job(self.settings, job_id, url=url, progress=lambda m: self.say(f"  {m}"))
        except Exception as e:  # recorded in the job row; the run goes on to measure what is served
            self.say(f"  job {job_id} failed: {type(e).__name__}: {e}")
        job = jobs.get(job_id).as_dict()  # type: ignore[union-attr]
        self.say(f"  job {job_id}: {job['outcome']}: {job['reason'] or job['error']}")
        return {k: job.get(k) for k in ("id", "status", "outcome", "reason", "error", "candidate", "incumbent",
                                        "data", "metrics", "started_at", "finished_at")}

    def _final(self, url: str, store: Any) -> dict[str, Any]:
        """Base model and the promoted `student` on the task's held-out slice, measured here, not read from a job."""
        from ray_jobs.evaluate.evaluator import evaluate, load_slices
        from services.service_client import ServiceClient
        from services.student.model_prep import base_model_id, resolve_base_model

        sl = next(s for s in load_slices(self.settings, store) if s.task.name == self.plan.task)
        client = ServiceClient(self.settings, url)
        base = base_model_id(resolve_base_model(self.settings, self.say))
        out = {}
        for name, label, model in (("none", "Base model", base),
                                   ("promoted", "Promoted student", self.settings.student.served_name)):
            r = asyncio.run(evaluate(client, model, sl.items, self.settings.training.eval, sl.eval_set, sl.task.spec))
            out[name] = {"label": label, **r.as_dict()}
            self.say(f"{label} ({r.served_by}): accuracy {r.accuracy:.1%} ({r.correct}/{r.n}), "
                     f"tokens/query {r.mean_total_tokens:.1f} (completion {r.mean_completion_tokens:.1f})")
        return out
