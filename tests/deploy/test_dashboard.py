"""deploy/grafana/distillery.json is generated from deploy/grafana/dashboard.py and is a well-formed dashboard:
every query on the `${DS_PROMETHEUS}` input, unique panel ids, no overlapping panels, the annotations the issue
asks for. (That every query is valid Prometheus over exported series: test_prometheus_live.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.deploy.prom import dashboard_expressions

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = json.loads((DEPLOY / "grafana" / "distillery.json").read_text())


def test_json_is_generated_from_the_python_definitions() -> None:
    out = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "dashboard.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_every_query_uses_the_prometheus_input() -> None:
    assert [i["name"] for i in DASHBOARD["__inputs"]] == ["DS_PROMETHEUS"]
    (var,) = DASHBOARD["templating"]["list"]
    assert var["name"] == "DS_PROMETHEUS" and var["type"] == "datasource"  # so file provisioning resolves it too
    panels = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
    assert len(panels) >= 25
    for p in panels:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])


def test_layout_has_unique_ids_and_no_overlaps() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_the_panels_the_operators_asked_for() -> None:
    titles = " | ".join(p["title"] for p in DASHBOARD["panels"])
    for needed in ("Latency p50 / p99", "Time to first token", "Tokens per query by adapter version",
                   "Eval accuracy by adapter version", "Debates by outcome", "Teacher tokens", "Teacher cost",
                   "Peer-review acceptance", "Training runs", "Capture queue depth"):
        assert needed in titles, needed
    names = {a["name"] for a in DASHBOARD["annotations"]["list"]}
    assert {"Promotions", "Rollbacks"} <= names


def test_every_panel_query_and_annotation_is_listed_for_the_prometheus_test() -> None:
    found = dashboard_expressions()
    assert len(found) == sum(len(p.get("targets", [])) for p in DASHBOARD["panels"]) + 2
