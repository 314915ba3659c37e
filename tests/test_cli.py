"""`distillery adapters | distillation | config | jobs | teacher serve` run as the user runs them.

`adapters` and `distillation` talk to the service's admin API: here the real gateway app (`build_app`) on a
real HTTP server on 127.0.0.1, over a real registry, store and `StudentEngine` in a temporary data dir, with only
vLLM's engine replaced by one that records the adapters it is given. `jobs` and `config` read a real SQLite
store and the environment; `teacher serve` runs as its own process. (`teachers check`: tests/teachers/test_check.py;
`mags`, `tasks`, `debate`: tests/debate/test_batch_cli.py; `db copy`: tests/store/test_migrate.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli import main
from services.config import Settings, StudentConfig
from services.debate import prompts
from services.store.controls import Controls
from services.store.db import Database
from services.store.jobs import JobStore
from services.tasks.answers import read_answer, same_answer
from services.tasks.arithmetic import generate
from tests.conftest import free_port
from tests.gateway_app import Gateway, serve_gateway
from tests.http_servers import wait_for

ADMIN_KEY = "sk-admin-cli-test-0123456789"


@pytest.fixture
def service(tmp_path: Path, model_dir: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """The service's API in this process; the CLI's environment points at its data dir and admin key."""
    monkeypatch.setenv("DISTILLERY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DISTILLERY_SERVER__ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("DISTILLERY_CONFIG", raising=False)
    with serve_gateway(Settings(), model_dir) as gateway:
        yield gateway


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """`distillery ARGV`: what it printed; SystemExit (an error) propagates."""
    main(list(argv))
    return capsys.readouterr().out


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """`distillery ARGV` that must exit with an error: the message."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    capsys.readouterr()
    return str(exc.value.code)


# ---- adapters --------------------------------------------------------------------------------------------------
def test_adapters_load_promote_roll_back_and_unload_through_the_admin_api(service, codeword_adapters, capsys):
    url = ["--url", service.url]
    assert run(capsys, "adapters", "list", *url).splitlines() == [
        f"`student` serves: {service.base_id}   (base model: {service.base_id})", "no adapters registered"]

    alpha, bravo = codeword_adapters["ALPHA-7"], codeword_adapters["BRAVO-3"]
    loaded = run(capsys, "adapters", "load", str(alpha), "--name", "alpha", *url).strip()
    v1 = service.registry.get("student@v1")
    assert loaded.startswith("registered and loaded student@v1 (") and loaded.endswith(f"s) from {v1.path}")
    assert v1.label == "alpha" and Path(v1.path).is_dir() and Path(v1.path) != alpha  # copied into the registry
    run(capsys, "adapters", "load", str(bravo), *url)
    assert service.registry.get("student@v2").label == bravo.name  # the folder's name by default
    assert service.vllm.added == ["student@v1", "student@v2"]

    promoted = run(capsys, "adapters", "promote", "student@v1", "--reason", "first", *url)
    assert promoted.startswith("promoted: `student` now serves student@v1 (swap ")
    run(capsys, "adapters", "promote", "student@v2", *url)
    assert service.registry.promoted().name == "student@v2"

    listing = json.loads(run(capsys, "adapters", "list", "--json", *url))
    assert listing["serving"] == listing["promoted"] == "student@v2" and listing["base_model"] == service.base_id
    by_version = {a["version"]: a for a in listing["adapters"]}
    assert set(by_version) == {"student@v1", "student@v2"} and all(a["loaded"] for a in by_version.values())
    table = run(capsys, "adapters", "list", *url).splitlines()
    assert table[0] == f"`student` serves: student@v2   (base model: {service.base_id})"
    assert table[1].split() == ["VERSION", "LABEL", "STATUS", "LOADED", "RANK", "CREATED", "PATH"]
    rows = {line.split()[0]: line.split() for line in table[3:]}
    assert rows["student@v1"][:3] == ["student@v1", "alpha", by_version["student@v1"]["status"]]
    assert rows["student@v2"][2:4] == [by_version["student@v2"]["status"], "yes"]
    assert rows["student@v2"][-1] == service.registry.get("student@v2").path

    rolled = run(capsys, "adapters", "rollback", "--reason", "worse", *url)
    assert rolled.startswith("rolled back: `student` now serves student@v1 (swap ")
    assert service.registry.promoted().name == "student@v1"
    assert run(capsys, "adapters", "unload", "student@v2", *url).strip() == "unloaded student@v2"
    assert service.vllm.removed == [service.registry.get("student@v2").number]
    # Refusals come back as the service's own message, with its status, and exit non-zero.
    in_use = fails(capsys, "adapters", "unload", "student@v1", *url)
    assert in_use.startswith("error (400): student@v1 is the promoted version behind `student`")
    assert fails(capsys, "adapters", "promote", "student@v9", *url).startswith("error (404): ")
    assert fails(capsys, "adapters", "promote", *url) == "error: `distillery adapters promote` needs a target"
    assert service.registry.promoted().name == "student@v1" and service.vllm.removed == [2]


def test_adapter_commands_need_the_admin_key_and_a_running_service(service, capsys, monkeypatch):
    monkeypatch.setenv("DISTILLERY_SERVER__ADMIN_KEY", "sk-not-the-admin-key")
    assert fails(capsys, "adapters", "list", "--url", service.url) == "error (401): Incorrect admin key provided"
    monkeypatch.delenv("DISTILLERY_SERVER__ADMIN_KEY")
    assert fails(capsys, "adapters", "list", "--url", service.url).startswith("error (401): Missing admin key")
    down = f"http://127.0.0.1:{free_port()}"
    assert fails(capsys, "adapters", "list", "--url", down) == \
        f"error: no Distillery service answers at {down} (is it running?)"


# ---- distillation ------------------------------------------------------------------------------------------------
def test_distillation_pause_and_resume_switch_the_stores_control(service, capsys):
    url = ["--url", service.url]
    controls = Controls(Database(service.settings.db_url))
    assert run(capsys, "distillation", "status", *url).strip() == "distillation is running"
    paused = run(capsys, "distillation", "pause", "--reason", "teacher outage", *url).strip()
    state = controls.state()
    assert state["paused"] and state["reason"] == "teacher outage"
    assert paused == f"distillation is PAUSED since {state['since']} (teacher outage)"
    assert run(capsys, "distillation", "status", *url).strip() == paused
    resumed = run(capsys, "distillation", "resume", *url).strip()
    state = controls.state()
    assert not state["paused"] and resumed == f"distillation is running since {state['since']}"


# ---- jobs --------------------------------------------------------------------------------------------------------
def eval_of(accuracy: float, correct: int, n: int) -> dict[str, Any]:
    return {"accuracy": accuracy, "tasks": {"arithmetic": {"accuracy": accuracy, "correct": correct, "n": n,
                                                           "mean_total_tokens": 41.25, "weight": 1.0}}}


def test_jobs_lists_cycles_and_shows_one_from_the_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILLERY_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DISTILLERY_CONFIG", raising=False)
    assert run(capsys, "jobs").strip() == "no training jobs yet"
    db = Database(Settings().db_url)
    jobs = JobStore(db)
    first = jobs.start("schedule")
    jobs.finish(first, status="succeeded", outcome="promoted", phase="done", candidate="student@v1",
                data={"mags": 12, "tree_pairs": 30},
                metrics={"eval": {"base": eval_of(0.25, 5, 20), "student@v1": eval_of(0.5, 10, 20)}})
    second = jobs.start("cli")
    jobs.finish(second, status="failed", outcome="failed", phase="training", error="out of memory")

    table = run(capsys, "jobs").splitlines()
    assert table[0].split() == ["ID", "STARTED", "TRIGGER", "STATUS", "OUTCOME", "PHASE", "MAGS", "PAIRS",
                                "CANDIDATE", "EVAL", "ACCURACY"]
    newest, older = table[2].split(), table[3].split()
    assert newest[0] == str(second) and newest[2:] == ["cli", "failed", "failed", "training", "-", "-", "-"]
    assert older[0] == str(first)
    assert older[2:] == ["schedule", "succeeded", "promoted", "done", "12", "30", "student@v1", "base=0.250",
                         "student@v1=0.500"]
    # The newest job's evaluation per task (none: it failed) and its error.
    assert table[-1] == f"latest ({second}): out of memory" and "per task" not in "\n".join(table)

    listed = json.loads(run(capsys, "jobs", "--json"))
    assert [j["id"] for j in listed] == [second, first]
    assert listed[1]["metrics"]["eval"]["student@v1"]["accuracy"] == 0.5 and listed[0]["error"] == "out of memory"
    one = json.loads(run(capsys, "jobs", str(first)))
    assert one == listed[1] and one["data"] == {"mags": 12, "tree_pairs": 30}
    assert fails(capsys, "jobs", "999") == "error: no training job 999"
    assert len(json.loads(run(capsys, "jobs", "--json", "--limit", "1"))) == 1

    third = jobs.start("api")
    jobs.finish(third, status="succeeded", outcome="not_promoted", phase="done", reason="gate: not better",
                metrics={"eval": {"student@v2": eval_of(0.4, 8, 20)}})
    table = run(capsys, "jobs").splitlines()
    assert table[table.index(f"job {third} per task:") + 3].split() == ["student@v2", "arithmetic", "0.400", "8/20",
                                                                        "41.2", "1.00"]
    assert table[-1] == f"latest ({third}): gate: not better"


# ---- config ------------------------------------------------------------------------------------------------------
def test_config_prints_the_effective_values_with_secrets_masked(tmp_path, monkeypatch, capsys):
    config = tmp_path / "distillery.yaml"
    config.write_text("debate:\n  max_rounds: 4\nserver:\n  api_keys: [sk-client-secret-123]\n")
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.setenv("DISTILLERY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DISTILLERY_SERVER__PORT", "8123")
    monkeypatch.setenv("DISTILLERY_SERVER__ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("DISTILLERY_DATABASE_URL", "postgresql+psycopg://distillery:db-pass-456@db:5432/distillery")
    out = run(capsys, "config")
    shown = json.loads(out)
    assert shown["data_dir"] == str(tmp_path / "data") and shown["server"]["port"] == 8123  # the environment
    assert shown["debate"]["max_rounds"] == 4  # the file
    assert shown["student"]["max_model_len"] == StudentConfig.model_fields["max_model_len"].default  # a default
    assert shown["server"]["admin_key"] == "**********" and shown["server"]["api_keys"] == ["**********"]
    assert shown["database_url"] == "postgresql+psycopg://distillery:***@db:5432/distillery"
    for secret in (ADMIN_KEY, "sk-client-secret-123", "db-pass-456"):
        assert secret not in out
    monkeypatch.setenv("DISTILLERY_DATABASE_URL", "postgresql+psycopg://distillery@db/d?password=db-pass-789&sslmode=require")
    out = run(capsys, "config")  # a password in the query string (libpq's keyword form) is a secret too
    assert json.loads(out)["database_url"] == "postgresql+psycopg://distillery@db/d?password=**********&sslmode=require"
    assert "db-pass-789" not in out
    monkeypatch.setenv("DISTILLERY_DATABASE_URL", "distillery:db-pass-456 at db")  # no URL: nothing of it shown
    assert json.loads(run(capsys, "config"))["database_url"] == "**********"
    monkeypatch.setenv("DISTILLERY_DEBATE__MAX_ROUNDS", "0")
    assert fails(capsys, "config").startswith("error: invalid configuration: ")


def test_config_masks_every_secret_bearing_setting(tmp_path, monkeypatch, capsys):
    config = tmp_path / "distillery.yaml"
    config.write_text(json.dumps({
        "server": {"internal_url": "http://svc:internal-pw-1@distillery:8000", "labeller_keys": ["sk-labeller-2"]},
        "storage": {"s3_endpoint_url": "http://minio:minio-pw-3@minio:9000"},
        "debate": {"teachers": [
            {"name": "a", "base_url": "https://api.example/v1?api_key=query-key-4&region=eu",
             "headers": {"Authorization": "Bearer header-token-5", "X-Api-Key": "header-key-6",
                         "x-distillery-no-distill": "1"},
             "extra_body": {"access_token": "body-token-7", "reasoning_effort": "low"}},
            {"name": "b", "base_url": "http://b.example/v1", "api_key_env": "B_KEY"}]},
    }))
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.setenv("DISTILLERY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DISTILLERY_DATABASE_URL", "postgresql+psycopg://distillery:db-pass-8@db:5432/distillery")
    out = run(capsys, "config")
    for secret in ("internal-pw-1", "sk-labeller-2", "minio-pw-3", "query-key-4", "header-token-5", "header-key-6",
                   "body-token-7", "db-pass-8"):
        assert secret not in out, secret
    teacher = json.loads(out)["debate"]["teachers"][0]
    # What is not secret stays readable: the operator can still check the configuration.
    assert teacher["base_url"] == "https://api.example/v1?api_key=**********&region=eu"
    assert teacher["headers"]["x-distillery-no-distill"] == "1" and teacher["extra_body"]["reasoning_effort"] == "low"
    assert json.loads(out)["debate"]["teachers"][1]["api_key_env"] == "B_KEY"  # a variable's name, not the key
    assert json.loads(out)["server"]["internal_url"] == "http://svc:***@distillery:8000"


# ---- purge -------------------------------------------------------------------------------------------------------
def test_purge_is_a_dry_run_until_told_yes_and_prints_what_it_deletes(tmp_path, monkeypatch, capsys):
    from datetime import timedelta

    from sqlalchemy import select, update

    from services.store.debates import CaptureRow, utcnow
    from services.store.jobs import JobRow
    from services.store.mags import MagStore

    monkeypatch.setenv("DISTILLERY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DISTILLERY_RETENTION__CAPTURES_DAYS", "7")
    monkeypatch.delenv("DISTILLERY_CONFIG", raising=False)
    db = Database(Settings().db_url)
    db.create_all()
    store = MagStore(db)
    store.enqueue([{"request_id": r, "question": "2+2?", "messages": [], "status": s,
                    "created_at": utcnow() - timedelta(days=d)} for r, s, d in
                   [("old", "done", 8), ("old-queued", "queued", 8), ("fresh", "done", 6)]])
    jobs = JobStore(db)
    job = jobs.start("cli")
    jobs.finish(job, status="failed", outcome="failed", phase="training")
    newest = jobs.start("cli")
    jobs.finish(newest, status="failed", outcome="failed", phase="training")
    with db.session() as s:  # both old; the newest is kept all the same (the scheduler counts from it)
        s.execute(update(JobRow).values(finished_at=utcnow() - timedelta(days=31)))
        old_id = s.scalar(select(CaptureRow.id).where(CaptureRow.request_id == "old"))
    folder = tmp_path / "jobs" / f"job-{job}"
    folder.mkdir(parents=True)

    dry = run(capsys, "purge").splitlines()
    assert f"would delete 1 captures: {old_id}" in dry and f"would delete 1 jobs: {job}" in dry
    assert f"would delete 1 job folders: {folder}" in dry and dry[-1].startswith("dry run: nothing was deleted")
    assert store.queue_counts() == {"done": 2, "queued": 1} and folder.is_dir()

    done = run(capsys, "purge", "--yes").splitlines()
    assert f"deleted 1 captures: {old_id}" in done and f"deleted 1 job folders: {folder}" in done
    assert "deleted 0 mags" in done and not any(line.startswith("dry run") for line in done)
    assert store.queue_counts() == {"done": 1, "queued": 1} and not folder.exists() and jobs.get(job) is None
    assert jobs.get(newest) is not None
    assert json.loads(run(capsys, "purge", "--yes", "--json"))["captures"] == []  # nothing left to delete


# ---- teacher serve -----------------------------------------------------------------------------------------------
def ask(url: str, question: str) -> str:
    body = {"model": "reference", "messages": [{"role": "user", "content": prompts.answer_prompt(question, "number")}]}
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=30)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("configured", [False, True])
def test_teacher_serve_answers_as_an_openai_endpoint(tmp_path, configured):
    port = free_port()
    env = {**os.environ, "DISTILLERY_DATA_DIR": str(tmp_path)}
    env.pop("DISTILLERY_CONFIG", None)
    args = ["--configured"] if configured else ["--name", "solo", "--error-rate", "1.0", "--seed", "3"]
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "teacher", "serve", "--port", str(port), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    where = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(where), 60, "the reference teacher to answer")
        problem = next(p for p in generate("eval", 10) if p.steps >= 2)
        if configured:  # every reference teacher of the default config, each at its own path
            names = [t.name for t in Settings().debate.teachers if t.reference is not None]
            answers = {n: read_answer(ask(f"{where}/{n}/v1", problem.question), "number") for n in names}
            assert all(a.status == "ok" for a in answers.values())
            assert same_answer(answers["ref-exact"].answer, problem.answer, "number")
        else:  # error rate 1: always wrong, at its own path and at /v1
            names = ["solo"]
            for url in (f"{where}/solo/v1", f"{where}/v1"):
                reading = read_answer(ask(url, problem.question), "number")
                assert reading.status == "ok" and not same_answer(reading.answer, problem.answer, "number")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    lines = [line for line in out.splitlines() if line.startswith("reference teacher")]
    suffix = "" if configured else f" (and {where}/v1)"
    assert lines == [f"reference teacher `{n}` at {where}/{n}/v1{suffix}" for n in names]


def _up(where: str) -> bool:
    try:
        return httpx.get(f"{where}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
