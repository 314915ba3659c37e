"""Distillery on a multi-node Ray cluster made on this machine: a head and a second raylet started with `ray start`,
each with its own CPUs, the service joining it (RAY_ADDRESS), the store in Postgres and adapter versions in an
S3-protocol object store (moto's server). Two student replicas and two gateway replicas, one of each per node.

What it shows, in order (one cluster, so the tests of this module run in file order):
- the replicas spread over both nodes and report on the replica board;
- a promotion is confirmed by both student replicas within the bound, and from then on every response, whichever
  replica served it, carries the new version (and its weights' codeword);
- exact-version requests (`student@vN`, routed by Ray Serve's model multiplexing) are all served;
- a real Prometheus, with the cluster scrape config, sums both gateway replicas' series to the requests sent;
- the second node stopped under load: requests on it fail at most, requests started once the cluster has noticed
  all succeed on the head's replicas, and the node's replicas return when it rejoins;
- a training cycle started by the service's scheduler runs two Ray Train workers, one per node, and publishes to
  the shared storage (that two workers follow one worker's loss trajectory is tests/ray_jobs/test_two_workers.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from pyarrow import fs

from services.store.db import Database
from services.store.mags import MagStore
from tests.conftest import Service, free_port, start_service, stop_service
from tests.deploy.prom import PROM_DIR, prometheus
from tests.e2e.test_cycle_kills import bucket
from tests.http_servers import wait_for
from tests.lora_factory import PROBE
from tests.postgres_server import fresh_database
from tests.ray_cluster import RayCluster, start_cluster
from tests.ray_jobs.mags import one_step, poisoned_mags

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

POLL_S = 1.0  # student.registry_poll_s here: the promotion bound is this plus a load
# How long the cluster takes to notice a node that stopped (Ray's health checks of the raylet) and Serve to stop
# routing to its replicas: requests started later must all succeed.
NOTICE_S = 30.0
# Ray's token authentication, on by default for `ray start --head`: every process that joins presents the token the
# head wrote (~/.ray/auth_token).
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
CLUSTER_ENV = {
    "DISTILLERY_CAPTURE__ENABLED": "false",
    "DISTILLERY_DEBATE__ENABLED": "false",
    "DISTILLERY_TRAINING__ENABLED": "false",
    "DISTILLERY_STUDENT__REPLICAS__NUM": "2",
    "DISTILLERY_STUDENT__REPLICAS__MAX_PER_NODE": "1",
    "DISTILLERY_SERVER__REPLICAS__NUM": "2",
    "DISTILLERY_SERVER__REPLICAS__MAX_PER_NODE": "1",
    "DISTILLERY_SERVER__PROXY_LOCATION": "HeadOnly",  # both nodes share this machine's ports
    "DISTILLERY_STUDENT__REGISTRY_POLL_S": str(POLL_S),
    "DISTILLERY_STUDENT__MERGE_AFTER_S": "2",
    "DISTILLERY_STORAGE__ADAPTERS_URL": "s3://adapters/cluster",
    # A small two-worker cycle: every worker takes 1 CPU, and each node keeps 1 free beside its student replica.
    "DISTILLERY_TRAINING__NUM_WORKERS": "2",
    "DISTILLERY_TRAINING__CPUS_PER_WORKER": "1",
    "DISTILLERY_TRAINING__MIN_MAGS": "4",
    "DISTILLERY_TRAINING__MAX_PROMPT_TOKENS": "256",
    "DISTILLERY_TRAINING__MAX_COMPLETION_TOKENS": "64",
    "DISTILLERY_TRAINING__SFT__BATCH_SIZE": "2",
    "DISTILLERY_TRAINING__SFT__MAX_STEPS": "3",
    "DISTILLERY_TRAINING__TDPO__ENABLED": "false",
    "DISTILLERY_TRAINING__EVAL__MAX_TOKENS": "16",
    "DISTILLERY_TRAINING__GATE__MIN_ACCURACY_GAIN": "0",
    "DISTILLERY_TRAINING__GATE__MAX_TOKENS_INCREASE": "10",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[RayCluster]:
    # The raylets' environment is what their workers (the replicas) run with: offline, and the object store's
    # credentials, as a pod's environment gives them on Kubernetes.
    # One proxy (HeadOnly: both nodes share this machine's ports) that prefers its own node's gateway replica would
    # send everything to one; with a proxy per node behind a load balancer, as deployed, both get traffic.
    env = {**os.environ, **RAY_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}
    c = start_cluster(tmp_path_factory.mktemp("ray-cluster"), env, [2, 2])
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def service(cluster: RayCluster, model_dir: str, tmp_path_factory: pytest.TempPathFactory, postgres: str,
            s3_endpoint: str) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("cluster-svc")
    db_url = fresh_database(postgres)
    db = Database(db_url)
    db.create_all()
    poisoned_mags(MagStore(db), 6)  # usable MAGs for the training cycle (what they teach does not matter here)
    bucket(s3_endpoint).create_dir("adapters")
    golden = data_dir / "golden.jsonl"
    golden.write_text("".join(json.dumps({"question": p.question, "answer": p.answer}) + "\n"
                              for p in one_step("eval", 4)))
    env = {**CLUSTER_ENV, **RAY_ENV, "RAY_ADDRESS": cluster.address, "DISTILLERY_DATABASE_URL": db_url,
           "DISTILLERY_STORAGE__S3_ENDPOINT_URL": s3_endpoint,
           "DISTILLERY_TASKS": json.dumps([{"name": "default", "answer_type": "number", "eval": {
               "holdout": 0, "golden": str(golden), "golden_n": 4, "tolerance": 1.0}}])}
    svc = start_service(model_dir, data_dir, env)
    try:
        # /ready answers once one student replica serves; the second one's engine may still be starting.
        wait_for(lambda: len([r for r in ready(svc).get("replicas", []) if r["ready"]]) == 2, timeout=600, every=3,
                 what="both student replicas to report ready")
        yield svc
    finally:
        stop_service(svc)


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0, timeout=120)


def ready(svc: Service) -> dict[str, Any]:
    r = httpx.get(f"{svc.url}/ready", timeout=30)
    assert r.status_code in (200, 503), r.text
    return r.json()


def ask(client: openai.OpenAI, model: str = "student") -> tuple[str, str, str]:
    """(adapter header, replica header, answer) of one probe."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": PROBE}], max_tokens=8, temperature=0)
    text = raw.parse().choices[0].message.content or ""
    return raw.headers["x-distillery-adapter"], raw.headers["x-distillery-replica"], text


def stored_versions(s3_endpoint: str) -> set[str]:
    """The versions with files in the cluster's adapter storage (s3://adapters/cluster/<version>/...)."""
    infos = bucket(s3_endpoint).get_file_info(fs.FileSelector("adapters/cluster", recursive=True,
                                                               allow_not_found=True))
    return {i.path.split("/")[2] for i in infos if i.type == fs.FileType.File}


def publish(svc: Service, name: str, path: Path) -> str:
    r = httpx.post(f"{svc.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=120)
    assert r.status_code == 200, r.text
    return str(r.json()["version"])


def test_replicas_spread_over_both_nodes_and_report_ready(service: Service) -> None:
    body = ready(service)
    students = body["replicas"]
    assert body["status"] == "ready" and len(students) == 2, body
    assert len({r["node"] for r in students}) == 2, students  # one per node (max_per_node 1)
    assert all(r["ready"] and r["promoted"] is None and r["serving"] == body["base_model"] for r in students)
    targets = httpx.get(f"{service.url}/metrics/targets", timeout=30).json()
    assert len(targets) == 2 and all(t["targets"][0].startswith("127.0.0.1:") for t in targets), targets


def test_a_promotion_reaches_both_student_replicas_within_the_bound(service: Service, client: openai.OpenAI,
                                                                    codeword_adapters: dict[str, Path]) -> None:
    version = service.alpha = publish(service, "alpha", codeword_adapters["ALPHA-7"])  # type: ignore[attr-defined]
    t0 = time.monotonic()
    r = httpx.post(f"{service.url}/admin/adapters/{version}/promote", timeout=120)
    took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["promoted"] == version and out["replicas"]["pending"] == [], out
    assert len(out["replicas"]["confirmed"]) == 2
    assert took < POLL_S + 30, f"the promotion took {took:.1f}s to reach both replicas"
    seen: dict[str, int] = {}
    for _ in range(40):  # every answer from now on, whichever replica: the new version and its weights
        adapter, replica, text = ask(client)
        assert adapter == version and "ALPHA-7" in text, (adapter, replica, text)
        seen[replica] = seen.get(replica, 0) + 1
        if len(seen) == 2 and min(seen.values()) >= 3:
            break
    assert set(seen) == set(out["replicas"]["confirmed"]), seen
    wait_for(lambda: all(r["serving"] == version and r["ready"] for r in ready(service)["replicas"]), timeout=60,
             what="both replicas to report the promoted version")


def test_exact_versions_are_served_wherever_they_are_routed(service: Service, client: openai.OpenAI,
                                                           codeword_adapters: dict[str, Path]) -> None:
    alpha = service.alpha  # type: ignore[attr-defined]
    bravo = publish(service, "bravo", codeword_adapters["BRAVO-3"])
    asks = [(alpha, "ALPHA-7"), (bravo, "BRAVO-3")] * 8
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: (a[0], a[1], ask(client, a[0])), asks))
    for model, word, (adapter, _replica, text) in results:
        assert adapter == model and word in text, (model, adapter, text)


def scrape_config(svc: Service, out: Path) -> Path:
    """deploy/prometheus/prometheus-cluster.yml pointed at the service on loopback, scraping every second."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus-cluster.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg["rule_files"]]
    host = svc.url.removeprefix("http://")
    for job in cfg["scrape_configs"]:
        if "static_configs" in job:
            job["static_configs"] = [{"targets": [host]}]
        for sd in job.get("http_sd_configs", []):
            sd.update(url=f"{svc.url}/metrics/targets", refresh_interval="1s")
    path = out / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_prometheus_sums_both_gateway_replicas_to_the_requests_sent(service: Service, client: openai.OpenAI,
                                                                   tmp_path: Path) -> None:
    with prometheus(scrape_config(service, tmp_path), free_port(), tmp_path) as prom:
        def up() -> bool:
            targets = prom.api("targets")["activeTargets"]
            replicas = [t for t in targets if t["labels"]["job"] == "distillery-replicas" and t["health"] == "up"]
            return len(replicas) == 2 and all(t["health"] == "up" for t in targets)

        wait_for(up, timeout=60, what="both gateway replicas' targets to be up")

        def total() -> float:
            found = prom.query('sum(distillery_requests_total{endpoint="chat"})')
            return float(found[0]["value"][1]) if found else 0.0

        time.sleep(3)
        before = total()
        sent = 30
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda _: ask(client), range(sent)))
        time.sleep(4)  # a few scrapes
        wait_for(lambda: total() - before >= sent, timeout=30, what="the requests to be counted")
        assert total() - before == sent
        per_replica = prom.query('sum by (replica) (distillery_requests_total{endpoint="chat"})')
        assert len(per_replica) == 2 and all(float(s["value"][1]) > 0 for s in per_replica), per_replica
        # The rules sum over replicas too: the recorded rate covers both.
        wait_for(lambda: prom.query("sum(distillery:requests:rate5m)"), timeout=30, what="the recording rule")


def test_a_node_stopped_under_load_fails_only_its_own_requests_and_returns(service: Service, cluster: RayCluster,
                                                                          client: openai.OpenAI) -> None:
    node2 = cluster.nodes[1]
    results: list[tuple[float, bool, str]] = []  # (start, ok, what)
    stop_at = time.monotonic() + 1e9
    stopped_at = 0.0

    def load() -> None:
        while time.monotonic() < stop_at:
            t = time.monotonic()
            try:
                adapter, _replica, _text = ask(client)
                results.append((t, True, adapter))
            except Exception as e:
                results.append((t, False, repr(e)[:200]))

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(load) for _ in range(3)]
        time.sleep(5)
        node2.stop()
        stopped_at = time.monotonic()
        time.sleep(NOTICE_S + 20)
        stop_at = time.monotonic()
        for f in futures:
            f.result()
    before = [r for r in results if r[0] < stopped_at]
    window = [r for r in results if stopped_at <= r[0] < stopped_at + NOTICE_S]
    after = [r for r in results if r[0] >= stopped_at + NOTICE_S]
    failed_window = [r for r in window if not r[1]]
    print(f"before the stop: {len(before)} requests, {sum(not r[1] for r in before)} failed; "
          f"first {NOTICE_S:.0f}s after: {len(window)}, {len(failed_window)} failed; "
          f"later: {len(after)}, {sum(not r[1] for r in after)} failed")
    # Only requests in flight on the node's replicas may fail: at most the three clients' one each, whether they
    # started just before the stop or in the window before the cluster noticed.
    failed = [r for r in before + window if not r[1]]
    assert len(failed) <= 3, failed
    assert len(after) >= 5 and all(ok for _, ok, _ in after), [r for r in after if not r[1]][:5]
    body = ready(service)
    assert body["status"] == "ready" and len(body["replicas"]) == 1, body  # the lost replica left the board

    cluster.add_node("node2", 2)  # the machine comes back: Serve starts the missing replicas on it
    wait_for(lambda: len([r for r in ready(service).get("replicas", []) if r["ready"]]) == 2, timeout=600, every=3,
             what="the second student replica to return")
    students = ready(service)["replicas"]
    assert len({r["node"] for r in students}) == 2
    seen = {ask(client)[1] for _ in range(30)}
    assert len(seen) == 2, seen


def test_a_two_worker_cycle_started_by_the_service_trains_across_both_nodes_and_publishes(
        service: Service, cluster: RayCluster, s3_endpoint: str) -> None:
    """The service's scheduler starts the cycle (POST /admin/train) on the joined cluster; the cycle runs with the
    service's settings (not the raylet's environment) and its two 1-CPU workers can only be placed one per node
    (each node's other CPU holds its student replica): it finishing shows training spread over both."""
    before = stored_versions(s3_endpoint)
    r = httpx.post(f"{service.url}/admin/train", timeout=60, headers=service.admin_headers())
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def ended() -> dict[str, Any] | None:
        job = httpx.get(f"{service.url}/admin/jobs/{job_id}", timeout=30, headers=service.admin_headers()).json()
        return job if job["status"] not in ("running", "queued") else None

    job = wait_for(ended, timeout=900, every=5, what=f"training job {job_id} to end")
    assert job["status"] == "succeeded", json.dumps(job)[:3000]
    train = job["metrics"]["train"]
    assert train["workers"] == 2 and train["sft_steps"] == 3 and len(train["sft_losses"]) == 3, train
    # Its own look at the object store: the candidate's files arrived there, under the cluster's prefix.
    assert stored_versions(s3_endpoint) - before == {job["candidate"]}, (job["candidate"], before)
