"""Prometheus metrics of the training loop (`distillery_training_*`, `distillery_eval_*`, promotions), read from
the store at scrape time: right after a restart, and the same whichever process answers the scrape."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from services.registry import AdapterRegistry
from services.scheduler.watch import last_promotion, live_accuracy
from services.store.controls import Controls
from services.store.jobs import JobOutcome, JobStatus, JobStore
from services.store.mags import MagStore
from services.tasks.answers import AnswerSpec

OUTCOMES = (JobOutcome.PROMOTED, JobOutcome.NOT_PROMOTED, JobOutcome.SKIPPED, JobOutcome.FAILED)


class TrainingMetrics:
    def __init__(self, jobs: JobStore, registry: AdapterRegistry, mags: MagStore | None = None,
                 controls: Controls | None = None, tasks: set[str] | None = None,
                 spec_of: Callable[[str], AnswerSpec] | None = None) -> None:
        """`tasks`: the configured task names, the only values the `task` label takes (bounded series).
        `spec_of`: a task's answer spec, to read labelled replies per task (live accuracy)."""
        self.jobs, self.adapters, self.mags, self.controls = jobs, registry, mags, controls
        self.spec_of = spec_of
        self.tasks = tasks or set()
        r = self.registry = CollectorRegistry()
        self.runs = Gauge("distillery_training_runs", "Training cycles ever finished, by outcome.", ["outcome"],
                          registry=r)
        self.running = Gauge("distillery_training_running", "1 while a training cycle runs.", registry=r)
        self.last_success = Gauge("distillery_training_last_success_timestamp_seconds",
                                  "When the last cycle that ended without error finished (Unix time).", registry=r)
        self.data = Gauge("distillery_training_data", "Data of the last cycle that trained: MAGs, tree nodes, "
                          "pairs, SFT examples.", ["kind"], registry=r)
        self.loss = Gauge("distillery_training_loss", "Final train loss of the last cycle, by stage.", ["stage"],
                          registry=r)
        self.accuracy = Gauge("distillery_eval_accuracy", "Held-out accuracy by adapter version.", ["version"],
                              registry=r)
        self.tokens = Gauge("distillery_eval_tokens_per_query", "Mean tokens per evaluation query by adapter "
                            "version.", ["version", "type"], registry=r)
        self.task_accuracy = Gauge("distillery_eval_task_accuracy", "Accuracy on a task's evaluation slice (its "
                                   "held-out traffic and golden set) by adapter version.", ["version", "task"],
                                   registry=r)
        self.task_tokens = Gauge("distillery_eval_task_tokens_per_query", "Mean total tokens per query on a task's "
                                 "evaluation slice by adapter version.", ["version", "task"], registry=r)
        self.events = Gauge("distillery_adapter_promotions", "Promotion log entries: promotions, rollbacks and "
                            "automatic rollbacks.", ["kind"], registry=r)
        self.live_accuracy = Gauge("distillery_live_accuracy", "Accuracy on client-labelled requests (POST "
                                   "/v1/feedback): the promoted version since its promotion (role=promoted) and "
                                   "what served before it (role=previous).", ["role", "version"], registry=r)
        self.paused = Gauge("distillery_distillation_paused", "1 while an operator has paused distillation "
                            "(no capture, no new debates, no scheduled training).", registry=r)
        self.live_labels = Gauge("distillery_live_labels", "Client-labelled requests behind distillery_live_accuracy.",
                                 ["role", "version"], registry=r)

    def collect(self) -> None:
        if self.controls is not None:
            self.paused.set(1 if self.controls.state()["paused"] else 0)
        counts = self.jobs.counts()
        for outcome in OUTCOMES:
            self.runs.labels(outcome).set(counts.get(outcome, 0))
        self.running.set(1 if self.jobs.running() else 0)
        last_ok = self.jobs.last(status=JobStatus.SUCCEEDED)
        if last_ok is not None and last_ok.finished_at is not None:
            self.last_success.set(last_ok.finished_at.replace(tzinfo=UTC).timestamp())  # stored naive UTC
        trained = next((j for j in self.jobs.list(50) if j.metrics.get("train")), None)
        if trained is not None:
            d, m = trained.data, trained.metrics["train"]
            for kind, key in (("mags", "mags"), ("trees", "tree_nodes"), ("pairs", "tree_pairs"),
                              ("sft_examples", "sft_examples")):
                self.data.labels(kind).set(d.get(key, 0))
            for stage in ("sft", "tdpo"):
                if f"{stage}_loss_last" in m:
                    self.loss.labels(stage).set(m[f"{stage}_loss_last"])
        for v in self.adapters.list():
            ev = v.metrics.get("eval")
            if ev:
                self.accuracy.labels(v.name).set(ev["accuracy"])
                self.tokens.labels(v.name, "total").set(ev["mean_total_tokens"])
                self.tokens.labels(v.name, "completion").set(ev["mean_completion_tokens"])
                for task, te in ev.get("tasks", {}).items():
                    if task in self.tasks:
                        self.task_accuracy.labels(v.name, task).set(te["accuracy"])
                        self.task_tokens.labels(v.name, task).set(te["mean_total_tokens"])
        history = self.adapters.history()
        self.events.labels("promote").set(sum(h["kind"] == "promote" for h in history))
        self.events.labels("rollback").set(sum(h["kind"] == "rollback" for h in history))
        self.events.labels("auto_rollback").set(
            sum(h["kind"] == "rollback" and (h["reason"] or "").startswith("auto-rollback") for h in history))
        # Only the promotion now in force has live series: a stale pair would keep an alert firing after a rollback.
        self.live_accuracy.clear()
        self.live_labels.clear()
        current = last_promotion(self.adapters)
        if self.mags is not None and current is not None:
            for role, live in live_accuracy(self.adapters, self.mags, *current, self.spec_of).items():
                self.live_accuracy.labels(role, live.version).set(live.accuracy)
                self.live_labels.labels(role, live.version).set(live.labels)

    def render(self) -> bytes:
        self.collect()
        return generate_latest(self.registry)
