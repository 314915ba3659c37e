"""Distillery's Grafana dashboard, defined as Python panels and written to `deploy/grafana/distillery.json`.

    python deploy/grafana/dashboard.py           # regenerate the JSON
    python deploy/grafana/dashboard.py --check   # exit 1 if the JSON is out of date (the tests run this)

Edit the panels here, never the JSON. Every query uses the `${DS_PROMETHEUS}` datasource: an input when the
JSON is imported through Grafana's UI, and a datasource variable of the same name when it is provisioned from
a file (deploy/compose.yaml), so one file works both ways. Only the gateway's own series (`distillery_*`) are
used, so the dashboard needs nothing but the scrape job in deploy/prometheus/prometheus.yml.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("distillery.json")
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RATE = "$__rate_interval"


@dataclass
class Query:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat
    description: str = ""
    width: int = 8
    stack: bool = False
    min: float | None = 0
    max: float | None = None


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


def quantiles(metric: str, by: str = "") -> list[Query]:
    group = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [q(f"histogram_quantile({p}, sum by ({group}) (rate({metric}_bucket[{RATE}])))", f"{prefix}p{int(p * 100)}")
            for p in (0.5, 0.99)]


def mean_by(metric: str, by: str) -> Query:
    return q(f"sum by ({by}) (rate({metric}_sum[{RATE}])) / sum by ({by}) (rate({metric}_count[{RATE}]))",
             f"{{{{{by}}}}}")


ROWS = [
    Row("Traffic", [
        Panel("Requests per second by status", [q(f"sum by (status) (rate(distillery_requests_total[{RATE}]))",
                                                  "{{status}}")], "reqps", stack=True,
              description="Finished generation requests through the OpenAI-compatible API."),
        Panel("Server error ratio", [q(f'(sum(rate(distillery_requests_total{{status=~"5.."}}[{RATE}])) or vector(0)) '
                                       f"/ sum(rate(distillery_requests_total[{RATE}]))", "5xx share")],
              "percentunit", max=1, description="5xx among all finished requests (the alert fires above 5%)."),
        Panel("Requests in flight", [q("sum(distillery_requests_in_flight)", "in flight")]),
        Panel("Latency p50 / p99", quantiles("distillery_request_latency_seconds"), "s",
              description="End-to-end request latency, streaming or not."),
        Panel("Time to first token p50 / p99", quantiles("distillery_time_to_first_token_seconds"), "s"),
        Panel("Tokens per query by adapter version", [mean_by("distillery_tokens_per_query", "adapter")], "short",
              description="Mean prompt + completion tokens per request, by the version that served it."),
        Panel("Completion tokens per query by adapter version",
              [mean_by("distillery_completion_tokens_per_query", "adapter")], "short"),
        Panel("Generated tokens per second", [q(f"sum by (adapter) (rate(distillery_generation_tokens_total[{RATE}]))",
                                                "{{adapter}}")], "short", stack=True),
        Panel("Requests per second by task", [q(f"sum by (task, via) (rate(distillery_task_requests_total[{RATE}]))",
                                                "{{task}} ({{via}})")], "reqps", stack=True,
              description="Chat requests by task profile and how the task was recognised: metadata, rule, default, "
              "unknown (a metadata.task that is not configured, served as default)."),
        Panel("Captured requests dropped", [q(f"sum(rate(distillery_capture_dropped_total[{RATE}]))", "dropped/s")],
              "short", description="Finished requests the capture queue could not take (serving went on)."),
    ]),
    Row("Adapters and quality", [
        Panel("Eval accuracy by adapter version", [q("max by (version) (distillery_eval_accuracy)", "{{version}}")],
              "percentunit", max=1, width=12,
              description="Held-out accuracy measured by each training cycle's evaluation gate. Annotations mark "
              "promotions and rollbacks."),
        Panel("Eval tokens per query by adapter version",
              [q('max by (version) (distillery_eval_tokens_per_query{type="total"})', "{{version}}")], width=12),
        Panel("Eval accuracy by task and adapter version",
              [q("max by (task, version) (distillery_eval_task_accuracy)", "{{task}} {{version}}")], "percentunit",
              max=1, width=12, description="Each task's evaluation slice (its held-out traffic and golden set): the "
              "gate refuses a candidate that drops any task past its tolerance."),
        Panel("Eval tokens per query by task and adapter version",
              [q("max by (task, version) (distillery_eval_task_tokens_per_query)", "{{task}} {{version}}")],
              width=12),
        Panel("Live accuracy on labelled traffic", [q("max by (role, version) (distillery_live_accuracy)",
                                                      "{{role}} {{version}}")], "percentunit", max=1,
              description="Clients' labels (POST /v1/feedback) against served answers, since the last promotion."),
        Panel("Promoted version", [q("max by (version) (distillery_promoted_adapter_info)", "{{version}}")],
              kind="stat", description="What the `student` alias serves now."),
        Panel("Adapter swap time p99", [q(f"histogram_quantile(0.99, sum by (le, action) "
                                          f"(rate(distillery_adapter_swap_seconds_bucket[{RATE}])))", "{{action}}")],
              "s"),
    ]),
    Row("Debates", [
        Panel("Debates by outcome", [q(f"sum by (outcome) (increase(distillery_debates_total[{RATE}]))",
                                       "{{outcome}}")], stack=True),
        Panel("Capture queue depth", [q("max by (state) (distillery_capture_queue{state=~\"queued|running\"})",
                                        "{{state}}")],
              description="Captured requests waiting for or in a debate (the alert fires on steady growth)."),
        Panel("Usable MAGs", [q("max(distillery_mags_usable)", "usable MAGs")],
              description="Finished debates usable for training."),
        Panel("Teacher tokens per second", [q(f"sum by (agent, type) (rate(distillery_teacher_tokens_total[{RATE}]))",
                                              "{{agent}} {{type}}")], stack=True),
        Panel("Teacher cost (USD per hour)", [q(f"sum by (agent) (rate(distillery_teacher_cost_usd_total[{RATE}]))"
                                                " * 3600", "{{agent}}")], "currencyUSD", stack=True),
        Panel("Teacher failure ratio", [q(
            # `or 0 * total`: a teacher with no failures shows 0, not "no data".
            f'(sum by (agent) (rate(distillery_teacher_requests_total{{outcome="error"}}[{RATE}])) or 0 * sum by '
            f"(agent) (rate(distillery_teacher_requests_total[{RATE}]))) / sum by (agent) "
            f"(rate(distillery_teacher_requests_total[{RATE}]))", "{{agent}}")], "percentunit", max=1),
        Panel("Replies by how they were read", [q(
            f"sum by (agent, status) (rate(distillery_teacher_replies_total[{RATE}]))", "{{agent}} {{status}}")],
              stack=True, description="Answer replies per second: ok (graded), unparsed, abstained, truncated (never "
              "graded). A teacher with many unparsed replies writes a final-answer form the readers do not know."),
        Panel("Misconfigured teachers", [q("max by (agent) (distillery_teacher_misconfigured)", "{{agent}}")],
              max=1, description="1 while a teacher's endpoint refuses its requests with a 4xx (see the runbook)."),
        Panel("Teacher latency p99", [q(f"histogram_quantile(0.99, sum by (le, agent) "
                                        f"(rate(distillery_teacher_latency_seconds_bucket[{RATE}])))", "{{agent}}")],
              "s"),
        Panel("Peer-review acceptance", [
            q("max(distillery_peer_review_acceptance_ratio)", "accepted share"),
            q(f"sum by (result) (increase(distillery_peer_review_rationales_total[{RATE}])) / ignoring(result) "
              f"group_left sum(increase(distillery_peer_review_rationales_total[{RATE}]))", "{{result}} (window)")],
              "percentunit", max=1, description="FAIR: teacher rationales scored by the other teachers."),
        Panel("Distillation paused", [q("max(distillery_distillation_paused)", "paused")], kind="stat",
              description="1 while an operator has paused capture, debates and scheduled training."),
        Panel("Debate rounds p50", [q(f"histogram_quantile(0.5, sum by (le) (rate(distillery_debate_rounds_bucket"
                                      f"[{RATE}])))", "rounds")]),
    ]),
    Row("Training", [
        Panel("Training runs by outcome", [q("max by (outcome) (distillery_training_runs)", "{{outcome}}")],
              kind="stat", description="Cycles ever finished: promoted, not_promoted (gate said no), skipped, failed."),
        Panel("Training cycle running", [q("max(distillery_training_running)", "running")], max=1),
        Panel("Time since last successful cycle",
              [q("time() - max(distillery_training_last_success_timestamp_seconds > 0)", "since success")], "s",
              kind="stat"),
        Panel("Final train loss by stage", [q("max by (stage) (distillery_training_loss)", "{{stage}}")], min=None),
        Panel("Training data of the last cycle", [q("max by (kind) (distillery_training_data)", "{{kind}}")]),
        Panel("Promotions and rollbacks", [q("max by (kind) (distillery_adapter_promotions)", "{{kind}}")],
              kind="stat"),
    ]),
]

ANNOTATIONS = [
    ("Promotions", 'changes(distillery_adapter_promotions{kind="promote"}[2m]) > 0', "promote", "#73BF69"),
    ("Rollbacks", 'changes(distillery_adapter_promotions{kind="rollback"}[2m]) > 0', "rollback", "#F2495C"),
]


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "stacking": {"mode": "normal" if p.stack else "none", "group": "A"}}
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": ({"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                     "tooltip": {"mode": "multi", "sort": "none"}} if p.kind == "timeseries" else
                    {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                     "colorMode": "value", "graphMode": "none", "textMode": "value_and_name"}),
        "targets": [{"datasource": DS, "refId": chr(ord("A") + i), "expr": t.expr, "legendFormat": t.legend,
                     "range": True} for i, t in enumerate(p.queries)],
    }


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y = 0, y + 8
            panels.append(panel_json(p, pid, x, y))
            pid, x = pid + 1, x + p.width
        y += 8
    annotations = [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                    "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                    "type": "dashboard"}]
    annotations += [{"datasource": DS, "enable": True, "hide": False, "iconColor": color, "name": name,
                     "expr": expr, "step": "60s", "titleFormat": name[:-1], "tagKeys": "kind",
                     "textFormat": f"adapter {kind}", "useValueForTime": False}
                    for name, expr, kind, color in ANNOTATIONS]
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "Prometheus scraping "
                      "Distillery", "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
        "uid": "distillery",
        "title": "Distillery",
        "description": "Serving, debates and the training loop of a Distillery deployment. Generated by "
                       "deploy/grafana/dashboard.py: edit that, not this file.",
        "tags": ["distillery", "llm"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "annotations": {"list": annotations},
        "templating": {"list": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": "",
                                 "options": []}]},
        "panels": panels,
    }


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title or "annotation <name>", expr) of every Prometheus query in a dashboard JSON."""
    found = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [(f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    return found


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if deploy/grafana/distillery.json is out of date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run `python {Path(__file__).as_posix()}`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(expressions(build()))} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
