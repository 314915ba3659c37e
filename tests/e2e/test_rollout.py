"""What runs inside the service around a rollout, on the real service: the rollout watch rolling a promoted version
back by itself (clients' labels -> live accuracy -> admin API), the periodic training trigger, adapters evicted
past the replica's adapter slots and reloaded, capture sampling per task, and evaluation traffic kept out of
capture.

Debates are off: these tests read what was captured, not what was debated. The two adapters answer the probe
prompt with their own codeword (tests/lora_factory.py), so the reply proves which weights served it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.config import Settings
from services.service_client import ServiceClient
from services.store.db import Database
from services.store.mags import MagStore
from tests.conftest import Service, start_service, stop_service
from tests.http_servers import wait_for
from tests.lora_factory import PROBE
from tests.ray_jobs.mags import poisoned_mags

pytestmark = pytest.mark.e2e

CODEWORDS = ["ALPHA-7", "BRAVO-3"]
ROLLOUT_ENV = {
    "DISTILLERY_DEBATE__ENABLED": "false",
    "DISTILLERY_TRAINING__EVERY_MAGS": "4",
    "DISTILLERY_TRAINING__WATCH__POLL_S": "1",
    "DISTILLERY_TRAINING__WATCH__MIN_LABELS": "3",
    "DISTILLERY_TRAINING__WATCH__MIN_REQUESTS": "1000",  # the error-rate signal stays quiet: labels decide here
    "DISTILLERY_STUDENT__MAX_LORAS": "1",
    "DISTILLERY_STUDENT__MAX_CPU_LORAS": "1",
    "DISTILLERY_TASKS": json.dumps([
        {"name": "default", "answer_type": "number"},
        {"name": "codeword", "answer_type": "label", "labels": CODEWORDS},
        {"name": "sampled", "answer_type": "number", "sample_rate": 0.5},
    ]),
}


@pytest.fixture(scope="module")
def service(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("rollout")
    db = Database(f"sqlite:///{data_dir / 'distillery.db'}")
    db.create_all()
    poisoned_mags(MagStore(db), 4)  # usable MAGs the periodic trigger finds fresh
    svc = start_service(model_dir, data_dir, ROLLOUT_ENV)
    try:
        yield svc
    finally:
        stop_service(svc)


@pytest.fixture(scope="module")
def versions(service: Service, codeword_adapters: dict[str, Path]) -> dict[str, str]:
    out = {}
    for word in CODEWORDS:
        r = httpx.post(f"{service.url}/v1/load_lora_adapter", timeout=60,
                       json={"lora_name": word.lower(), "lora_path": str(codeword_adapters[word])})
        assert r.status_code == 200, r.text
        out[word] = r.json()["version"]
    return out


def rows(svc: Service, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(svc.data_dir / "distillery.db") as c:
        return c.execute(sql).fetchall()


def ask(svc: Service, model: str = "student", task: str | None = None, question: str = PROBE) -> tuple[str, str, str]:
    """(request id, the adapter that served, the reply)."""
    client = openai.OpenAI(base_url=f"{svc.url}/v1", api_key="none", max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0,
        metadata={"task": task} if task else None)
    return raw.headers["x-request-id"], raw.headers["x-distillery-adapter"], raw.parse().choices[0].message.content


def admin(svc: Service, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = httpx.request(method, f"{svc.url}{path}", json=body, timeout=60)
    assert r.status_code in (200, 202), r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_periodic_trigger_starts_a_cycle_when_enough_mags_are_fresh(service: Service) -> None:
    # Nobody asks for this cycle: the scheduler inside the service sees 4 fresh usable MAGs (every_mags=4).
    wait_for(lambda: admin(service, "GET", "/admin/jobs")["data"], 90, "a job started by the scheduler")
    (started,) = admin(service, "GET", "/admin/jobs")["data"]
    assert started["trigger"] == "schedule" and started["status"] == "running", (started["error"], started["reason"])
    admin(service, "POST", f"/admin/jobs/{started['id']}/cancel")  # its training is not what this test is about
    assert admin(service, "GET", f"/admin/jobs/{started['id']}")["error"] == "cancelled by an operator"
    time.sleep(20)  # longer than the scheduler's poll: nothing fresh since that cycle started, so no other cycle
    assert [j["id"] for j in admin(service, "GET", "/admin/jobs")["data"]] == [started["id"]]


def test_adapters_past_the_replicas_slots_are_evicted_and_reloaded(service: Service, versions: dict[str, str]
                                                                   ) -> None:
    # One adapter slot in the engine and one in host memory: each request below evicts the other version.
    for _ in range(3):
        for word, version in versions.items():
            _, served, text = ask(service, version)
            assert served == version and word in text


def test_capture_follows_each_tasks_sample_rate(service: Service) -> None:
    sampled = [ask(service, task="sampled", question=f"What is {i} + 1?")[0] for i in range(40)]
    whole = [ask(service, question=f"What is {i} + 2?")[0] for i in range(10)]
    wait_for(lambda: set(whole) <= {r for (r,) in rows(service, "select request_id from capture_queue")}, 30,
             "every default-task request captured")
    captured = {r for (r,) in rows(service, "select request_id from capture_queue where task = 'sampled'")}
    assert captured <= set(sampled)
    assert 5 <= len(captured) <= 35, len(captured)  # Binomial(40, 0.5): outside this, one run in ten million


def test_evaluation_traffic_is_not_captured(service: Service) -> None:
    before = rows(service, "select count(*) from capture_queue")[0][0]

    async def evaluate() -> dict[str, Any]:  # the evaluator's own client, as a cycle calls the service
        async with httpx.AsyncClient(timeout=120) as http:
            return await ServiceClient(Settings(), service.url).chat(http, "student", "What is 5 + 5?", max_tokens=8,
                                                                     temperature=0)

    assert asyncio.run(evaluate())["choices"][0]["message"]["content"]
    app_request, _, _ = ask(service, question="What is 6 + 6?")
    wait_for(lambda: rows(service, f"select count(*) from capture_queue where request_id = '{app_request}'")[0][0],
             30, "the app's request captured")  # the sink has written everything sent before it
    assert rows(service, "select count(*) from capture_queue")[0][0] == before + 1


def test_a_promoted_version_worse_on_live_labels_is_rolled_back_by_the_watch(service: Service,
                                                                            versions: dict[str, str]) -> None:
    good, bad = versions["BRAVO-3"], versions["ALPHA-7"]
    admin(service, "POST", f"/admin/adapters/{good}/promote", {"reason": "test"})
    wait_for(lambda: ask(service)[1] == good, 60, f"{good} serving")

    def label(n: int) -> set[str]:
        """`n` probe requests on `student`, each labelled BRAVO-3 by the client; the adapters that served them."""
        served = set()
        for _ in range(n):
            request_id, adapter, _ = ask(service, task="codeword")
            r = httpx.post(f"{service.url}/v1/feedback", json={"request_id": request_id, "answer": "BRAVO-3"})
            assert r.status_code == 202, r.text
            served.add(adapter)
        return served

    assert label(3) == {good}  # its live accuracy: 3 of 3
    time.sleep(3)  # a few watch polls: a version that holds up is left alone
    assert admin(service, "GET", "/admin/adapters")["promoted"] == good

    admin(service, "POST", f"/admin/adapters/{bad}/promote", {"reason": "test"})
    wait_for(lambda: ask(service)[1] == bad, 60, f"{bad} serving")
    assert label(3) == {bad}  # it answers ALPHA-7: 0 of 3 against 3 of 3 before it
    wait_for(lambda: admin(service, "GET", "/admin/adapters")["promoted"] == good, 60, "the watch's rollback")
    last = admin(service, "GET", "/admin/adapters")["history"][-1]
    assert last["kind"] == "rollback" and last["version"] == good
    assert last["reason"].startswith("auto-rollback: live accuracy 0.0% on 3 labelled requests, 100.0%")
    wait_for(lambda: ask(service)[1] == good, 60, f"{good} serving again")
    assert 'distillery_adapter_promotions{kind="auto_rollback"} 1.0' in httpx.get(f"{service.url}/metrics").text
