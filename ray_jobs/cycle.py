"""One training cycle, end to end: usable MAGs -> trees + SFT data -> Ray Train (SFT, T-DPO) -> publish as
`student@vN+1` -> evaluate candidate and incumbent through the service -> gate -> promote (hot swap) or keep.

Runs as its own process (the scheduler starts `python -m ray_jobs.cycle`; `distillery train --once` runs it in
the foreground; on Kubernetes a RayJob does): a crash or a kill ends the process, never the service, and nothing
reaches serving before the gate promotes through the admin API. The job row records every phase, the outcome and
the error; the adapter records its lineage (MAGs, trees) and evaluation.

The cycle acts only while it holds its job's lease (services/store/jobs.py): it renews the lease on entering each
phase, so before publishing and before promoting, and a cycle that was reaped while it stalled (a second one may
have started since) stops there, its job recorded `lost_lease`, with nothing published or promoted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_jobs.evaluate.evaluator import EvalResult, combine, evaluate, load_slices
from ray_jobs.evaluate.gate import Decision, decide
from ray_jobs.trees.build import TrainingData, build
from ray_jobs.trees.encode import Encoder
from services.cluster import cluster_address
from services.config import Settings, load_settings
from services.registry import AdapterRegistry, AdapterVersion
from services.service_client import ServiceClient
from services.store.db import Database
from services.store.debates import DebateStatus
from services.store.jobs import JobOutcome, JobStatus, JobStore, LeaseLost
from services.store.mags import Mag, MagStore
from services.student.model_prep import base_model_id, resolve_base_model
from services.student.tokenizer import PromptTokenizer

log = logging.getLogger("distillery.cycle")
HEARTBEAT_S = 10.0
# A test hook: when this variable names a file holding a phase's name, the cycle waits on entering that phase while
# the file still names it (an hour at most), so a test can kill it there, or reap it and let it go on. Unset in
# production.
PAUSE_FILE_ENV = "DISTILLERY_CYCLE_PAUSE_FILE"
PAUSE_MAX_S = 3600.0


@dataclass
class CycleResult:
    job_id: int
    outcome: JobOutcome  # promoted | not_promoted | skipped
    reason: str
    candidate: str | None = None
    evals: dict[str, Any] = field(default_factory=dict)


def connect_ray(settings: Settings) -> None:
    """Join the service's Ray cluster so training is accounted next to serving; a private one if none runs."""
    import ray

    if ray.is_initialized():  # inside the service's own process (the experiment) or a test
        return
    from services.launcher import ray_address_file

    left = ray_address_file(settings)
    given = cluster_address(settings)
    address = given or (left.read_text().strip() if left.is_file() else None)
    kwargs: dict[str, Any] = {"namespace": settings.ray.namespace, "log_to_driver": True}
    try:
        ray.init(address=address or "auto", **kwargs)
    except ConnectionError:
        if given:
            raise
        log.warning("no running Ray cluster found: training on a private local Ray (not accounted with serving)")
        ray.init(num_cpus=settings.ray.num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)


def training_mags(store: MagStore, max_mags: int) -> list[Mag]:
    """The newest `max_mags` usable MAGs (finished, with a gold and a correct answer), oldest first; never one of a
    task's held-out requests (the gate's slice)."""
    mags = store.list(limit=max_mags, usable=True, status=DebateStatus.DONE, with_graph=True, newest_first=True,
                      held_out=False)
    return sorted(mags, key=lambda m: m.id)


def datasets(settings: Settings, mags: list[Mag], encoder: Encoder, **build_kwargs: Any
             ) -> tuple[TrainingData, list[Any], list[Any]]:
    t = settings.training
    data = build(mags, seed=t.seed, max_pairs_per_node=t.tdpo.max_pairs_per_node, gold_weights=t.gold_weights,
                 explanation_share=t.sft.explanation_share,
                 without_reasoning=frozenset(task.name for task in settings.tasks if not task.train_reasoning),
                 **build_kwargs)
    sft = encoder.sft(data.sft, data.counts)
    trees = encoder.trees(data.trees, t.tdpo.level_weight, data.counts)
    data.counts["sft_examples"], data.counts["tree_nodes"] = len(sft), len(trees)
    data.counts["tree_pairs"] = sum(len(x.pairs) for x in trees)
    return data, sft, trees


class Cycle:
    def __init__(self, settings: Settings, job_id: int, *, url: str | None = None,
                 progress: Callable[[str], None] = print) -> None:
        self.settings, self.job_id, self.progress = settings, job_id, progress
        db = Database(settings.db_url)
        db.create_all()
        self.jobs, self.mags = JobStore(db), MagStore(db)
        self.lease = self.jobs.lease(job_id)
        self.model_path = resolve_base_model(settings, progress)
        self.registry = AdapterRegistry.from_settings(settings, base_id=base_model_id(self.model_path),
                                                      model_path=self.model_path)
        self.client = ServiceClient(settings, url)
        self.work_dir = settings.jobs_dir / f"job-{job_id}"

    def phase(self, name: str) -> None:
        """Enter phase `name`: LeaseLost, before anything of the phase is done, if the job no longer holds it."""
        self.progress(f"[job {self.job_id}] {name}")
        self.lease.renew()
        self.jobs.set(self.job_id, phase=name)
        self._pause_hook(name)
        self.lease.renew()

    def _pause_hook(self, name: str) -> None:
        pause = os.environ.get(PAUSE_FILE_ENV)
        if not pause or not _names(Path(pause), name):
            return
        self.progress(f"[job {self.job_id}] paused on entering {name} ({PAUSE_FILE_ENV})")
        deadline = time.monotonic() + PAUSE_MAX_S
        while _names(Path(pause), name) and time.monotonic() < deadline:
            time.sleep(0.1)

    def run(self) -> CycleResult:
        t = self.settings.training
        self.lease.renew()  # a cycle whose job was reaped before it got going does nothing
        if not self.client.ready():
            raise RuntimeError(f"the service at {self.client.url} is not ready: evaluation and promotion need it")
        self.phase("data")
        mags = training_mags(self.mags, t.max_mags)
        if len(mags) < t.min_mags:
            return self._end(JobOutcome.SKIPPED, f"{len(mags)} usable MAGs, fewer than training.min_mags={t.min_mags}")
        encoder = Encoder(PromptTokenizer(self.model_path), t.max_prompt_tokens, t.max_completion_tokens)
        data, sft, trees = datasets(self.settings, mags, encoder)
        self.progress(f"[job {self.job_id}] data: {data.summary()}")
        self.jobs.set(self.job_id, data=data.summary())
        if not sft:
            return self._end(JobOutcome.SKIPPED, "no SFT examples in the usable MAGs")

        self.phase("training")
        from ray_jobs.train.job import run_training

        connect_ray(self.settings)
        out = run_training(t, model_path=self.model_path, sft=sft, trees=trees, pad_id=encoder.pad_id,
                           work_dir=self.work_dir, name=f"job-{self.job_id}")
        self.jobs.set(self.job_id, metrics={"train": out.metrics})

        lineage = {"job": self.job_id, "mags": data.mag_ids, "trees": [[n.mag_id, n.round] for n in data.trees],
                   "counts": data.summary(), "seed": t.seed, "training": t.model_dump(exclude={"eval", "gate",
                                                                                                 "watch"})}
        candidate = self.publish(out.adapter_dir, metrics={"train": out.metrics}, lineage=lineage)

        self.phase("evaluating")
        incumbent = self.registry.promoted()
        incumbent_name = incumbent.name if incumbent else self.registry.base_model
        evals = asyncio.run(self._evaluate([candidate.name, incumbent_name]))
        cand, inc = evals[candidate.name], evals[incumbent_name]
        self.registry.update(candidate.name, metrics={"eval": cand.as_dict()})
        if incumbent is not None:
            self.registry.update(incumbent.name, metrics={"eval": inc.as_dict()})
        decision = decide(cand, inc, t.gate, {task.name: task.eval.tolerance for task in self.settings.tasks})
        self.jobs.set(self.job_id, incumbent=incumbent_name,
                      metrics={"train": out.metrics, "eval": {k: v.as_dict() for k, v in evals.items()}})
        return self._gate(candidate.name, decision, {k: v.as_dict() for k, v in evals.items()})

    def publish(self, adapter_dir: Path, *, metrics: dict[str, Any], lineage: dict[str, Any]) -> AdapterVersion:
        """Register the trained adapter as the next version, if the job still holds its lease."""
        self.phase("publishing")
        candidate = self.registry.publish(adapter_dir, metrics=metrics, lineage=lineage,
                                          note=f"trained by job {self.job_id}")
        self.jobs.set(self.job_id, candidate=candidate.name)
        return candidate

    def promote(self, candidate: str, reason: str) -> None:
        """Promote `candidate` through the service, if the job still holds its lease."""
        self.phase("promoting")
        self.client.promote(candidate, f"job {self.job_id}: {reason}")

    async def _evaluate(self, models: list[str]) -> dict[str, EvalResult]:
        cfg = self.settings.training.eval
        slices = load_slices(self.settings, self.mags)
        if not slices:
            raise RuntimeError("nothing to evaluate on: no task has held-out traffic with a gold or a golden set "
                               "(set tasks[].eval.golden or capture labelled traffic)")
        out = {}
        for model in models:  # one at a time: both share the engine, so timings stay comparable
            per_task = {}
            for sl in slices:
                r = per_task[sl.task.name] = await evaluate(self.client, model, sl.items, cfg, sl.eval_set,
                                                            sl.task.spec)
                self.progress(f"[job {self.job_id}] eval {model} on {sl.task.name}: accuracy {r.accuracy:.3f} "
                              f"({r.correct}/{r.n}), tokens/query {r.mean_total_tokens:.1f} "
                              f"(completion {r.mean_completion_tokens:.1f})")
            out[model] = combine(model, per_task, {sl.task.name: sl.weight for sl in slices})
        return out

    def _gate(self, candidate: str, decision: Decision, evals: dict[str, Any]) -> CycleResult:
        if not decision.promote:
            self.registry.update(candidate, note=f"not promoted: {decision.reason}")
            return self._end(JobOutcome.NOT_PROMOTED, decision.reason, candidate, evals)
        self.promote(candidate, decision.reason)
        return self._end(JobOutcome.PROMOTED, decision.reason, candidate, evals)

    def _end(self, outcome: JobOutcome, reason: str, candidate: str | None = None, evals: dict[str, Any] | None = None
             ) -> CycleResult:
        self.jobs.finish(self.job_id, status=JobStatus.SUCCEEDED, outcome=outcome, reason=reason, phase="done")
        self.progress(f"[job {self.job_id}] {outcome}: {reason}")
        return CycleResult(self.job_id, outcome, reason, candidate, evals or {})


def run_job(settings: Settings, job_id: int, *, url: str | None = None,
            progress: Callable[[str], None] = print) -> CycleResult:
    """Run cycle `job_id` (a running row in the jobs table), renewing its lease as the heartbeat; any error is
    recorded, then raised (a lost lease as `lost_lease`: the job that took over owns everything else)."""
    jobs = JobStore(Database(settings.db_url))
    lease = jobs.lease(job_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                lease.renew()
            except LeaseLost as e:  # the cycle finds out on entering its next phase
                log.error("%s", e)
                return
            except Exception:  # a busy database must not end the job; the next beat retries
                log.warning("heartbeat failed", exc_info=True)

    threading.Thread(target=beat, daemon=True, name="job-heartbeat").start()
    try:
        return Cycle(settings, job_id, url=url, progress=progress).run()
    except LeaseLost as e:
        jobs.lost(job_id, e)
        progress(f"[job {job_id}] stopped: {e}")
        raise
    except BaseException as e:
        jobs.finish(job_id, status=JobStatus.FAILED, outcome=JobOutcome.FAILED, error=f"{type(e).__name__}: {e}",
                    reason="".join(traceback.format_exception(e))[-4000:])
        raise
    finally:
        stop.set()


def _names(pause_file: Path, phase: str) -> bool:
    return pause_file.is_file() and pause_file.read_text().strip() == phase


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run one Distillery training cycle (a row in the jobs table).")
    p.add_argument("--job-id", type=int, required=True)
    p.add_argument("--url", default=None, help="The service's base URL (default: from the configuration).")
    args = p.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.monotonic()
    try:
        res = run_job(settings, args.job_id, url=args.url, progress=lambda m: print(m, flush=True))
    except Exception as e:
        print(f"[job {args.job_id}] failed after {time.monotonic() - t0:.0f}s: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)
        return 1
    print(f"[job {args.job_id}] {res.outcome} in {time.monotonic() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
