"""The chart's control plane and its secure defaults, checked on the real chart rendered by Helm's engine: Ray
token auth on every Ray container, the dashboard off 0.0.0.0, only the serving port in the Serve Service, a
NetworkPolicy that keeps Ray's ports inside the release, renders refused when the service would be open or
SQLite would be opened from several pods, and the SQLite trial on the one Ray node the service accepts it on."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from helm_python.errors import HelmError

from services.cluster import StateNotShared, check_shared_state
from services.config import Settings
from services.gateway.exposure import check_exposure
from tests.helm.chart import TRIAL, by_kind, config_of, pod_templates, render
from tests.helm.crd_schemas import schema_for

K8S_VERSION = "1.30.0"
SECRET = "distillery-auth"
PRODUCTION = {"auth": {"existingSecret": SECRET}, "database": {"existingSecret": "distillery-postgres"}}
CRON = {**PRODUCTION, "training": {"trigger": "rayCronJob"}}
RAY_PORTS = {6379, 8265, 10001}


def containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container of every Ray pod, the RayJob submitter's included."""
    out = [c for d in docs for t in pod_templates(d) for c in t["spec"]["containers"]]
    for cron in by_kind(docs, "RayCronJob"):
        out += cron["spec"]["jobTemplate"]["submitterPodTemplate"]["spec"]["containers"]
    return out


def clusters(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["rayClusterConfig"] for d in by_kind(docs, "RayService")] + [
        d["spec"]["jobTemplate"]["rayClusterSpec"] for d in by_kind(docs, "RayCronJob")]


def refusal(values: dict[str, Any]) -> str:
    with pytest.raises(HelmError) as e:
        render(values)
    return str(e.value)


# ---- Ray's control plane -------------------------------------------------------------------------------------------
def test_every_ray_container_runs_token_auth_from_the_secret() -> None:
    docs = render(CRON)
    found = containers(docs)
    assert len(found) == 5  # head, worker; the training cluster's head, trainer and job submitter
    for c in found:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "auth_token"}
        assert "value" not in env["RAY_AUTH_TOKEN"]  # never inline
    # KubeRay signs its own dashboard calls (Serve config, job submission) with the same Secret.
    assert [c["authOptions"] for c in clusters(docs)] == [{"mode": "token", "secretName": SECRET}] * 2


def test_the_dashboard_listens_on_the_pod_address_and_the_head_probes_follow_it() -> None:
    docs = render(CRON)
    for cluster in clusters(docs):
        head = cluster["headGroupSpec"]
        assert head["rayStartParams"]["dashboard-host"] == "$(POD_IP)"  # expanded by the kubelet from the env
        (c,) = head["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        for probe in (c["readinessProbe"], c["livenessProbe"]):
            script = probe["exec"]["command"][-1]
            assert "http://${POD_IP}:8265/api/gcs_healthz" in script and "localhost:8265" not in script
    assert "0.0.0.0" not in str([c["headGroupSpec"]["rayStartParams"] for c in clusters(docs)])


def test_only_the_serving_port_leaves_the_release() -> None:
    docs = render(PRODUCTION)
    (svc,) = by_kind(docs, "RayService")
    serve = svc["spec"]["serveService"]
    assert serve["metadata"]["name"] == "prod-distillery-serve-svc" and serve["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in serve["spec"]["ports"]] == [8000]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Service", **serve}, K8S_VERSION, strict=True)
    (head,) = [t for t in pod_templates(svc) if t["metadata"]["labels"]["distillery.io/ray-node"] == "head"]
    assert head["spec"]["containers"][0]["ports"]  # the Ray ports stay on the head, for the release itself
    assert [d for d in docs if d["kind"] == "Service"] == []  # no other Service (LoadBalancer, NodePort, ...)


def test_the_network_policy_keeps_ray_ports_inside_the_release() -> None:
    docs = render(CRON)
    (policy,) = by_kind(docs, "NetworkPolicy")
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    # It selects every Ray pod of the release (serving, training and the job submitter) and nothing else.
    templates = [t for d in docs for t in pod_templates(d)] + [
        c["spec"]["jobTemplate"]["submitterPodTemplate"] for c in by_kind(docs, "RayCronJob")]
    assert len(templates) == 5
    assert all(selector.items() <= t["metadata"]["labels"].items() for t in templates)
    assert selector == {"app.kubernetes.io/name": "distillery", "app.kubernetes.io/instance": "prod"}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    any_port = [r for r in rules if "ports" not in r]
    assert any_port == [{"from": [{"podSelector": {"matchLabels": selector}}]}]  # the release's own pods only
    open_ports = {p["port"] for r in rules if "from" not in r for p in r["ports"]}
    assert open_ports == {8000}  # from anywhere: the serving port alone
    operator = [r for r in rules if "from" in r and "ports" in r]
    assert {p["port"] for r in operator for p in r["ports"]} == {8265, 8000}  # Serve config, jobs; proxy health
    assert operator[0]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    reachable_from_outside = {p["port"] for r in rules if r not in any_port for p in r["ports"]}
    assert not reachable_from_outside & (RAY_PORTS - {8265})


def test_the_serving_port_can_be_limited_to_given_peers() -> None:
    ingress = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    (policy,) = by_kind(render({**PRODUCTION, "networkPolicy": {"serveFrom": [ingress]}}), "NetworkPolicy")
    (serve,) = [r for r in policy["spec"]["ingress"] if r.get("ports") == [{"protocol": "TCP", "port": 8000}]]
    assert serve["from"] == [ingress]
    assert by_kind(render({**PRODUCTION, "networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_the_job_submitter_is_a_valid_pod_of_the_release() -> None:
    (cron,) = by_kind(render(CRON), "RayCronJob")
    tmpl = cron["spec"]["jobTemplate"]["submitterPodTemplate"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **tmpl["metadata"]}, "spec": tmpl["spec"]}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert tmpl["spec"]["restartPolicy"] == "Never" and tmpl["spec"]["securityContext"]["runAsNonRoot"] is True


# ---- secure defaults: the chart refuses to render an open service ------------------------------------------------
def test_no_auth_secret_refuses_to_render_and_names_the_fix() -> None:
    message = refusal({"database": {"allowSqlite": True}})
    assert "auth.existingSecret is required" in message
    assert "kubectl -n ml create secret generic distillery-auth" in message
    assert all(k in message for k in ("admin-key=", "api-keys=", "auth_token="))
    # allowAnonymous does not lift it: the admin key and the Ray token are still needed off loopback.
    assert "auth.existingSecret is required" in refusal(
        {"database": {"allowSqlite": True}, "auth": {"allowAnonymous": True}})


def test_the_rendered_service_config_passes_the_services_exposure_check() -> None:
    docs = render(PRODUCTION)
    (worker,) = [c for c in containers(docs) if c["name"] == "ray-worker"]
    env = {e["name"]: e for e in worker["env"]}
    assert env["DISTILLERY_SERVER__ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "admin-key"}
    assert env["DISTILLERY_SERVER__API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "api-keys"}
    assert env["DISTILLERY_SERVER__LABELLER_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": SECRET, "key": "labeller-keys", "optional": True}
    cfg = config_of(docs)
    assert cfg["server"]["host"] == "0.0.0.0" and cfg["server"]["allow_anonymous"] is False
    # The pod's settings as the Secret fills them: the service's own start check accepts them.
    check_exposure(Settings(**{**cfg, "server": {**cfg["server"], "admin_key": "a" * 64,
                                                 "api_keys": ["c" * 64]}}).server)


def test_allow_anonymous_renders_with_optional_client_keys_and_tells_the_service() -> None:
    docs = render({**PRODUCTION, "auth": {"existingSecret": SECRET, "allowAnonymous": True}})
    cfg = config_of(docs)
    assert cfg["server"]["allow_anonymous"] is True
    for c in containers(docs):
        env = {e["name"]: e for e in c["env"]}
        assert env["DISTILLERY_SERVER__API_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True
        assert "optional" not in env["DISTILLERY_SERVER__ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    check_exposure(Settings(**{**cfg, "server": {**cfg["server"], "admin_key": "a" * 64}}).server)


def test_a_user_config_cannot_turn_anonymous_access_on_behind_the_charts_back() -> None:
    docs = render({**PRODUCTION, "config": {"server": {"allow_anonymous": True}}})
    assert config_of(docs)["server"]["allow_anonymous"] is False


# ---- the store: Postgres when several pods open it ---------------------------------------------------------------
@pytest.mark.parametrize("values", [
    {"auth": {"existingSecret": SECRET}},  # head + worker pods both open the store
    {**TRIAL, "ray": {"worker": {"replicas": 2, "minReplicas": 1, "maxReplicas": 2, "gpus": 0,
                                 "resources": {}}}},
    {**TRIAL, "ray": {"worker": {"replicas": 1, "minReplicas": 1, "maxReplicas": 3, "gpus": 0,
                                 "resources": {}}}},
    {**TRIAL, "training": {"trigger": "rayCronJob"}},  # the training cluster's pods and the serving pods
    {**TRIAL, "serve": {"student": {"replicas": 2}}},  # a scale-out over worker pods the trial does not have
    {**TRIAL, "serve": {"student": {"replicas": 1, "minReplicas": 1, "maxReplicas": 2}}},
], ids=["no-database", "sqlite-2-workers", "sqlite-autoscaling", "sqlite-with-raycronjob", "sqlite-2-students",
        "sqlite-autoscaled-students"])
def test_sqlite_opened_from_several_pods_refuses_to_render(values: dict[str, Any]) -> None:
    message = refusal(values)
    assert "database.existingSecret" in message and "Postgres" in message


def test_a_trial_refusal_names_every_reason() -> None:
    message = refusal({**TRIAL, "serve": {"student": {"replicas": 3}}, "training": {"trigger": "rayCronJob"}})
    assert "one Ray pod" in message and "serve.student may run 3 replicas" in message
    assert "training.trigger=rayCronJob" in message and "ray.worker.replicas" not in message


def _ray_nodes(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    (svc,) = by_kind(docs, "RayService")
    jsonschema.validate(svc, schema_for(svc["apiVersion"], svc["kind"]))
    cluster = svc["spec"]["rayClusterConfig"]
    return cluster["headGroupSpec"], cluster.get("workerGroupSpecs", [])


def test_the_sqlite_trial_is_one_ray_node_carrying_the_worker_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    # The service refuses SQLite on more than one Ray node (services/cluster.py): the trial has no worker group.
    monkeypatch.delenv("DISTILLERY_DATABASE_URL", raising=False)  # the pods' environment: no Postgres URL
    worker = {"replicas": 1, "minReplicas": 1, "maxReplicas": 1, "gpus": 1,
              "resources": {"requests": {"cpu": "6", "memory": "20Gi"}, "limits": {"cpu": "12", "memory": "40Gi"}},
              "nodeSelector": {"nvidia.com/gpu.present": "true"},
              "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    for values, gpus in ((TRIAL, 0), ({**TRIAL, "image": {"flavor": "gpu"}, "ray": {"worker": worker}}, 1)):
        docs = render(values)
        head, workers = _ray_nodes(docs)
        assert workers == []
        assert [t["metadata"]["labels"]["distillery.io/ray-node"] for d in docs for t in pod_templates(d)] == ["head"]
        # Like the worker, the head leaves its CPUs and GPUs to KubeRay (from the container's limits): not 0 CPUs.
        assert head["rayStartParams"] == {"dashboard-host": "$(POD_IP)"}
        spec = head["template"]["spec"]
        (c,) = spec["containers"]
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec},
                                     K8S_VERSION, strict=True)
        expected = values.get("ray", {}).get("worker", {}).get("resources") or {
            "requests": {"cpu": "4", "memory": "24Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}}
        assert c["resources"]["requests"] == expected["requests"]
        assert c["resources"]["limits"] == ({**expected["limits"], "nvidia.com/gpu": 1} if gpus else expected["limits"])
        assert c["name"] == "ray-head" and {p["containerPort"] for p in c["ports"]} >= {6379, 8265, 8000}
        if gpus:  # placed where the worker would have been
            assert spec["nodeSelector"] == worker["nodeSelector"] and spec["tolerations"] == worker["tolerations"]
        settings = Settings(**config_of(docs))
        assert settings.student.num_gpus == gpus and settings.training.enabled is True
        assert settings.training.use_gpu is bool(gpus)
        assert settings.db_url.startswith("sqlite")  # no DISTILLERY_DATABASE_URL: the file on the volume
        check_shared_state(settings, 1)  # the one node the trial has is what the service accepts
        with pytest.raises(StateNotShared, match="SQLite"):
            check_shared_state(settings, 2)  # the head + worker layout it had before


def test_with_postgres_the_head_and_the_worker_group_stay_apart() -> None:
    # Postgres (allowSqlite or not): the head advertises 0 CPUs and the `student` worker group does the work.
    for values in (PRODUCTION, {**PRODUCTION, "database": {"existingSecret": "distillery-postgres",
                                                           "allowSqlite": True}}):
        head, workers = _ray_nodes(render(values))
        assert head["rayStartParams"] == {"num-cpus": "0", "dashboard-host": "$(POD_IP)"}
        assert head["template"]["spec"]["containers"][0]["resources"] == {
            "requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}}
        (worker,) = workers
        assert (worker["groupName"], worker["replicas"], worker["rayStartParams"]) == ("student", 1, {})
        assert worker["template"]["spec"]["containers"][0]["resources"] == {
            "requests": {"cpu": "4", "memory": "24Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}}


def test_postgres_or_the_single_pod_trial_render() -> None:
    scaled = {"worker": {"replicas": 2, "minReplicas": 1, "maxReplicas": 4, "gpus": 0, "resources": {}}}
    docs = render({**CRON, "ray": scaled})
    assert Settings(**config_of(docs))  # Postgres: any number of pods, the cron job too
    env = {e["name"]: e for e in containers(docs)[0]["env"]}
    assert env["DISTILLERY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "distillery-postgres"
    trial = render(TRIAL)
    assert by_kind(trial, "RayService") and not by_kind(trial, "RayCronJob")
    assert "DISTILLERY_DATABASE_URL" not in {e["name"] for c in containers(trial) for e in c["env"]}
