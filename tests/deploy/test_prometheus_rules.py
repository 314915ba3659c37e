"""deploy/prometheus checked by Prometheus' own tool: the config and rules load, each alert fires on the failure
it is for and not on a healthy series (promtool's rule unit tests), and rules only use recordings that exist."""

from __future__ import annotations

import subprocess

from tests.deploy.prom import PROM_DIR, RULE_FILES, binary, metric_names, rule_expressions


def promtool(*args: str) -> str:
    out = subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_promtool_check_config_and_rules() -> None:
    assert "is valid prometheus config" in promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    report = promtool("check", "rules", *map(str, RULE_FILES))
    assert report.count("SUCCESS") == len(RULE_FILES)


def test_every_alert_fires_on_its_failure_and_not_on_a_healthy_service() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(PROM_DIR / "tests" / "alerts.test.yml"))


def test_alert_rules_are_all_unit_tested() -> None:
    tested = (PROM_DIR / "tests" / "alerts.test.yml").read_text()
    alerts = [name for name, _ in rule_expressions() if name.startswith("Distillery") and ":" not in name]
    assert alerts and all(f"alertname: {a}" in tested for a in alerts), "every alert needs a firing test case"


def test_recorded_series_used_anywhere_are_defined() -> None:
    recorded = {name for name, _ in rule_expressions() if ":" in name}
    used = {m for _, expr in rule_expressions() for m in metric_names(expr) if ":" in m}
    assert used <= recorded, f"undefined recording rules: {used - recorded}"
