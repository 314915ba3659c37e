"""The whole loop's first half on the real service: traffic -> capture queue -> debates -> MAGs in the store, with
teachers that write like LLMs, not like our templates, and a service killed mid-debate.

One service (Ray Serve + vLLM), smaller debate turns so CI stays quick, whose four teachers are: a built-in
reference teacher; two stand-ins for hosted models (real HTTP servers in this process: one writing like Claude and
cut at max_tokens now and then, one a reasoning model that refuses `max_tokens` and temperatures unless configured
for it); and a real LLM reached over the OpenAI protocol: the embedded 135M model itself, served by this very
service's `/v1` as model `student`. Real traffic goes in through the `openai` client; the tests read the MAGs from
the store and the metrics. They run in file order on one data directory: the last kills the service with SIGKILL
mid-debate and starts it again on the same data as `make run` starts it (the embedded defaults: three built-in
reference teachers), which finishes what the kill cut short.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from services.tasks.arithmetic import generate
from tests.conftest import Service, free_port, start_service, stop_service
from tests.hosted_teacher import HostedTeacher
from tests.http_servers import wait_for

pytestmark = pytest.mark.e2e

UNREADABLE = ("unparsed", "abstained", "truncated")

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


def teachers_config(port: int, claude_url: str, reasoner_url: str) -> list[dict]:
    return [
        {"name": "ref-exact", "reference": {"error_rate": 0.0}},
        {"name": "hosted-claude", "base_url": claude_url, "model": "claude-3-5-haiku"},
        {"name": "hosted-reasoner", "base_url": reasoner_url, "model": "o3-mini", "max_tokens": 1024,
         "max_tokens_param": "max_completion_tokens", "send_temperature": False},
        # The real LLM: this service's own endpoint; its debate calls must not be captured as traffic.
        {"name": "llm-student", "base_url": f"http://127.0.0.1:{port}/v1", "model": "student",
         "headers": {"x-distillery-no-distill": "1"}, "timeout_s": 120},
    ]


@pytest.fixture(scope="module")
def debating(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service with the four teachers above, on a fresh data directory."""
    data = tmp_path_factory.mktemp("debates")
    port = free_port()
    claude = HostedTeacher("claude", truncate_every=3)
    reasoner = HostedTeacher("deepseek", reasoning_model=True)
    with claude.serve() as claude_url, reasoner.serve() as reasoner_url:
        # The LLM teacher is this service's own engine: its calls are traffic, which student turns would yield to.
        env = {**DEBATE_ENV, "DISTILLERY_SERVER__PORT": str(port), "DISTILLERY_DEBATE__CONCURRENCY": "2",
               "DISTILLERY_DEBATE__YIELD_TO_TRAFFIC": "0",
               "DISTILLERY_DEBATE__TEACHERS": json.dumps(teachers_config(port, claude_url, reasoner_url))}
        svc = start_service(model_dir, data, env)
        svc.env, svc.claude = env, claude  # type: ignore[attr-defined]
        try:
            yield svc
        finally:
            stop_service(svc)


def test_debates_with_a_real_llm_and_hosted_style_teachers(debating: Service, model_dir: str) -> None:
    svc, data = debating, debating.data_dir
    client = openai.OpenAI(base_url=f"{svc.url}/v1", api_key="unused", max_retries=0)
    problems = generate("eval", 3, seed=5)
    for p in problems:
        raw = client.chat.completions.with_raw_response.create(
            model="student", messages=[{"role": "user", "content": p.question}], max_tokens=32)
        r = httpx.post(f"{svc.url}/v1/feedback", json={"request_id": raw.headers["x-request-id"],
                                                        "answer": p.answer})
        assert r.status_code == 202
    # A conversation: its system prompt and earlier turns reach the debate.
    client.chat.completions.create(model="student", max_tokens=16, messages=[
        {"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "I have a question about sums."},
        {"role": "assistant", "content": "Sure, ask."},
        {"role": "user", "content": "What is 17 + 25?"}])

    wait_for(lambda: rows(data, "select count(*) from capture_queue where status in ('queued', 'running')")[0][0]
             == 0 and rows(data, "select count(*) from capture_queue")[0][0] == 4, 900,
             "every captured request debated")
    metrics = httpx.get(f"{svc.url}/metrics").text
    # The check asks one question: answered whole (how many debate calls came before is not fixed).
    svc.claude.truncate_every = 0  # type: ignore[attr-defined]
    env_cli = {**os.environ, **svc.env, "DISTILLERY_DATA_DIR": str(data),  # type: ignore[attr-defined]
               "DISTILLERY_STUDENT__MODEL": model_dir}
    check = subprocess.run([sys.executable, "-m", "services.cli", "teachers", "check", "--json"],
                           env=env_cli, capture_output=True, text=True, timeout=300)

    # Only the real traffic was captured: the LLM teacher's own calls opted out.
    assert rows(data, "select status, count(*) from capture_queue group by status") == [("done", 4)]
    questions = [q for (q,) in rows(data, "select question from capture_queue")]
    assert any(q.startswith("<system_prompt>\nYou are a careful math tutor.") and "User: I have a question" in q
               and q.endswith("What is 17 + 25?") for q in questions)
    debates = rows(data, "select id, status, gold_source from debates")
    assert len(debates) == 4 and {s for _, s, _ in debates} == {"done"}

    answers = rows(data, "select agent, status, answer, correct, error from mag_nodes where kind = 'answer'")
    by_agent: dict[str, list[tuple]] = {}
    for agent, *rest in answers:
        by_agent.setdefault(agent, []).append(tuple(rest))
    # Hosted-style replies are read and graded right when they are right (these stand-ins solve exactly).
    for hosted in ("hosted-claude", "hosted-reasoner"):
        read = [a for a in by_agent[hosted] if a[0] == "ok"]
        assert read and all(correct == 1 for _, _, correct, _ in read), by_agent[hosted]
        assert not any(status == "error" for status, *_ in by_agent[hosted])  # the reasoning model is configured
    assert any(status == "truncated" for status, *_ in by_agent["hosted-claude"])  # and never graded
    # The real LLM answered every turn; whatever it wrote, an unreadable reply is never graded wrong.
    llm = by_agent["llm-student"]
    assert llm and not any(status == "error" for status, *_ in llm), llm
    assert all(correct is None for status, _, correct, _ in llm if status in UNREADABLE)
    assert all(correct is None for _, status, _, correct, _ in answers if status in UNREADABLE)
    # Critiques and reflections address only answers graded wrong, never unreadable ones.
    addressed = rows(data, "select a.status, a.correct from mag_edges e join mag_nodes a on a.id = e.dst "
                           "where e.kind in ('critiques', 'reflects_on')")
    assert all(status == "ok" and correct == 0 for status, correct in addressed)
    # Its counters are on /metrics, its replies' reading outcomes too.
    assert 'distillery_teacher_requests_total{agent="llm-student"' in metrics
    assert 'distillery_teacher_replies_total{agent="llm-student"' in metrics
    assert 'distillery_teacher_replies_total{agent="hosted-claude",status="truncated"}' in metrics
    assert 'distillery_teacher_misconfigured{agent="hosted-reasoner"} 1.0' not in metrics

    # `distillery teachers check` reaches each teacher and says what it could read.
    assert check.returncode in (0, 1), check.stderr
    print(check.stdout)
    report = {r["teacher"]: r for r in json.loads(check.stdout)}
    assert set(report) == {"ref-exact", "hosted-claude", "hosted-reasoner", "llm-student"}
    assert all(r["reachable"] == "yes" for r in report.values()), report
    for name in ("ref-exact", "hosted-claude", "hosted-reasoner"):
        assert report[name]["correct"] and report[name]["score"] is not None and report[name]["passed"], report[name]
    assert check.returncode == (0 if report["llm-student"]["passed"] else 1)


def test_traffic_becomes_usable_mags_and_survives_a_killed_service(debating: Service, model_dir: str) -> None:
    svc, data = debating, debating.data_dir
    before = {r[0] for r in rows(data, "select request_id from capture_queue")}  # the test above's traffic
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
    captured = {r[0]: r[1] for r in rows(data, "select request_id, question from capture_queue")}
    assert set(captured) - before == {first, labelled}
    assert "ann@example.com" not in captured[labelled] and "[EMAIL]" in captured[labelled]

    listed = json.loads(cli(data, "mags", "list", "--json"))
    done = [m for m in listed if m["status"] == "done" and m["usable"]]
    assert done and all(m["gold"] is not None for m in done)
    # One finished MAG with the client's label as gold (a debate that started before the label arrived and
    # disagreed with it is kept as `superseded`).
    of_labelled = [m for m in listed if m["request_id"] == labelled]
    (labelled_mag,) = [m for m in of_labelled if m["status"] == "done"]
    assert (labelled_mag["gold"], labelled_mag["gold_source"]) == ("42", "feedback")
    assert {m["status"] for m in of_labelled if m is not labelled_mag} <= {"superseded"}
    shown = cli(data, "mags", "show", str(labelled_mag["id"]))
    assert "=== round 0 ===" in shown and "peer review" in shown and "What is 17 + 25?" in shown

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
    queued = {r[0] for r in rows(data, "select request_id from capture_queue")}
    assert queued - before == {first, labelled, *later}  # nothing captured was lost
    cut_short = {r[0] for r in rows(data, "select id from debates where status='running'")}
    assert cut_short

    # Started again as `make run` starts it: the embedded defaults' teachers finish what was cut short.
    again = start_service(model_dir, data, DEBATE_ENV)
    try:
        wait_for(lambda: rows(data, "select count(*) from capture_queue where status in ('queued','running')")[0][0]
                 == 0, 420, "the queue to drain after the restart")
    finally:
        stop_service(again)
    states = dict(rows(data, "select request_id, status from capture_queue"))
    assert set(states) == before | {first, labelled, *later} and set(states.values()) == {"done"}
    ids = ",".join(map(str, cut_short))
    after = dict(rows(data, f"select id, status from debates where id in ({ids})"))
    assert after == {i: "interrupted" for i in cut_short}  # kept, marked, never used for training
    # Every re-run item has a finished debate of its own.
    for rid in later:
        assert rows(data, "select count(*) from debates d join capture_queue c on d.capture_id = c.id "
                    f"where c.request_id = '{rid}' and d.status = 'done'")[0][0] == 1
