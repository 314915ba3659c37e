"""When to train, and the training job's process: the periodic trigger inside the running service.

A cycle is due every `training.every_minutes` or once `training.every_mags` usable MAGs finished since the last
cycle started (either trigger needs at least one fresh MAG, so an idle service does not retrain on old data), and
only while the service answers `/ready`: a cycle evaluates and promotes through it, so one due while the student
engine is still starting (just after a restart) waits for it instead of failing at once.
Each cycle runs as a child process (`python -m ray_jobs.cycle`) joined to the service's Ray cluster: it can crash
or be killed without touching serving, and it is recorded as failed when it does. The jobs table, not this
object, guarantees that only one runs (a second trigger gets JobRunning).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from services.config import Settings, without_settings_env, write_settings_file
from services.store.controls import Controls
from services.store.debates import utcnow
from services.store.jobs import Job, JobOutcome, JobRunning, JobStatus, JobStore
from services.store.mags import MagStore

log = logging.getLogger(__name__)
STALE_S = 120.0  # a job process heartbeats every 10 s


def launch_cycle(job_id: int, url: str, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ray_jobs.cycle", "--job-id", str(job_id), "--url", url],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def fresh_mags(mags: MagStore, last: Job | None) -> int:
    """Usable MAGs finished since the last cycle (`last`) started: no cycle is due without one."""
    return mags.count_usable_since(last.started_at if last else None)


class TrainingScheduler:
    def __init__(self, settings: Settings, jobs: JobStore, mags: MagStore, *, url: str, ready: Callable[[], bool],
                 ray_address: str | None = None, controls: Controls | None = None,
                 launcher: Callable[[int, str, Path, dict[str, str]], subprocess.Popen[bytes]] = launch_cycle) -> None:
        """`ready`: whether the service at `url` serves (its `/ready`), checked before a periodic cycle starts."""
        self.settings, self.cfg = settings, settings.training
        self.jobs, self.mags, self.url, self.ready = jobs, mags, url, ready
        self.ray_address, self.controls = ray_address, controls
        self.launcher = launcher
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def log_path(self, job_id: int) -> Path:
        return self.settings.jobs_dir / f"job-{job_id}" / "job.log"

    def settings_path(self, job_id: int) -> Path:
        """The service's settings for cycle `job_id` (secrets included, 0600; removed once the cycle ended)."""
        return self.settings.jobs_dir / f"job-{job_id}" / "settings.yaml"

    def due(self) -> str | None:
        """Why a cycle should start now, or None."""
        if self.jobs.running() is not None:
            return None
        last = self.jobs.last()
        fresh = fresh_mags(self.mags, last)
        if fresh == 0:
            return None
        if self.cfg.every_mags is not None and fresh >= self.cfg.every_mags:
            return f"{fresh} fresh usable MAGs (every_mags={self.cfg.every_mags})"
        if self.cfg.every_minutes is not None and (
                last is None or utcnow() - last.started_at >= timedelta(minutes=self.cfg.every_minutes)):
            return f"{self.cfg.every_minutes:g} minutes since the last cycle, {fresh} fresh usable MAGs"
        return None

    def trigger(self, trigger: str) -> Job:
        """Start a cycle now (JobRunning if one runs)."""
        job_id = self.jobs.start(trigger)
        try:
            config = write_settings_file(self.settings, self.settings_path(job_id))
            env = {**without_settings_env(dict(os.environ)), "DISTILLERY_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
            if self.ray_address:
                env["RAY_ADDRESS"] = self.ray_address
            proc = self.launcher(job_id, self.url, self.log_path(job_id), env)
        except Exception as e:
            self.jobs.finish(job_id, status=JobStatus.FAILED, outcome=JobOutcome.FAILED,
                             error=f"could not start: {e!r}")
            raise
        self.procs[job_id] = proc
        self.jobs.set(job_id, pid=proc.pid)
        log.info("training job %d started (%s), pid %d, log %s", job_id, trigger, proc.pid, self.log_path(job_id))
        job = self.jobs.get(job_id)
        assert job is not None
        return job

    def request(self, trigger: str) -> dict[str, Any]:
        """The admin API's answer: {"job": the started job} or {"conflict": why not, "running": its id}."""
        try:
            return {"job": self.trigger(trigger).as_dict()}
        except JobRunning as e:
            return {"conflict": str(e), "running": e.job_id}

    def cancel(self, job_id: int) -> bool:
        proc = self.procs.get(job_id)
        if proc is None or proc.poll() is not None:
            return False
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.jobs.finish(job_id, status=JobStatus.FAILED, outcome=JobOutcome.FAILED, error="cancelled by an operator")
        return True

    def poll(self) -> None:
        """Record the end of child processes, fail dead or overdue jobs, and start a due cycle."""
        for job_id, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[job_id]
            self.settings_path(job_id).unlink(missing_ok=True)
            # A cycle records its own outcome; if the row is still open, the process died without doing so.
            self.jobs.finish(job_id, status=JobStatus.FAILED, outcome=JobOutcome.FAILED,
                             error=f"job process exited with {_describe(code)}; log: {self.log_path(job_id)}")
        for job_id in self.jobs.reap(STALE_S, self.cfg.timeout_minutes * 60):
            proc = self.procs.pop(job_id, None)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            self.settings_path(job_id).unlink(missing_ok=True)
            log.error("training job %d recorded as failed (dead, stalled or overdue): it lost its lease, so it "
                      "can no longer publish or promote", job_id)
        paused = self.controls is not None and self.controls.paused()
        if self.cfg.enabled and not paused and (reason := self.due()) is not None:
            if not self.ready():
                log.info("training cycle due (%s), waiting for the service to be ready", reason)
                return
            log.info("training cycle due: %s", reason)
            self.trigger("schedule")


def _describe(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
