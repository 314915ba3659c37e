"""`distillery experiment`: the papers' ablation, offline, on the built-in task suite with the reference teachers.

One run starts a private service (its own data directory: Ray Serve + vLLM + the reference teachers), then:
  1. debates  the student (through the service) debates the three reference teachers on the suite's train split,
              twice: D&R as specified, and D&R without self-reflection and feedback (critique phase off);
  2. training five variants on the same questions, each a Ray Train job on the service's Ray cluster:
                none                  the base student
                single_teacher_sft    SFT on one teacher's round-0 answers (the first configured teacher)
                dr_sft                SFT on D&R's data: every correct teacher answer + FAIR's fault-aware items
                dr_sft_tdpo           dr_sft's adapter continued with T-DPO on the preference trees
                dr_no_reflection      SFT + T-DPO on the debates without self-reflection and feedback
              (dr_sft is the SFT stage of the dr_sft_tdpo job: the same adapter T-DPO starts from);
  3. eval     every variant through the serving path on the held-out eval split: accuracy, tokens per query.
Writes results.json, results.md and results.png into the output folder, printing progress as it goes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.config import Settings

VARIANTS = {
    "none": "No distillation (base student)",
    "single_teacher_sft": "Single-teacher SFT",
    "dr_sft": "D&R SFT only",
    "dr_sft_tdpo": "D&R SFT + T-DPO",
    "dr_no_reflection": "D&R w/o self-reflection & feedback",
}


@dataclass
class Plan:
    """Sizes of one run. CPU-sized: the student's debate turns and every training token cost real seconds on a
    2-core machine, so debates are shorter than the paper's (one student sample, 160 tokens, 3 rounds) and
    T-DPO sees a capped number of trees; on a GPU raise them."""

    train_questions: int
    eval_questions: int
    debate_concurrency: int = 16
    debate_max_tokens: int = 160
    debate_rounds: int = 3
    student_samples: int = 1
    sft_epochs: float = 3.0
    sft_max_steps: int | None = None
    tdpo_trees_per_step: int = 2
    tdpo_max_steps: int | None = 12
    max_prompt_tokens: int = 768
    eval_max_tokens: int = 192
    seed: int = 0


QUICK = Plan(train_questions=16, eval_questions=40, sft_max_steps=12, tdpo_max_steps=4)
# 80 held-out questions: 95% intervals of about +-10 points at 35% accuracy, under 2 minutes of evaluation per
# variant on 2 cores. Telling variants 3 points apart needs about 3,900 per variant (`report.n_to_separate`):
# hours of CPU evaluation per variant, a GPU-sized run (`--eval-questions`).
FULL = Plan(train_questions=48, eval_questions=80)


def experiment_settings(base: Settings, out_dir: Path, plan: Plan) -> Settings:
    """The user's settings with the experiment's own state, no capture, no scheduler, and the plan's sizes."""
    from services.student.model_prep import resolve_base_model

    d = base.model_dump()
    d["student"]["model"] = resolve_base_model(base, lambda _m: None)  # the user's converted copy, not a new one
    d["data_dir"] = out_dir / "state"
    d["database_url"] = None
    d["capture"]["enabled"] = False
    d["student"]["cpu_threads_bind"] = "all"  # nothing else needs the cores while the student debates
    d["debate"].update(max_tokens=plan.debate_max_tokens, student_samples=plan.student_samples,
                       max_rounds=plan.debate_rounds)
    t = d["training"]
    t.update(enabled=False, seed=plan.seed, max_prompt_tokens=plan.max_prompt_tokens)
    t["watch"]["enabled"] = False
    t["eval"].update(max_tokens=plan.eval_max_tokens)
    d["tasks"] = [{"name": "default", "answer_type": "number", "eval": {
        "holdout": 0.0, "golden": "builtin:arithmetic", "golden_n": plan.eval_questions}}]
    t["sft"].update(max_steps=plan.sft_max_steps, epochs=plan.sft_epochs)
    t["tdpo"].update(max_steps=plan.tdpo_max_steps, trees_per_step=plan.tdpo_trees_per_step)
    # The experiment owns the machine while it trains (serving is idle then): every core trains.
    t["torch_threads"] = t["torch_threads"] or max(1, os.cpu_count() or 1)
    return Settings(**d)


class Experiment:
    def __init__(self, settings: Settings, out_dir: Path, plan: Plan, progress: Callable[[str], None] = print):
        self.out_dir, self.plan, self.progress = out_dir, plan, progress
        out_dir.mkdir(parents=True, exist_ok=True)
        self.settings = experiment_settings(settings, out_dir, plan)
        self.t0 = time.monotonic()
        self.results: dict[str, Any] = {"plan": asdict(self.plan), "variants": {}, "debates": {}, "training": {}}

    def say(self, msg: str) -> None:
        self.progress(f"[{time.monotonic() - self.t0:6.0f}s] {msg}")

    def run(self) -> dict[str, Any]:
        from services.launcher import start, stop

        url = start(self.settings, self.say)
        try:
            mags_dr = self._debates("dr", reflection=True, url=url)
            mags_nr = self._debates("dr_no_reflection", reflection=False, url=url)
            adapters = self._train(mags_dr, mags_nr)
            self._evaluate(url, adapters)
        finally:
            stop()
        self.results["seconds"] = round(time.monotonic() - self.t0, 1)
        from ray_jobs.experiment.report import write_report

        write_report(self.results, self.out_dir)
        self.say(f"wrote {self.out_dir / 'results.json'}, results.md, results.png")
        return self.results

    # ---- 1. debates -------------------------------------------------------------------------------------------
    def _debates(self, name: str, *, reflection: bool, url: str) -> list[Any]:
        from services.debate.batch import run_batch
        from services.store.db import Database
        from services.store.debates import DebateStatus
        from services.store.mags import MagStore
        from services.tasks.arithmetic import generate

        path = self.out_dir / f"{name}.jsonl"
        store = MagStore(Database(self.settings.db_url))
        done = [m for m in store.list(limit=100_000, status=DebateStatus.DONE, with_graph=True, newest_first=False)
                if m.source == f"batch:{path.name}"]
        if len(done) >= self.plan.train_questions:  # an earlier run of this folder debated them already
            self.say(f"debates ({name}): reusing {len(done)} finished debates from "
                     f"{Database.describe(self.settings.db_url)}")
            self.results["debates"][name] = {"reused": len(done)}
            return [m for m in done[: self.plan.train_questions] if m.usable]
        with path.open("w") as f:
            for p in generate("train", self.plan.train_questions, self.plan.seed):
                f.write(json.dumps({"question": p.question, "answer": p.answer}) + "\n")
        settings = self.settings.model_copy(deep=True)
        settings.debate.reflection = reflection
        self.say(f"debates ({name}): {self.plan.train_questions} train questions, reflection={reflection}")

        def tick(s: Any) -> None:
            if s.debates % max(1, self.plan.train_questions // 10) == 0 or s.debates == self.plan.train_questions:
                self.say(f"  debates {s.debates}/{self.plan.train_questions}: {dict(s.outcomes)}")

        summary = asyncio.run(run_batch(settings, path, url, None, self.plan.debate_concurrency, tick))
        self.results["debates"][name] = summary.to_dict() | {"debate_ids": None}
        mags = [m for i in summary.debate_ids if (m := store.get(i)) is not None and m.usable]
        self.say(f"debates ({name}) done in {summary.seconds:.0f}s: {len(mags)} usable MAGs")
        return mags

    # ---- 2. training ---------------------------------------------------------------------------------------------
    def _train(self, mags_dr: list[Any], mags_nr: list[Any]) -> dict[str, Path]:
        from ray_jobs.cycle import datasets
        from ray_jobs.train.job import run_training
        from ray_jobs.trees.encode import Encoder
        from services.student.model_prep import resolve_base_model
        from services.student.tokenizer import PromptTokenizer

        t = self.settings.training
        model_path = resolve_base_model(self.settings, self.say)
        encoder = Encoder(PromptTokenizer(model_path), t.max_prompt_tokens, t.max_completion_tokens)
        single = self.settings.debate.teachers[0].name
        jobs = {  # job name -> (MAGs, build options, run T-DPO)
            "single_teacher_sft": (mags_dr, {"sft_teachers": {single}, "sft_rounds": {0},
                                             "with_explanations": False}, False),
            "dr_sft_tdpo": (mags_dr, {}, True),
            "dr_no_reflection": (mags_nr, {}, True),
        }
        adapters: dict[str, Path] = {}
        for name, (mags, opts, tdpo) in jobs.items():
            data, sft, trees = datasets(self.settings, mags, encoder, **opts)
            self.say(f"training {name}: {data.summary()}")
            out = run_training(t, model_path=model_path, sft=sft, trees=trees if tdpo else [], pad_id=encoder.pad_id,
                               work_dir=self.out_dir / "jobs" / name, name=name, tdpo=tdpo)
            self.results["training"][name] = {"data": data.summary(), "metrics": out.metrics}
            self.say(f"trained {name} in {out.metrics.get('train_seconds')}s: "
                     + ", ".join(f"{k}={v:.4g}" for k, v in out.metrics.items()
                                 if k.endswith(("loss_first", "loss_last", "reward_accuracy"))))
            adapters[name] = out.adapter_dir
            if name == "dr_sft_tdpo":
                adapters["dr_sft"] = out.stages["sft"]
        self.results["single_teacher"] = single
        return adapters

    # ---- 3. evaluation ---------------------------------------------------------------------------------------
    def _evaluate(self, url: str, adapters: dict[str, Path]) -> None:
        from ray_jobs.evaluate.evaluator import evaluate, golden_items
        from services.registry import AdapterRegistry
        from services.service_client import ServiceClient
        from services.student.model_prep import base_model_id, resolve_base_model

        model_path = resolve_base_model(self.settings, self.say)
        base_id = base_model_id(model_path)
        registry = AdapterRegistry.from_settings(self.settings, base_id=base_id, model_path=model_path)
        models = {"none": base_id}
        for name in VARIANTS:
            if name in adapters:
                models[name] = registry.publish(adapters[name], label=f"exp-{name}-{int(time.time())}").name
        cfg = self.settings.training.eval
        items = golden_items(self.settings.task("default"))
        set_id = f"builtin:arithmetic:{len(items)}"
        client = ServiceClient(self.settings, url)
        for name, model in models.items():
            self.say(f"evaluating {name} ({model}) on {len(items)} held-out questions")
            r = asyncio.run(evaluate(client, model, items, cfg, set_id))
            self.results["variants"][name] = {"label": VARIANTS[name], **r.as_dict()}
            self.say(f"  {name}: accuracy {r.accuracy:.1%}, tokens/query {r.mean_total_tokens:.1f} "
                     f"(completion {r.mean_completion_tokens:.1f}) in {r.seconds:.0f}s")
