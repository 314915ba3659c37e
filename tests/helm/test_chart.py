"""helm/distillery checked without a cluster, with real tools from the registries.

Rendering and linting use Helm's own engine (helm-python-sdk embeds libhelm, Helm v4: the same template engine,
Sprig functions and values.schema.json validation as the `helm` binary). The rendered objects are checked with
kubernetes-validate (the Kubernetes OpenAPI schemas, unknown fields rejected); the custom resources' pod
templates against the Pod schema and their own fields against tests/helm/crd_schemas.py; the generated
Distillery config against the typed config; the Serve config against Ray Serve's own schema; the
PrometheusRule with promtool.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart, lint
from helm_python.errors import HelmError
from ray.serve.schema import ServeDeploySchema

from services.config import Settings
from tests.deploy.prom import binary
from tests.helm.chart import CHART, ROOT, TRIAL, by_kind, config_of, pod_templates, render
from tests.helm.crd_schemas import schema_for

K8S_VERSION = "1.30.0"
GPU = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
PRODUCTION = {"auth": {"existingSecret": "distillery-auth"}, "database": {"existingSecret": "distillery-postgres"}}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": TRIAL,
    "gpu": GPU,
    "cron-on-cpu-with-servicemonitor": {**PRODUCTION, "training": {"trigger": "rayCronJob"},
                                        "monitoring": {"podMonitor": {"enabled": False},
                                                       "serviceMonitor": {"enabled": True}}},
    "s3-adapters": {**TRIAL, "storage": {"s3": {"url": "s3://models/distillery",
                                                "endpoint": "http://minio.minio.svc:9000",
                                                "existingSecret": "distillery-s3"}}},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VARIANTS[request.param])


# ---- values and schema ------------------------------------------------------------------------------------------
def test_schema_accepts_both_values_files() -> None:
    chart = Chart.load(CHART)
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for values in (defaults, chart.merge_values(GPU)):
        jsonschema.validate(values, schema)  # the schema as a plain JSON Schema validator reads it
    chart.validate_schema({})  # and as Helm applies it, to the values merged over the defaults
    chart.validate_schema(GPU)


@pytest.mark.parametrize("bad, why", [
    ({"training": {"trigger": "cron"}}, "/training/trigger"),
    ({"ray": {"worker": {"gpus": 1}}}, "/image/flavor"),  # GPUs with the CPU image
    ({"storage": {"persistence": {"size": "lots"}}}, "/storage/persistence/size"),
    ({"teachers": {"endpoints": [{"name": "t", "model": "m"}]}}, "secretName"),
    ({"replicas": 3}, "replicas"),  # not a key of this chart
    ({"storage": {"s3": {"url": "/mnt/adapters"}}}, "/storage/s3/url"),
])
def test_schema_rejects_bad_values_with_the_key(bad: dict[str, Any], why: str) -> None:
    with pytest.raises(HelmError) as e:
        Chart.load(CHART).validate_schema(bad)
    assert why in str(e.value)


def test_helm_lint_is_clean_for_both_values_files() -> None:
    for values in (TRIAL, GPU):
        report = lint(CHART, values, strict=True, kube_version=f"v{K8S_VERSION}")
        assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2], report


# ---- every rendered object --------------------------------------------------------------------------------------
def test_every_object_is_valid_kubernetes(rendered) -> None:
    _, docs = rendered
    assert docs
    for doc in docs:
        kind, api = doc["kind"], doc["apiVersion"]
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        crd = schema_for(api, kind)
        if crd is None:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            continue
        jsonschema.validate(doc, crd)
        for tmpl in pod_templates(doc):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **tmpl["metadata"]},
                   "spec": tmpl["spec"]}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_the_expected_objects_exist(rendered) -> None:
    name, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("RayService") == 1 and "PersistentVolumeClaim" in kinds and "PrometheusRule" in kinds
    assert ("RayCronJob" in kinds) == (name in {"gpu", "cron-on-cpu-with-servicemonitor"})
    assert ("ServiceMonitor" in kinds) == (name == "cron-on-cpu-with-servicemonitor")
    assert ("PodMonitor" in kinds) == (name != "cron-on-cpu-with-servicemonitor")
    assert ("ScrapeConfig" in kinds) == (name == "gpu")  # the one variant with several gateway replicas


def test_distillery_config_is_accepted_by_the_typed_config(rendered) -> None:
    name, docs = rendered
    cfg = config_of(docs)
    settings = Settings(**cfg)
    assert str(settings.data_dir) == "/var/lib/distillery"
    assert settings.server.internal_url == "http://prod-distillery-serve-svc.ml.svc:8000"
    assert settings.training.enabled == (name in {"default", "s3-adapters"})  # else the cron job triggers
    assert settings.storage.adapters_url == ("s3://models/distillery" if name == "s3-adapters" else None)


def test_serve_config_is_valid_and_its_applications_import(rendered) -> None:
    _, docs = rendered
    (svc,) = by_kind(docs, "RayService")
    serve = ServeDeploySchema.model_validate(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    assert serve.proxy_location == "HeadOnly"
    for app in serve.applications:
        module, attr = app.import_path.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), app.import_path


def test_every_pod_reads_the_same_config_and_shared_volume(rendered) -> None:
    name, docs = rendered
    templates = [t for d in docs for t in pod_templates(d)]
    # The SQLite trial is one Ray pod; otherwise a head and a worker, and the training cluster's two with the cron job.
    assert len(templates) == {"default": 1, "s3-adapters": 1}.get(name, 4)
    claims = {v["persistentVolumeClaim"]["claimName"] for t in templates for v in t["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"prod-distillery-data"}  # adapters published by any job are readable by every replica
    for t in templates:
        (c,) = t["spec"]["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env["DISTILLERY_CONFIG"]["value"] == "/etc/distillery/config.yaml"
        assert t["spec"]["securityContext"]["runAsNonRoot"] is True


# ---- the GPU values file -----------------------------------------------------------------------------------------
def test_gpu_values_put_the_student_and_training_on_gpus_and_read_secrets() -> None:
    docs = render(GPU)
    (svc,) = by_kind(docs, "RayService")
    (worker,) = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (c,) = worker["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["image"].endswith(":0.1.0-gpu")
    (cron,) = by_kind(docs, "RayCronJob")
    (trainer,) = cron["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"]
    assert trainer["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--if-due" in cron["spec"]["jobTemplate"]["entrypoint"]
    cfg = config_of(docs)
    assert cfg["student"]["num_gpus"] == 1 and cfg["training"]["use_gpu"] is True
    assert [t["base_url_env"] for t in cfg["debate"]["teachers"]] == ["DISTILLERY_TEACHER_0_URL",
                                                                       "DISTILLERY_TEACHER_1_URL"]
    reasoner = Settings(**cfg).debate.teachers[1]  # per-teacher options reach the typed config
    assert (reasoner.max_tokens_param, reasoner.send_temperature, reasoner.max_tokens) == (
        "max_completion_tokens", False, 4096)
    env = {e["name"]: e for e in c["env"]}
    assert env["DISTILLERY_TEACHER_0_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "distillery-teachers",
                                                                           "key": "teacher-a-key"}
    assert env["DISTILLERY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "distillery-postgres"
    assert "value" not in env["DISTILLERY_SERVER__ADMIN_KEY"]  # from the Secret, never inline
    apps = [a["name"] for a in yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]]
    assert apps == ["distillery"]  # real teachers: no built-in reference teachers application


# ---- monitoring objects are the repository's files ------------------------------------------------------------
def test_prometheus_rule_is_deploy_prometheus_rules_and_passes_promtool(tmp_path) -> None:
    (rule,) = by_kind(render(TRIAL), "PrometheusRule")
    files = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
    expected = [g for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    assert sorted(rule["spec"]["groups"], key=lambda g: g["name"]) == sorted(expected, key=lambda g: g["name"])
    out = tmp_path / "rules.yml"
    out.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([binary("promtool"), "check", "rules", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_configmap_is_the_generated_dashboard() -> None:
    (cm,) = [d for d in by_kind(render(TRIAL), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["distillery.json"]) == json.loads(
        (ROOT / "deploy" / "grafana" / "distillery.json").read_text())


def test_s3_credentials_come_from_their_secret() -> None:
    docs = render(VARIANTS["s3-adapters"])
    for t in [t for d in docs for t in pod_templates(d)]:
        env = {e["name"]: e for e in t["spec"]["containers"][0]["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "distillery-s3",
                                                                             "key": "AWS_SECRET_ACCESS_KEY"}
    assert config_of(docs)["storage"]["s3_endpoint_url"] == "http://minio.minio.svc:9000"


def test_every_value_is_documented_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    table = readme[readme.index("## Values"):readme.index("## How it fits together")]

    def leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            path = f"{prefix}{k}"
            if isinstance(v, dict) and v and k not in {"resources", "labels", "annotations", "config",
                                                       "podSecurityContext", "securityContext"}:
                out += leaves(v, f"{path}.")
            else:
                out.append(path)
        return out

    documented = set()
    for row in table.splitlines()[4:]:  # past the heading and the table header
        if not row.startswith("| `"):
            continue
        names = [n.strip().strip("`") for n in row.split("|")[1].split(",")]
        parent = names[0].rpartition(".")[0]
        documented |= {f"{parent}{n}" if n.startswith(".") else n for n in names}

    missing = [k for k in leaves(yaml.safe_load((CHART / "values.yaml").read_text())) if k not in documented]
    assert not missing, f"values without a line in helm/distillery/README.md: {missing}"


def test_pod_annotations_reach_every_ray_pod() -> None:
    docs = render({**PRODUCTION, "podAnnotations": {"secrets-rotated": "1700000000"},
                   "training": {"trigger": "rayCronJob"}})
    templates = [t for d in docs for t in pod_templates(d)]
    assert len(templates) == 4 and all(t["metadata"]["annotations"]["secrets-rotated"] == "1700000000"
                                       for t in templates)


# ---- replicas (docs/scaling.md) ---------------------------------------------------------------------------------
def test_replica_values_reach_the_config_as_ray_serve_options() -> None:
    serve = {"proxyLocation": "EveryNode",
             "gateway": {"replicas": 1, "minReplicas": 2, "maxReplicas": 6, "targetOngoingRequests": 16},
             "student": {"replicas": 3, "maxPerNode": 1},
             "debate": {"replicas": 2}}
    settings = Settings(**config_of(render({**PRODUCTION, "serve": serve})))
    assert settings.server.replicas.serve_options() == {"autoscaling_config": {
        "min_replicas": 2, "max_replicas": 6, "initial_replicas": 2, "target_ongoing_requests": 16}}
    assert settings.student.replicas.serve_options() == {"num_replicas": 3, "max_replicas_per_node": 1}
    assert settings.debate.replicas.serve_options() == {"num_replicas": 2}
    assert settings.server.proxy_location == "EveryNode"
    (svc,) = by_kind(render({**PRODUCTION, "serve": serve}), "RayService")
    assert yaml.safe_load(svc["spec"]["serveConfigV2"])["proxy_location"] == "EveryNode"
    # The defaults: one of each, no autoscaling, the head's proxy.
    defaults = Settings(**config_of(render(TRIAL)))
    for replicas in (defaults.server.replicas, defaults.student.replicas, defaults.debate.replicas):
        assert replicas.serve_options() == {"num_replicas": 1}
    assert defaults.server.proxy_location == "HeadOnly"
    # The GPU file: two students, one per GPU worker; two gateways.
    gpu = Settings(**config_of(render(GPU)))
    assert gpu.student.replicas.serve_options() == {"num_replicas": 2, "max_replicas_per_node": 1}
    assert gpu.server.replicas.serve_options()["num_replicas"] == 2


def test_equal_bounds_are_a_fixed_count_and_the_chart_owns_the_replica_keys() -> None:
    values = {**PRODUCTION, "serve": {"student": {"replicas": 2, "minReplicas": 3, "maxReplicas": 3}},
              "config": {"student": {"replicas": {"num": 9}}}}
    assert config_of(render(values))["student"]["replicas"] == {"num": 2}


def test_the_volume_is_declared_shared_unless_adapters_go_to_s3() -> None:
    on_volume = Settings(**config_of(render(TRIAL)))
    assert on_volume.storage.shared_volume is True and on_volume.storage.adapters_url is None
    on_s3 = config_of(render(VARIANTS["s3-adapters"]))["storage"]
    assert "shared_volume" not in on_s3 and Settings(storage=on_s3).storage.shared_volume is False
    # The chart's keys are laid over the user's storage settings, not instead of them.
    kept = config_of(render({**TRIAL, "config": {"storage": {"max_adapter_bytes": 1024**3}}}))["storage"]
    assert kept == {"max_adapter_bytes": 1024**3, "shared_volume": True}


@pytest.mark.parametrize("gateway, replicated", [
    ({"replicas": 1}, False),
    ({"replicas": 3}, True),
    ({"replicas": 1, "minReplicas": 1, "maxReplicas": 4}, True),  # autoscaling up to 4
    ({"replicas": 1, "minReplicas": 0, "maxReplicas": 1}, False),  # autoscaling, never more than one
])
def test_several_gateway_replicas_are_scraped_one_by_one(gateway: dict[str, Any], replicated: bool) -> None:
    docs = render({**PRODUCTION, "serve": {"gateway": gateway}})
    (monitor,) = by_kind(docs, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    scrape = by_kind(docs, "ScrapeConfig")
    (policy,) = by_kind(docs, "NetworkPolicy")
    metrics_rules = [r for r in policy["spec"]["ingress"] if any(p.get("endPort") for p in r.get("ports", []))]
    if not replicated:  # one gateway: everything at the head's /metrics, as before
        assert "params" not in endpoint and scrape == [] and metrics_rules == []
        return
    assert endpoint["params"] == {"part": ["shared"]}  # the series every replica reports alike, once
    (sc,) = scrape
    jsonschema.validate(sc, schema_for(sc["apiVersion"], sc["kind"]))
    assert sc["spec"]["httpSDConfigs"] == [{"url": "http://prod-distillery-serve-svc.ml.svc:8000/metrics/targets",
                                            "refreshInterval": "30s"}]
    assert sc["spec"]["relabelings"] == [{"targetLabel": "job", "replacement": "distillery-replicas"}]
    # The replicas' own ports (the kernel picks them) open to Prometheus' pods alone.
    (rule,) = metrics_rules
    assert rule["ports"] == [{"protocol": "TCP", "port": 32768, "endPort": 60999}]
    assert rule["from"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "prometheus"}}}]
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)


def test_the_service_monitor_reads_the_shared_part_too() -> None:
    docs = render({**PRODUCTION, "serve": {"gateway": {"replicas": 2}},
                   "monitoring": {"podMonitor": {"enabled": False}, "serviceMonitor": {"enabled": True}}})
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["params"] == {"part": ["shared"]}
    assert len(by_kind(docs, "ScrapeConfig")) == 1
    docs = render({**PRODUCTION, "serve": {"gateway": {"replicas": 2}}, "monitoring": {"scrapeConfig": {
        "enabled": False}}})
    assert by_kind(docs, "ScrapeConfig") == []


@pytest.mark.parametrize("values, why", [
    ({"serve": {"student": {"replicas": 1, "minReplicas": 3, "maxReplicas": 2}}}, "serve.student.minReplicas=3"),
    ({"serve": {"gateway": {"replicas": 1, "minReplicas": 2, "maxReplicas": 1}}}, "serve.gateway.minReplicas=2"),
    # GPU workers: at most 4 pods x 1 GPU; 5 students never fit.
    ({"serve": {"student": {"replicas": 5}}}, "at least 5 student replicas"),
    ({"serve": {"student": {"replicas": 1, "minReplicas": 5, "maxReplicas": 8}}}, "at least 5 student replicas"),
])
def test_replica_counts_that_cannot_run_refuse_to_render(values: dict[str, Any], why: str) -> None:
    with pytest.raises(HelmError) as e:
        render(_over(GPU, values))
    assert why in str(e.value)


def _over(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _over(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
