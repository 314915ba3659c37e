"""A real Prometheus server (Debian's `prometheus`, installed by scripts/test-deps.sh) for tests, and what the
tests need of its HTTP API. It runs the repository's own scrape config and rule files, pointed at loopback."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
METRIC = re.compile(r"\b(distillery[_:][a-zA-Z0-9_:]*)")


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"`{name}` is not installed: `make test` installs it (scripts/test-deps.sh, Debian package prometheus)"
    return path


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, expr) of every recording and alerting rule in deploy/prometheus/rules."""
    out = []
    for f in RULE_FILES:
        for group in yaml.safe_load(f.read_text())["groups"]:
            out += [(r.get("alert") or r["record"], r["expr"]) for r in group["rules"]]
    return out


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expr) of every query in deploy/grafana/distillery.json, read by the generator's own helper."""
    spec = importlib.util.spec_from_file_location("dashboard", ROOT / "deploy" / "grafana" / "dashboard.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.expressions(json.loads(mod.OUT.read_text()))


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = r.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def series_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def metadata_types(self) -> dict[str, str]:
        """Metric families the targets expose (HELP/TYPE), even those with no sample yet."""
        return {m["metric"]: m["type"] for m in self.api("targets/metadata")}

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def loopback_config(target: str, out: Path, interval_s: int = 1) -> Path:
    """deploy/prometheus/prometheus.yml with its target replaced by `target` and fast intervals for a test."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval=f"{interval_s}s", evaluation_interval=f"{interval_s}s")
    cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg["rule_files"]]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "distillery"]
    job["static_configs"] = [{"targets": [target]}]
    path = out / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextmanager
def prometheus(config: Path, port: int, workdir: Path, ready_s: float = 60) -> Iterator[Prometheus]:
    log_path = workdir / "prometheus.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            assert proc.poll() is None, f"prometheus exited {proc.returncode}:\n{prom.log_tail()}"
            try:
                if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready in {ready_s}s:\n{prom.log_tail()}"
            time.sleep(0.5)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
