"""The training loop's gauges: per-task evaluation series only for configured tasks (real registry and store)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from services.registry import AdapterRegistry
from services.scheduler.metrics import TrainingMetrics
from services.store.db import Database
from services.store.jobs import JobStore
from tests.lora_factory import train_codeword_adapter


def task_eval(accuracy: float, tokens: float) -> dict:
    return {"accuracy": accuracy, "mean_total_tokens": tokens, "n": 10, "correct": int(accuracy * 10),
            "weight": 0.5}


def test_task_gauges_are_bounded_to_the_configured_tasks(tmp_path, model_dir) -> None:
    db = Database(f"sqlite:///{tmp_path / 'd.db'}")
    db.create_all()
    reg = AdapterRegistry(db, tmp_path / "adapters", served_name="student", base_model="base",
                          base_model_dir=Path(model_dir), max_rank=16)
    adapter = train_codeword_adapter(model_dir, tmp_path / "a", "ALPHA-7", steps=1)
    ev = {"accuracy": 0.7, "mean_total_tokens": 120.0, "mean_completion_tokens": 20.0,
          "tasks": {"a": task_eval(0.9, 100.0), "zzz": task_eval(0.1, 300.0)}}  # zzz: not configured (any more)
    v1 = reg.publish(adapter, metrics={"eval": ev})
    reg.publish(adapter, metrics={"eval": {k: v for k, v in ev.items() if k != "tasks"}})  # before task profiles

    def series(tasks: set[str] | None) -> dict[tuple[str, str, str], float]:
        text = TrainingMetrics(JobStore(db), reg, tasks=tasks).render().decode()
        return {(s.name, s.labels["version"], s.labels["task"]): s.value
                for fam in text_string_to_metric_families(text) if fam.name.startswith("distillery_eval_task_")
                for s in fam.samples}

    assert series({"a", "b"}) == {
        ("distillery_eval_task_accuracy", v1.name, "a"): 0.9,
        ("distillery_eval_task_tokens_per_query", v1.name, "a"): 100.0,
    }
    assert series(None) == {}  # no configured tasks: no task series at all
    overall = TrainingMetrics(JobStore(db), reg, tasks={"a"}).render().decode()
    assert f'distillery_eval_accuracy{{version="{v1.name}"}} 0.7' in overall
