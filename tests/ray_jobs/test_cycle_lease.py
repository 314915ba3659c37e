"""The cycle's fenced lease, on a real store (SQLite and Postgres) and the real gateway app: a cycle that stalled
and was reaped by the scheduler, with a second cycle started since, can neither publish nor promote when it wakes;
the cycle that holds the lease can, and the stale one's job says it lost its lease."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import update

from ray_jobs.cycle import PAUSE_FILE_ENV, Cycle, run_job
from services.config import Settings
from services.registry.validate import base_weight_shapes
from services.scheduler.scheduler import TrainingScheduler
from services.store.db import Database
from services.store.debates import utcnow
from services.store.jobs import JobRow, JobStore, LeaseLost
from services.store.mags import MagStore
from tests.gateway_app import Gateway, serve_gateway
from tests.http_servers import wait_for


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        from tests.postgres_server import fresh_database

        return fresh_database(request.getfixturevalue("postgres"))
    return f"sqlite:///{tmp_path / 'distillery.db'}"


@pytest.fixture
def gateway(db_url: str, model_dir: str, tmp_path: Path) -> Iterator[Gateway]:
    settings = Settings(data_dir=tmp_path, database_url=db_url, student={"model": model_dir},
                        training={"enabled": False})
    with serve_gateway(settings, model_dir) as g:
        yield g


def untrained_adapter(model_dir: str, out: Path) -> Path:
    """A real LoRA adapter for the base model as PEFT starts one (B = 0), on layer 0's q_proj."""
    module = "model.layers.0.self_attn.q_proj"
    out_f, in_f = base_weight_shapes(model_dir)[f"{module}.weight"]
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                         "target_modules": ["q_proj"]}))
    save_file({f"base_model.model.{module}.lora_A.weight": torch.randn(4, in_f) * 0.01,
               f"base_model.model.{module}.lora_B.weight": torch.zeros(out_f, 4)},
              str(out / "adapter_model.safetensors"))
    return out


def stall(jobs: JobStore, job_id: int) -> None:
    """The job's process stops heartbeating for longer than the scheduler waits (a long pause, a partition)."""
    with jobs.db.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=600)))


def reap_and_take_over(gateway: Gateway, jobs: JobStore, stale: int) -> int:
    """The service's scheduler reaps the stalled job; a second cycle starts and holds the next fence."""
    scheduler = TrainingScheduler(gateway.settings, jobs, MagStore(jobs.db), url=gateway.url, ready=lambda: True)
    stall(jobs, stale)
    scheduler.poll()
    reaped = jobs.get(stale)
    assert reaped is not None and reaped.status == "failed" and "no heartbeat" in (reaped.error or "")
    second = jobs.start("schedule")
    assert jobs.lease(second).fence == jobs.lease(stale).fence + 1  # type: ignore[operator]
    return second


def test_a_reaped_cycle_cannot_publish_or_promote_and_the_holder_can(gateway: Gateway, model_dir: str,
                                                                      tmp_path: Path, monkeypatch) -> None:
    jobs = JobStore(Database(gateway.settings.db_url))
    registry = gateway.registry
    adapter = untrained_adapter(model_dir, tmp_path / "trained")
    first_id = jobs.start("api")
    first = Cycle(gateway.settings, first_id, url=gateway.url, progress=lambda m: None)

    # The first cycle stalls on entering `publishing` (the test hook); meanwhile it is reaped and replaced.
    pause = tmp_path / "pause-at"
    pause.write_text("publishing")
    monkeypatch.setenv(PAUSE_FILE_ENV, str(pause))
    outcome: dict[str, BaseException | object] = {}

    def publish() -> None:
        try:
            outcome["published"] = first.publish(adapter, metrics={}, lineage={"job": first_id})
        except BaseException as e:
            outcome["error"] = e

    stalled = threading.Thread(target=publish)
    stalled.start()
    wait_for(lambda: jobs.get(first_id).phase == "publishing", timeout=30, what="the first cycle to pause")  # type: ignore[union-attr]
    second_id = reap_and_take_over(gateway, jobs, first_id)
    pause.unlink()  # it wakes up
    stalled.join(timeout=30)
    assert isinstance(outcome.get("error"), LeaseLost) and "published" not in outcome
    assert registry.list() == []  # nothing published

    second = Cycle(gateway.settings, second_id, url=gateway.url, progress=lambda m: None)
    candidate = second.publish(adapter, metrics={}, lineage={"job": second_id})
    assert [v.name for v in registry.list()] == [candidate.name]
    with pytest.raises(LeaseLost, match="failed"):
        first.promote(candidate.name, "the stale cycle's gate")
    assert registry.promoted() is None  # nothing promoted
    second.promote(candidate.name, "the holder's gate")
    promoted = registry.promoted()
    assert promoted is not None and promoted.name == candidate.name
    assert jobs.get(second_id).status == "running" and jobs.get(first_id).candidate is None  # type: ignore[union-attr]


def test_a_cycle_that_wakes_without_its_lease_stops_and_its_job_says_so(gateway: Gateway) -> None:
    jobs = JobStore(Database(gateway.settings.db_url))
    first_id = jobs.start("api")
    second_id = reap_and_take_over(gateway, jobs, first_id)
    with pytest.raises(LeaseLost):
        run_job(gateway.settings, first_id, url=gateway.url, progress=lambda m: None)
    lost = jobs.get(first_id)
    assert lost is not None and (lost.status, lost.outcome) == ("failed", "lost_lease")
    assert "no heartbeat" in (lost.error or "") and "lost its lease" in (lost.reason or "")
    assert lost.phase == "starting"  # it did not get to enter a phase
    assert jobs.running().id == second_id  # type: ignore[union-attr]  # the holder is untouched
    assert gateway.registry.list() == [] and gateway.registry.promoted() is None
