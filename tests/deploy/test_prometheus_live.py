"""A real Prometheus scraping the real service on loopback, with the repository's scrape config and rules: every
query of the Grafana dashboard and of the rules is valid and reads series the service exports, the core panels
have data after real traffic and a real debate, every rule evaluates without error, and nothing alerts on a
healthy service.

The service is started the way the Helm chart's RayService starts it: Ray Serve runs the rendered `serveConfigV2`
(import paths `services.launcher:serve_app` / `teachers_app`) with the rendered Distillery config, so the same run
checks that the chart's Serve config serves the API.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from services.tasks.arithmetic import generate
from services.teachers.token import TOKEN_FILE
from tests.conftest import Service, free_port
from tests.deploy.prom import (
    Prometheus,
    dashboard_expressions,
    loopback_config,
    metric_names,
    prometheus,
    rule_expressions,
)
from tests.e2e.test_debate_service import DEBATE_ENV
from tests.helm.chart import start_rendered_service, stop_rendered_service
from tests.http_servers import wait_for

pytestmark = pytest.mark.e2e

WINDOW = "30s"  # stands for Grafana's $__rate_interval at the test's 1 s scrape interval

# Panels that must show data once the service has served traffic and finished a debate (the rest, e.g. eval
# accuracy by version, need a training cycle: tests/e2e/test_training_loop.py covers their values).
MUST_HAVE_DATA = {
    "Requests per second by status", "Server error ratio", "Requests in flight", "Latency p50 / p99",
    "Time to first token p50 / p99", "Tokens per query by adapter version", "Generated tokens per second",
    "Promoted version", "Debates by outcome", "Capture queue depth", "Usable MAGs", "Teacher tokens per second",
    "Teacher failure ratio", "Peer-review acceptance", "Training runs by outcome", "Training cycle running",
    "Promotions and rollbacks", "Distillation paused",
}
RECORDINGS_WITH_DATA = {
    "distillery:requests:rate5m", "distillery:request_errors:ratio_rate5m", "distillery:request_latency_seconds:p99_5m",
    "distillery:ttft_seconds:p99_5m", "distillery:tokens_per_query:mean1h", "distillery:teacher_errors:ratio_rate10m",
    "distillery:debates:rate1h",
}


def debates_done(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "distillery.db") as c:
        return c.execute("select count(*) from debates where status = 'done'").fetchone()[0]


def traffic(svc: Service) -> None:
    client = openai.OpenAI(base_url=f"{svc.url}/v1", api_key="unused", max_retries=0)
    for p in generate("eval", 3):
        client.chat.completions.create(model="student", messages=[{"role": "user", "content": p.question}],
                                       max_tokens=24)
    stream = client.chat.completions.create(model="student", stream=True, max_tokens=8,
                                            messages=[{"role": "user", "content": "Say hi."}])
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in stream)
    client.completions.create(model="student", prompt="2 + 2 =", max_tokens=4)
    with pytest.raises(openai.NotFoundError):  # a 4xx series: clients' errors must not read as an outage
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4)


@pytest.fixture(scope="module")
def scraped(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Prometheus]]:
    svc = start_rendered_service(model_dir, tmp_path_factory.mktemp("rayservice"), DEBATE_ENV)
    work = tmp_path_factory.mktemp("prometheus")
    try:
        config = loopback_config(svc.url.removeprefix("http://"), work)
        with prometheus(config, free_port(), work) as prom:
            traffic(svc)
            wait_for(lambda: debates_done(svc.data_dir) >= 1, 300, "a finished debate")
            traffic(svc)  # rates over the last window are non-zero, not only present
            wait_for(lambda: prom.query('up{job="distillery"} == 1'), 30, "the first scrape")
            time.sleep(5)  # a few more scrapes and rule evaluations
            yield svc, prom
    finally:
        stop_rendered_service(svc)


def as_instant(expr: str) -> str:
    return expr.replace("$__rate_interval", WINDOW)


def test_the_service_is_scraped(scraped) -> None:
    _, prom = scraped
    (target,) = [t for t in prom.api("targets")["activeTargets"] if t["labels"]["job"] == "distillery"]
    assert target["health"] == "up", target["lastError"]


def test_every_dashboard_and_rule_query_is_valid_over_exported_series(scraped) -> None:
    _, prom = scraped
    queries = [(w, as_instant(e)) for w, e in [*((p, e) for p, e in dashboard_expressions()), *rule_expressions()]]
    assert len(queries) > 40
    names, metadata = prom.series_names(), prom.metadata_types()
    recorded = {name for name, _ in rule_expressions() if ":" in name}
    for where, expr in queries:
        prom.query(expr)  # raises on a query Prometheus rejects
        for m in metric_names(expr):
            if ":" in m:
                assert m in recorded, f"{where}: {m} is no recording rule"
                continue
            family = m.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            known = m in names or m in metadata or metadata.get(family) == "histogram"
            assert known, f"{where}: {m} is neither a series nor a metric the service exports"


def test_core_panels_and_recordings_have_data(scraped) -> None:
    _, prom = scraped
    titles = {t for t, _ in dashboard_expressions()}
    assert titles >= MUST_HAVE_DATA, MUST_HAVE_DATA - titles
    empty = [t for t, e in dashboard_expressions() if t in MUST_HAVE_DATA and not prom.query(as_instant(e))]
    assert not empty, f"panels with no data after traffic and a debate: {empty}"
    assert not [r for r in RECORDINGS_WITH_DATA if not prom.query(r)]
    by_status = {s["metric"]["status"] for s in prom.query('sum by (status) (distillery_requests_total)')}
    assert {"200", "404"} <= by_status
    assert float(prom.query("distillery:request_errors:ratio_rate5m")[0]["value"][1]) == 0.0  # 404s don't count


def test_rules_evaluate_and_nothing_alerts_on_a_healthy_service(scraped) -> None:
    _, prom = scraped
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(rule_expressions())
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    assert prom.query("ALERTS") == []


def test_the_chart_serve_config_serves_the_api_the_teachers_and_metrics(scraped) -> None:
    svc, _ = scraped
    models = httpx.get(f"{svc.url}/v1/models", timeout=30).json()
    assert "student" in {m["id"] for m in models["data"]}
    teachers = f"{svc.url}/teachers/ref-exact/v1/models"  # its own app, behind the internal token
    assert httpx.get(teachers, timeout=30).status_code == 401
    token = (svc.data_dir / TOKEN_FILE).read_text().strip()  # no admin key here: generated into the data dir
    assert httpx.get(teachers, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    r = httpx.get(f"{svc.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_pausing_distillation_stops_capture_and_shows_in_prometheus(scraped) -> None:
    svc, prom = scraped

    def captured() -> int:
        with sqlite3.connect(svc.data_dir / "distillery.db") as c:
            return c.execute("select count(*) from capture_queue").fetchone()[0]

    r = httpx.post(f"{svc.url}/admin/distillation/pause", json={"reason": "runbook drill"})
    assert r.status_code == 200 and r.json()["paused"] is True and r.json()["reason"] == "runbook drill"
    time.sleep(3)  # replicas read the switch at most 2 s old
    before = captured()
    client = openai.OpenAI(base_url=f"{svc.url}/v1", api_key="unused", max_retries=0)
    served = client.chat.completions.create(model="student", max_tokens=4,
                                            messages=[{"role": "user", "content": "What is 3 + 4?"}])
    assert served.choices[0].message.content is not None  # serving goes on
    time.sleep(1)
    assert captured() == before
    wait_for(lambda: prom.query("distillery_distillation_paused == 1"), 20, "the pause on the dashboard")
    r = httpx.post(f"{svc.url}/admin/distillation/resume")
    assert r.status_code == 200 and r.json()["paused"] is False
