"""The whole loop's first half, as `make run` runs it: traffic -> capture queue -> debates -> MAGs in the store.

One service with the embedded defaults (three built-in reference teachers, capture on, 100% sampling), smaller
debate turns so CI stays quick. It is killed with SIGKILL mid-debate and started again on the same data.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from services.tasks.arithmetic import generate
from tests.conftest import start_service, stop_service
from tests.http_servers import wait_for

pytestmark = pytest.mark.e2e

DEBATE_ENV = {  # two rounds at most: these tests need finished debates, not long ones
    "DISTILLERY_DEBATE__MAX_ROUNDS": "2",
    "DISTILLERY_STUDENT__MAX_MODEL_LEN": "2048",
    "DISTILLERY_DEBATE__STUDENT_SAMPLES": "1",
    "DISTILLERY_DEBATE__MAX_TOKENS": "96",
    "DISTILLERY_DEBATE__BLOCK_TOKENS": "200",
    "DISTILLERY_DEBATE__LEASE_S": "15",
    "DISTILLERY_DEBATE__POLL_S": "0.5",
}


def rows(data_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(data_dir / "distillery.db") as c:
        return c.execute(sql).fetchall()


def cli(data_dir: Path, *args: str) -> str:
    env = {**os.environ, "DISTILLERY_DATA_DIR": str(data_dir)}
    out = subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def ask(client: openai.OpenAI, question: str, **headers: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="student", messages=[{"role": "user", "content": question}], max_tokens=32,
        extra_headers=headers or None)
    return raw.headers["x-request-id"]


def test_traffic_becomes_usable_mags_and_survives_a_killed_service(model_dir, tmp_path):
    data = tmp_path / "data"
    svc = start_service(model_dir, data, DEBATE_ENV)
    try:
        client = openai.OpenAI(base_url=f"{svc.url}/v1", api_key="unused", max_retries=0)
        problems = generate("eval", 4)
        first = ask(client, problems[0].question)
        labelled = ask(client, "What is 17 + 25? Reply to ann@example.com")
        ask(client, "What is 2 + 2?", **{"x-distillery-no-distill": "1"})  # opted out: never captured
        r = httpx.post(f"{svc.url}/v1/feedback", json={"request_id": labelled, "answer": "42"})
        assert r.status_code == 202 and r.json()["status"] in {"queued", "pending"}
        assert httpx.post(f"{svc.url}/v1/feedback", json={"answer": "42"}).json()["error"]["param"] == "request_id"

        wait_for(lambda: rows(data, "select count(*) from debates d join capture_queue c on d.capture_id = c.id "
                                    f"where c.request_id = '{labelled}' and d.status = 'done'")[0][0] == 1,
                 300, "the labelled request's debate")
        wait_for(lambda: rows(data, "select count(*) from debates where status='done' and usable=1")[0][0] >= 1,
                 300, "a usable MAG")
        captured = {r[0]: r[1] for r in rows(data, "select request_id, question from capture_queue")}
        assert set(captured) == {first, labelled}
        assert "ann@example.com" not in captured[labelled] and "[EMAIL]" in captured[labelled]

        listed = json.loads(cli(data, "mags", "list", "--json"))
        done = [m for m in listed if m["status"] == "done" and m["usable"]]
        assert done and all(m["gold"] is not None for m in done)
        shown = cli(data, "mags", "show", str(done[0]["id"]))
        assert "=== round 0 ===" in shown and "peer review" in shown and done[0]["question"][:30] in shown
        # One finished MAG with the client's label as gold (a debate that started before the label arrived and
        # disagreed with it is kept as `superseded`).
        of_labelled = [m for m in listed if m["request_id"] == labelled]
        (labelled_mag,) = [m for m in of_labelled if m["status"] == "done"]
        assert (labelled_mag["gold"], labelled_mag["gold_source"]) == ("42", "feedback")
        assert {m["status"] for m in of_labelled if m is not labelled_mag} <= {"superseded"}

        metrics = httpx.get(f"{svc.url}/metrics").text
        assert 'distillery_teacher_requests_total{agent="ref-exact"' in metrics
        assert "distillery_debates_total" in metrics and 'distillery_capture_queue{state="done"}' in metrics

        # More traffic, then a hard kill while a debate runs.
        later = [ask(client, p.question) for p in problems[1:]]
        # Captured = committed to the queue (the sink's buffer lingers milliseconds); then kill mid-debate.
        wait_for(lambda: set(later) <= {r[0] for r in rows(data, "select request_id from capture_queue")}, 30,
                 "the later requests in the capture queue")
        wait_for(lambda: rows(data, "select count(*) from debates where status='running'")[0][0] >= 1, 120,
                 "a running debate")
        os.killpg(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(timeout=30)
    finally:
        stop_service(svc)
    queued = {r[0] for r in rows(data, "select request_id from capture_queue")}
    assert queued == {first, labelled, *later}  # nothing captured was lost
    cut_short = {r[0] for r in rows(data, "select id from debates where status='running'")}
    assert cut_short

    svc = start_service(model_dir, data, DEBATE_ENV)
    try:
        wait_for(lambda: rows(data, "select count(*) from capture_queue where status in ('queued','running')")[0][0]
                 == 0, 420, "the queue to drain after the restart")
    finally:
        stop_service(svc)
    states = dict(rows(data, "select request_id, status from capture_queue"))
    assert set(states) == {first, labelled, *later} and set(states.values()) == {"done"}
    ids = ",".join(map(str, cut_short))
    after = dict(rows(data, f"select id, status from debates where id in ({ids})"))
    assert after == {i: "interrupted" for i in cut_short}  # kept, marked, never used for training
    # Every re-run item has a finished debate of its own.
    for rid in later:
        assert rows(data, "select count(*) from debates d join capture_queue c on d.capture_id = c.id "
                    f"where c.request_id = '{rid}' and d.status = 'done'")[0][0] == 1
