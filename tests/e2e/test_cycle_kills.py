"""A training cycle killed on entering each phase after training leaves the registry, the alias and the jobs table
consistent, and the next cycle runs; on the production shape: Postgres, adapters in S3, auth on.

One service on a real PostgreSQL server (its store, jobs and registry), publishing adapter versions to an S3
protocol server (moto) and serving them from its replica cache, with client keys and an admin key. The service's
own scheduler starts each cycle (POST /admin/train), as in production; the cycle's test hook
(`DISTILLERY_CYCLE_PAUSE_FILE`) stops it on entering the phase named in a file, where the test kills its process
group with SIGKILL. Training is one SFT step and the gate promotes any candidate that is not worse: this file is
about what a kill leaves behind, not about learning (tests/e2e/test_training_loop.py is).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pyarrow import fs

from services.store.db import Database
from services.store.mags import MagStore
from tests.conftest import Service, start_service, stop_service
from tests.e2e.test_training_loop import adapters, job, served_adapter, wait_job
from tests.http_servers import wait_for
from tests.postgres_server import fresh_database
from tests.ray_jobs.mags import one_step, poisoned_mags

pytestmark = pytest.mark.e2e

KILL_ENV = {
    "DISTILLERY_CAPTURE__ENABLED": "false",
    "DISTILLERY_TRAINING__ENABLED": "false",
    "DISTILLERY_TRAINING__MIN_MAGS": "4",
    "DISTILLERY_TRAINING__MAX_PROMPT_TOKENS": "256",
    "DISTILLERY_TRAINING__MAX_COMPLETION_TOKENS": "64",
    "DISTILLERY_TRAINING__SFT__BATCH_SIZE": "4",
    "DISTILLERY_TRAINING__SFT__MAX_STEPS": "1",
    "DISTILLERY_TRAINING__TDPO__ENABLED": "false",
    "DISTILLERY_TRAINING__EVAL__MAX_TOKENS": "16",
    "DISTILLERY_TRAINING__GATE__MIN_ACCURACY_GAIN": "0",
    "DISTILLERY_TRAINING__GATE__MAX_TOKENS_INCREASE": "10",
    "DISTILLERY_SERVER__API_KEYS": '["sk-kills-client"]',
    "DISTILLERY_SERVER__ADMIN_KEY": "sk-kills-admin",
    "DISTILLERY_STORAGE__ADAPTERS_URL": "s3://adapters/prod",
}


def bucket(endpoint: str) -> fs.S3FileSystem:
    return fs.S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http", region="us-east-1",
                           allow_bucket_creation=True)


@pytest.fixture(scope="module")
def service(model_dir: str, tmp_path_factory: pytest.TempPathFactory, postgres: str, s3_endpoint: str
            ) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("kills")
    db_url = fresh_database(postgres)
    db = Database(db_url)
    db.create_all()
    bucket(s3_endpoint).create_dir("adapters")
    poisoned_mags(MagStore(db), 6)  # usable MAGs, cheap to make: what they teach does not matter here
    golden = data_dir / "golden.jsonl"
    golden.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n"
                              for p in one_step("eval", 4)))
    env = {**KILL_ENV, "DISTILLERY_CYCLE_PAUSE_FILE": str(data_dir / "pause-at"), "DISTILLERY_DATABASE_URL": db_url,
           "DISTILLERY_STORAGE__S3_ENDPOINT_URL": s3_endpoint,
           "DISTILLERY_TASKS": json.dumps([{"name": "default", "answer_type": "number", "eval": {
               "holdout": 0, "golden": str(golden), "golden_n": 4, "tolerance": 1.0}}])}
    svc = start_service(model_dir, data_dir, env)
    svc.s3 = bucket(s3_endpoint)  # type: ignore[attr-defined]
    try:
        yield svc
    finally:
        stop_service(svc)


def versions(svc: Service) -> dict[str, dict]:
    return {a["version"]: a for a in adapters(svc)["adapters"]}


def stored(svc: Service) -> set[str]:
    """The versions with files in the object store."""
    found = svc.s3.get_file_info(fs.FileSelector("adapters/prod", allow_not_found=True))  # type: ignore[attr-defined]
    return {Path(f.path).name for f in found if f.type == fs.FileType.Directory}


def train(svc: Service) -> int:
    assert httpx.post(f"{svc.url}/admin/train", timeout=60).status_code == 401  # the admin key, not a client's
    r = httpx.post(f"{svc.url}/admin/train", timeout=60, headers={"Authorization": "Bearer sk-kills-client"})
    assert r.status_code == 401
    r = httpx.post(f"{svc.url}/admin/train", timeout=60, headers=svc.admin_headers())
    assert r.status_code == 202, r.text
    return int(r.json()["id"])


@pytest.mark.parametrize("phase", ["publishing", "evaluating", "promoting"])
def test_a_cycle_killed_on_entering_a_phase_leaves_everything_consistent(service: Service, phase: str) -> None:
    pause = service.data_dir / "pause-at"
    pause.write_text(phase)
    before, served_before = versions(service), served_adapter(service)
    job_id = train(service)
    log = Path(service.data_dir / "jobs" / f"job-{job_id}" / "job.log")
    wait_for(lambda: log.is_file() and f"paused on entering {phase}" in log.read_text(), timeout=600, every=2,
             what=f"job {job_id} to stop on entering {phase}")
    os.killpg(job(service, job_id)["pid"], signal.SIGKILL)
    pause.unlink()

    failed = wait_job(service, job_id, timeout=120)
    assert (failed["status"], failed["outcome"], failed["phase"]) == ("failed", "failed", phase)
    assert "SIGKILL" in failed["error"]
    after = versions(service)
    new = sorted(set(after) - set(before))
    if phase == "publishing":  # killed before the copy: nothing registered, no half-written folder
        assert new == [] and failed["candidate"] is None
    else:  # published, never promoted; the job names the version it left
        assert new == [failed["candidate"]] and after[new[0]]["status"] == "registered"
        assert after[new[0]]["lineage"]["job"] == job_id
        assert ("eval" in after[new[0]]["metrics"]) == (phase == "promoting")  # evaluated only before promoting
    assert stored(service) == set(after)  # nothing half-written in the object store
    assert all(after[v]["status"] == before[v]["status"] for v in before)
    assert adapters(service)["promoted"] is None  # the base model: nothing was ever promoted
    assert served_adapter(service) == served_before


def test_the_next_cycle_runs_and_promotes_after_the_kills(service: Service) -> None:
    before = versions(service)
    for path in ("/admin/jobs", "/admin/distillation"):  # the operator's routes are the admin key's
        assert httpx.get(f"{service.url}{path}", timeout=30).status_code == 401
        assert httpx.get(f"{service.url}{path}", timeout=30, headers=service.admin_headers()).status_code == 200
    jobs = httpx.get(f"{service.url}/admin/jobs", timeout=30, headers=service.admin_headers()).json()["data"]
    assert [j["outcome"] for j in jobs[:3]] == ["failed"] * 3  # the three killed cycles, newest first
    done = wait_job(service, train(service), timeout=600)  # the killed cycles released the one-job lock
    assert done["status"] == "succeeded" and done["outcome"] == "promoted", (done["error"], done["reason"])
    numbers = [int(v.rsplit("@v", 1)[1]) for v in before]
    assert done["candidate"] == f"student@v{max(numbers) + 1}"  # the numbers the killed cycles took stay theirs
    assert adapters(service)["promoted"] == done["candidate"]
    assert served_adapter(service) == done["candidate"]  # fetched from the object store into the replica's cache
    assert (service.data_dir / "adapter-cache" / done["candidate"]).is_dir()
    assert stored(service) == set(versions(service))
