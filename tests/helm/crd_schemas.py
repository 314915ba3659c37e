"""JSON schemas of the custom resources the chart renders, for checks without a cluster.

kubernetes-validate carries the Kubernetes OpenAPI schemas but no CRDs. These are transcribed from the fields'
Go types (KubeRay v1.6 `ray-operator/apis/ray/v1/{rayservice,rayjob,raycronjob,raycluster}_types.go`, Prometheus
Operator `monitoring.coreos.com/v1` PodMonitor/ServiceMonitor/PrometheusRule and `v1alpha1` ScrapeConfig,
`pkg/apis/monitoring/v1alpha1/scrapeconfig_types.go`), restricted to the fields those
types define at the levels the chart writes, with unknown fields rejected. Pod templates inside them are checked
separately, against Kubernetes' own Pod schema (tests/helm/test_chart.py)."""

from __future__ import annotations

from typing import Any


def obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
ANY_OBJ = {"type": "object"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name"], "properties": {"name": STR, "labels": STR_MAP,
                                                                   "annotations": STR_MAP}}
POD_TEMPLATE = obj({"metadata": ANY_OBJ, "spec": ANY_OBJ}, ("spec",))
HEAD_GROUP = obj({"rayStartParams": STR_MAP, "template": POD_TEMPLATE, "serviceType": STR,
                  "enableIngress": BOOL, "headService": ANY_OBJ}, ("template",))
WORKER_GROUP = obj({"groupName": STR, "replicas": INT, "minReplicas": INT, "maxReplicas": INT,
                    "rayStartParams": STR_MAP, "template": POD_TEMPLATE, "numOfHosts": INT, "suspend": BOOL,
                    "idleTimeoutSeconds": INT}, ("groupName", "template"))
AUTH_OPTIONS = obj({"mode": {"enum": ["disabled", "token"]}, "secretName": STR, "enableK8sTokenAuth": BOOL})
RAY_CLUSTER_SPEC = obj({"rayVersion": STR, "headGroupSpec": HEAD_GROUP, "authOptions": AUTH_OPTIONS,
                        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
                        "enableInTreeAutoscaling": BOOL, "autoscalerOptions": ANY_OBJ,
                        "headServiceAnnotations": STR_MAP, "suspend": BOOL, "gcsFaultToleranceOptions": ANY_OBJ},
                       ("headGroupSpec",))
RAY_JOB_SPEC = obj({"entrypoint": STR, "runtimeEnvYAML": STR, "jobId": STR, "metadata": STR_MAP,
                    "shutdownAfterJobFinishes": BOOL, "ttlSecondsAfterFinished": INT,
                    "activeDeadlineSeconds": INT, "backoffLimit": INT, "rayClusterSpec": RAY_CLUSTER_SPEC,
                    "clusterSelector": STR_MAP, "submissionMode": {"enum": ["K8sJobMode", "HTTPMode",
                                                                           "InteractiveMode", "SidecarMode"]},
                    "submitterPodTemplate": POD_TEMPLATE, "entrypointNumCpus": {"type": "number"},
                    "entrypointNumGpus": {"type": "number"}, "suspend": BOOL, "managedBy": STR},
                   ("entrypoint",))
RELABEL = {"type": "array", "items": obj({"targetLabel": STR, "replacement": STR, "sourceLabels":
                                          {"type": "array", "items": STR}, "action": STR, "regex": STR})}
PARAMS = {"type": "object", "additionalProperties": {"type": "array", "items": STR}}
ENDPOINT = obj({"port": STR, "path": STR, "params": PARAMS, "interval": STR, "scrapeTimeout": STR,
                "relabelings": RELABEL, "metricRelabelings": RELABEL, "scheme": STR, "honorLabels": BOOL}, ("port",))
HTTP_SD = obj({"url": {"type": "string", "pattern": "^http(s)?://.+$"}, "refreshInterval": STR,
               "authorization": ANY_OBJ, "basicAuth": ANY_OBJ, "tlsConfig": ANY_OBJ, "followRedirects": BOOL,
               "enableHTTP2": BOOL}, ("url",))
STATIC = obj({"targets": {"type": "array", "minItems": 1, "items": STR}, "labels": STR_MAP}, ("targets",))
SELECTOR = obj({"matchLabels": STR_MAP, "matchExpressions": {"type": "array"}})
RULE = obj({"record": STR, "alert": STR, "expr": STR, "for": STR, "labels": STR_MAP, "annotations": STR_MAP},
           ("expr",))

SPECS: dict[tuple[str, str], dict[str, Any]] = {
    ("ray.io/v1", "RayService"): obj({"serveConfigV2": STR, "rayClusterConfig": RAY_CLUSTER_SPEC,
                                       "upgradeStrategy": ANY_OBJ, "excludeHeadPodFromServeSvc": BOOL,
                                       "serveService": ANY_OBJ}, ("serveConfigV2", "rayClusterConfig")),
    ("ray.io/v1", "RayCronJob"): obj({"schedule": STR, "suspend": BOOL, "jobTemplate": RAY_JOB_SPEC},
                                      ("schedule", "jobTemplate")),
    ("monitoring.coreos.com/v1", "PodMonitor"): obj({"selector": SELECTOR, "podMetricsEndpoints": {
        "type": "array", "minItems": 1, "items": ENDPOINT}, "namespaceSelector": ANY_OBJ, "jobLabel": STR},
        ("selector", "podMetricsEndpoints")),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): obj({"selector": SELECTOR, "endpoints": {
        "type": "array", "minItems": 1, "items": ENDPOINT}, "namespaceSelector": ANY_OBJ, "jobLabel": STR},
        ("selector", "endpoints")),
    ("monitoring.coreos.com/v1alpha1", "ScrapeConfig"): obj({
        "jobName": STR, "staticConfigs": {"type": "array", "items": STATIC},
        "httpSDConfigs": {"type": "array", "items": HTTP_SD}, "relabelings": RELABEL, "metricRelabelings": RELABEL,
        "metricsPath": STR, "scrapeInterval": STR, "scrapeTimeout": STR, "honorLabels": BOOL, "params": PARAMS,
        "scheme": {"enum": ["HTTP", "HTTPS"]}}),
    ("monitoring.coreos.com/v1", "PrometheusRule"): obj({"groups": {"type": "array", "minItems": 1, "items": obj({
        "name": STR, "interval": STR, "rules": {"type": "array", "minItems": 1, "items": RULE}}, ("name", "rules"))}},
        ("groups",)),
}


def schema_for(api_version: str, kind: str) -> dict[str, Any] | None:
    spec = SPECS.get((api_version, kind))
    if spec is None:
        return None
    return obj({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA,
                "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))
