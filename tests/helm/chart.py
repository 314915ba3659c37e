"""The chart rendered by Helm's own engine (libhelm through helm-python-sdk), the pieces tests look at, and the
service started from the rendered RayService's Serve config."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml
from helm_python.chart import Chart

from tests.conftest import READY_TIMEOUT_S, Service, free_port
from tests.http_servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "distillery"
# The least the chart renders with: the auth Secret (admin key, client keys, Ray token) and the SQLite trial.
TRIAL: dict[str, Any] = {"auth": {"existingSecret": "distillery-auth"}, "database": {"allowSqlite": True}}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = Chart.load(CHART).render(values, name="prod", namespace="ml")
    docs = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterConfig") or spec.get("jobTemplate", {}).get("rayClusterSpec")
    if cluster is None:
        return []
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]


def config_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    return yaml.safe_load(cm["data"]["config.yaml"])


def start_rendered_service(model_dir: str, work: Path, extra_env: dict[str, str] | None = None,
                           values: dict[str, Any] | None = None) -> Service:
    """The service as the chart's RayService would start it: `serve run` on the rendered `serveConfigV2` (Ray
    Serve's controller imports `services.launcher:serve_app` and `teachers_app`), with the rendered Distillery
    config; only what must differ on this machine is moved (data dir, loopback port, the model's path, sizes)."""
    docs = render(values or TRIAL)
    port = free_port()
    cfg = config_of(docs)
    cfg["data_dir"] = str(work / "data")
    cfg["server"].update(host="127.0.0.1", port=port, internal_url=f"http://127.0.0.1:{port}")
    cfg["student"].update(model=model_dir, max_model_len=1024, kv_cache_gb=1, registry_poll_s=1)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    (svc,) = by_kind(docs, "RayService")
    serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
    serve_cfg["http_options"].update(host="127.0.0.1", port=port)
    (work / "serve.yaml").write_text(yaml.safe_dump(serve_cfg))
    env = {**os.environ, "DISTILLERY_CONFIG": str(work / "config.yaml"), "RAY_USAGE_STATS_ENABLED": "0",
           "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", **(extra_env or {})}
    log_path = work / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("serve")), "run", str(work / "serve.yaml")],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work)
    service = Service(f"http://127.0.0.1:{port}", work / "data", proc, log_path)
    try:
        wait_for(lambda: proc.poll() is not None or _ready(service.url), READY_TIMEOUT_S, "the RayService config")
        assert proc.poll() is None, f"serve run exited {proc.returncode}:\n{service.log_tail()}"
    except BaseException:
        stop_rendered_service(service)
        raise
    return service


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def stop_rendered_service(service: Service) -> None:
    # `serve run` tears Serve down on SIGINT; whatever Ray left in the process group goes after that.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        service.proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.proc.pid, signal.SIGKILL)
