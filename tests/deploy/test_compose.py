"""deploy/compose.yaml checked by Compose itself (`docker compose config`; docker-compose where the Docker CLI
has no compose plugin, as on Debian 12): it parses, interpolates, refuses to start without its secrets, and every
file it mounts exists. No engine is needed for this (and none runs here: images are not built or started)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from services.config import Settings
from services.gateway.exposure import check_exposure

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SECRETS = {"POSTGRES_PASSWORD": "pw", "GRAFANA_ADMIN_PASSWORD": "admin", "DISTILLERY_ADMIN_KEY": "key",
           "DISTILLERY_API_KEYS": '["client-key"]'}


def compose_cmd() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "no compose: `make test` installs docker-compose (scripts/test-deps.sh)"
    return ["docker-compose"]


def config(*files: str, env: dict[str, str], env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [a for f in files for a in ("-f", f)] + (["--env-file", str(env_file)] if env_file else [])
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
    for key in ("DISTILLERY_ADMIN_KEY", "DISTILLERY_API_KEYS"):  # the service would serve 0.0.0.0 without them
        out = config("compose.yaml", env={k: v for k, v in SECRETS.items() if k != key})
        assert out.returncode != 0 and key in out.stdout + out.stderr


def test_generated_env_file_starts_a_keyed_service_and_is_never_overwritten(tmp_path: Path) -> None:
    script = tmp_path / "generate-env.sh"
    shutil.copy(DEPLOY / "generate-env.sh", script)
    assert subprocess.run(["sh", str(script)], capture_output=True).returncode == 0
    env_file = tmp_path / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    first = env_file.read_text()
    values = dict(line.split("=", 1) for line in first.splitlines())
    assert set(values) == set(SECRETS) and all(len(v) >= 64 for v in values.values())
    again = subprocess.run(["sh", str(script)], capture_output=True, text=True)
    assert again.returncode == 1 and "exists" in again.stderr and env_file.read_text() == first
    out = config("compose.yaml", env={}, env_file=env_file)  # Compose reads the file itself
    assert out.returncode == 0, out.stderr
    service_env = yaml.safe_load(out.stdout)["services"]["distillery"]["environment"]
    cfg = yaml.safe_load((DEPLOY / "distillery.yaml").read_text())
    server = Settings(**{**cfg, "server": {**cfg["server"], "admin_key": service_env["DISTILLERY_SERVER__ADMIN_KEY"],
                                           "api_keys": json.loads(service_env["DISTILLERY_SERVER__API_KEYS"])}}).server
    check_exposure(server)  # the service's own start check accepts what Compose passes on 0.0.0.0
    assert server.host == "0.0.0.0" and [k.get_secret_value() for k in server.api_keys] == json.loads(
        values["DISTILLERY_API_KEYS"])


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
