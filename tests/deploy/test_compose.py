"""deploy/compose.yaml checked by Compose itself (`docker compose config`; docker-compose where the Docker CLI
has no compose plugin, as on Debian 12): it parses, interpolates, refuses to start without its secrets, and every
file it mounts exists. No engine is needed for this (and none runs here: images are not built or started)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from services.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SECRETS = {"POSTGRES_PASSWORD": "pw", "GRAFANA_ADMIN_PASSWORD": "admin", "DISTILLERY_ADMIN_KEY": "key"}


def compose_cmd() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "no compose: `make test` installs docker-compose (scripts/test-deps.sh)"
    return ["docker-compose"]


def config(*files: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = [a for f in files for a in ("-f", f)]
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([*compose_cmd(), *args, "config"], cwd=DEPLOY, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_compose_config_is_valid_and_mounts_what_exists() -> None:
    out = config("compose.yaml", env=SECRETS)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert set(cfg["services"]) == {"distillery", "postgres", "prometheus", "grafana"}
    d = cfg["services"]["distillery"]
    assert d["environment"]["DISTILLERY_DATABASE_URL"] == "postgresql+psycopg://distillery:pw@postgres:5432/distillery"
    assert d["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, svc in cfg["services"].items():
        for v in svc.get("volumes", []):
            src = v["source"] if isinstance(v, dict) else v.split(":")[0]
            if src.startswith("/"):  # a bind mount (named volumes have no slash)
                assert Path(src).exists(), f"{name} mounts missing {src}"
    grafana = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in cfg["services"]["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards/distillery.json"} <= grafana


def test_compose_refuses_to_start_without_its_secrets() -> None:
    out = config("compose.yaml", env={})
    assert out.returncode != 0 and "POSTGRES_PASSWORD" in out.stdout + out.stderr


def test_gpu_override_reserves_a_gpu() -> None:
    out = config("compose.yaml", "compose.gpu.yaml", env=SECRETS)
    assert out.returncode == 0, out.stderr
    d = yaml.safe_load(out.stdout)["services"]["distillery"]
    (dev,) = d["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["count"] == 1 and d["build"]["dockerfile"] == "deploy/Dockerfile.gpu"


def test_the_mounted_config_is_valid_distillery_config() -> None:
    settings = Settings(**yaml.safe_load((DEPLOY / "distillery.yaml").read_text()))
    assert settings.server.host == "0.0.0.0"


def test_dockerfiles_run_distillery_serve_as_non_root_on_a_volume() -> None:
    for flavor in ("cpu", "gpu"):
        text = (DEPLOY / f"Dockerfile.{flavor}").read_text()
        assert "USER 1000:1000" in text and 'VOLUME ["/var/lib/distillery"]' in text
        vllm = "cuda" if flavor == "gpu" else "cpu"
        assert 'CMD ["distillery", "serve"]' in text and f"DISTILLERY_VLLM={vllm}" in text
