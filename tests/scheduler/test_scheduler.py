"""The periodic trigger and the job process's lifecycle, with real child processes and a real SQLite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from services.config import Settings
from services.scheduler.scheduler import TrainingScheduler
from services.store.controls import Controls
from services.store.db import Database
from services.store.debates import DebateRow, utcnow
from services.store.jobs import JobRow, JobRunning, JobStore
from services.store.mags import MagStore


def usable_mag(store: MagStore) -> None:
    did = store.start_debate(source="test", question="q", answer_kind="number", gold="1", gold_source="dataset",
                             prompt_version="t", agents=[], status="running")
    store.update_debate(did, status="done", usable=True, finished_at=utcnow())


def child(code: str):  # a real process standing in for `python -m ray_jobs.cycle`
    def launch(job_id: int, url: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    return launch


@pytest.fixture
def parts(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'd.db'}")
    db.create_all()
    settings = Settings(data_dir=tmp_path, training={"every_mags": 3, "every_minutes": 60})
    return settings, JobStore(db), MagStore(db)


def test_due_on_fresh_mags_or_time_never_without_fresh_data(parts) -> None:
    settings, jobs, mags = parts
    sched = TrainingScheduler(settings, jobs, mags, url="http://x", ready=lambda: True, launcher=child("pass"))
    assert sched.due() is None  # no data at all
    usable_mag(mags)
    assert "minutes" in sched.due()  # type: ignore[operator]  # never trained: the time trigger fires
    job = sched.trigger("schedule")
    assert sched.due() is None  # one is running
    jobs.finish(job.id, status="succeeded", outcome="promoted")
    assert sched.due() is None  # nothing fresh since it started
    for _ in range(3):
        usable_mag(mags)
    assert "3 fresh usable MAGs" in sched.due()  # type: ignore[operator]
    jobs.finish(sched.trigger("schedule").id, status="succeeded", outcome="skipped")
    usable_mag(mags)
    assert sched.due() is None  # 1 fresh MAG, and the last cycle started less than 60 minutes ago
    with jobs.db.session() as s:  # an hour passes: the last cycle and the MAGs it saw move back in time
        s.execute(update(JobRow).values(started_at=utcnow() - timedelta(minutes=61)))
        s.execute(update(DebateRow).where(DebateRow.id <= 4).values(finished_at=utcnow() - timedelta(hours=2)))
    assert "60 minutes since the last cycle, 1 fresh" in sched.due()  # type: ignore[operator]


def test_a_job_process_that_dies_is_recorded_failed_and_frees_the_slot(parts) -> None:
    settings, jobs, mags = parts
    sched = TrainingScheduler(settings, jobs, mags, url="http://x", ready=lambda: True,
                              launcher=child("import sys; sys.exit(3)"))
    job = sched.trigger("api")
    assert jobs.get(job.id).pid == sched.procs[job.id].pid  # type: ignore[union-attr]
    with pytest.raises(JobRunning):
        sched.trigger("api")
    sched.procs[job.id].wait()
    sched.poll()
    ended = jobs.get(job.id)
    assert ended.status == "failed" and "exit code 3" in ended.error  # type: ignore[operator, union-attr]
    assert jobs.running() is None


def test_cancel_kills_the_job_process(parts) -> None:
    settings, jobs, mags = parts
    sched = TrainingScheduler(settings, jobs, mags, url="http://x", ready=lambda: True,
                              launcher=child("import time; time.sleep(60)"))
    job = sched.trigger("api")
    proc = sched.procs[job.id]
    assert sched.cancel(job.id)
    assert proc.returncode is not None and proc.returncode < 0
    assert jobs.get(job.id).error == "cancelled by an operator"  # type: ignore[union-attr]
    assert not sched.cancel(job.id)  # nothing left to cancel


def test_jobs_store_sees_the_debate_rows(parts) -> None:
    _, _, mags = parts
    usable_mag(mags)
    with mags.db.session() as s:
        s.execute(update(DebateRow).values(finished_at=utcnow() - timedelta(hours=1)))
    assert mags.count_usable_since(utcnow() - timedelta(minutes=5)) == 0
    assert mags.count_usable_since(None) == 1


def test_cron_trigger_starts_nothing_without_fresh_mags(tmp_path) -> None:
    """`distillery train --once --if-due` is what the chart's RayCronJob runs: an idle service is not retrained."""
    env = {**os.environ, "DISTILLERY_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "services.cli", "train", "--once", "--if-due"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "nothing to train on, no job started" in out.stdout
    db = Database(f"sqlite:///{tmp_path / 'distillery.db'}")
    assert JobStore(db).list(10) == []


def test_a_paused_loop_starts_no_cycle_by_itself(parts) -> None:
    settings, jobs, mags = parts
    controls = Controls(jobs.db, cache_s=0)
    sched = TrainingScheduler(settings, jobs, mags, url="http://x", ready=lambda: True, launcher=child("pass"),
                              controls=controls)
    for _ in range(3):
        usable_mag(mags)
    controls.pause("maintenance")
    sched.poll()
    assert jobs.list(10) == []  # due, but paused
    controls.resume()
    sched.poll()
    assert [j.trigger for j in jobs.list(10)] == ["schedule"]


def test_a_due_cycle_waits_for_the_service_to_be_ready(parts) -> None:
    """Just after a restart the student engine is still starting: a cycle started then would fail at once."""
    settings, jobs, mags = parts
    ready = False
    sched = TrainingScheduler(settings, jobs, mags, url="http://x", ready=lambda: ready, launcher=child("pass"))
    for _ in range(3):
        usable_mag(mags)
    assert sched.due() is not None
    sched.poll()
    assert jobs.list(10) == []  # due, but the service is not ready
    ready = True
    sched.poll()
    assert [j.trigger for j in jobs.list(10)] == ["schedule"]


def test_a_cycle_runs_with_the_services_settings_not_the_nodes_environment(parts, monkeypatch) -> None:
    """On a joined cluster the scheduler's process has its raylet's environment, not the service's: the cycle gets
    the service's own settings (secrets too) in a file only its owner reads, removed once the cycle ended."""
    service, jobs, mags = parts
    db_path = service.data_dir / "d.db"
    settings = Settings(data_dir=service.data_dir, database_url=f"sqlite:///{db_path}",
                        server={"admin_key": "sk-admin-1"}, training={"num_workers": 2, "sft": {"max_steps": 3}})
    monkeypatch.setenv("DISTILLERY_DATABASE_URL", "sqlite:////nowhere/else.db")  # the node's stale view
    monkeypatch.setenv("DISTILLERY_TRAINING__NUM_WORKERS", "7")
    monkeypatch.setenv("DISTILLERY_CYCLE_PAUSE_FILE", "/tmp/kept")  # not a setting: passed on
    code = ("import json, os; from services.config import Settings; s = Settings(); "
            "print(json.dumps([s.database_url, s.training.num_workers, s.training.sft.max_steps, "
            "s.server.admin_key.get_secret_value(), os.environ.get('DISTILLERY_CYCLE_PAUSE_FILE')]))")
    out: dict[str, Path] = {}

    def launch(job_id: int, url: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        out["log"] = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as f:
            return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=f, start_new_session=True)

    sched = TrainingScheduler(settings, jobs, mags, url="http://x", ready=lambda: True, launcher=launch)
    job = sched.trigger("api")
    config = sched.settings_path(job.id)
    assert config.is_file() and config.stat().st_mode & 0o777 == 0o600
    assert sched.procs[job.id].wait(timeout=60) == 0
    assert json.loads(out["log"].read_text()) == [f"sqlite:///{db_path}", 2, 3, "sk-admin-1", "/tmp/kept"]
    sched.poll()
    assert not config.exists()
