{{/* Names and labels. */}}
{{- define "distillery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "distillery.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "distillery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "distillery.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "distillery.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "distillery.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "distillery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "distillery.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "distillery.image" -}}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion .Values.image.flavor) .Values.image.tag -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* KubeRay names the RayService's Serve Service <rayservice>-serve-svc. */}}
{{- define "distillery.serveService" -}}
{{- printf "%s-serve-svc" (include "distillery.fullname" .) -}}
{{- end -}}

{{- define "distillery.internalUrl" -}}
{{- printf "http://%s.%s.svc:8000" (include "distillery.serveService" .) .Release.Namespace -}}
{{- end -}}

{{- define "distillery.claimName" -}}
{{- default (printf "%s-data" (include "distillery.fullname" .)) .Values.storage.persistence.existingClaim -}}
{{- end -}}

{{/*
"true" for the SQLite trial (database.allowSqlite without database.existingSecret): one Ray node, the head, which
takes the worker's resources, GPUs, placement and rayStartParams and runs everything (the service refuses to start
on several Ray nodes with SQLite, services/cluster.py). Empty otherwise: a head plus the `student` worker group.
*/}}
{{- define "distillery.singleNode" -}}
{{- if and .Values.database.allowSqlite (not .Values.database.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/*
A deployment's `replicas` setting (services/config.py Replicas) from its `serve.*` values: a fixed count of
`replicas`, or Ray Serve autoscaling between `minReplicas` and `maxReplicas` when the latter is above the former.
*/}}
{{- define "distillery.serveReplicas" -}}
{{- $r := dict -}}
{{- if gt (int .maxReplicas) (int .minReplicas) -}}
{{- $_ := set $r "min" (int .minReplicas) -}}
{{- $_ := set $r "max" (int .maxReplicas) -}}
{{- if .targetOngoingRequests }}{{ $_ := set $r "target_ongoing_requests" .targetOngoingRequests }}{{ end -}}
{{- else -}}
{{- $_ := set $r "num" (int .replicas) -}}
{{- end -}}
{{- if .maxPerNode }}{{ $_ := set $r "max_per_node" (int .maxPerNode) }}{{ end -}}
{{- toYaml $r -}}
{{- end -}}

{{/* The most replicas a `serve.*` entry may run (its fixed count, or its autoscaling maximum). */}}
{{- define "distillery.serveReplicasMost" -}}
{{- if gt (int .maxReplicas) (int .minReplicas) -}}{{ int .maxReplicas }}{{- else -}}{{ int .replicas }}{{- end -}}
{{- end -}}

{{/* The fewest replicas a `serve.*` entry runs (its fixed count, or its autoscaling minimum). */}}
{{- define "distillery.serveReplicasLeast" -}}
{{- if gt (int .maxReplicas) (int .minReplicas) -}}{{ int .minReplicas }}{{- else -}}{{ int .replicas }}{{- end -}}
{{- end -}}

{{/* "true" when more than one gateway replica may run: Prometheus then reads each one's own series apart. */}}
{{- define "distillery.gatewayReplicated" -}}
{{- if gt (int (include "distillery.serveReplicasMost" .Values.serve.gateway)) 1 -}}true{{- end -}}
{{- end -}}

{{/* The Distillery config file: the user's `config` with what the chart owns laid over it. */}}
{{- define "distillery.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $server := dict "host" "0.0.0.0" "port" 8000 "internal_url" (include "distillery.internalUrl" .) -}}
{{- $server = merge $server (default dict $cfg.server) -}}
{{- /* set, not merge: merge never lets a false value win */ -}}
{{- $_ := set $server "allow_anonymous" .Values.auth.allowAnonymous -}}
{{- $_ := set $cfg "server" $server -}}
{{- $_ := set $cfg "data_dir" .Values.storage.mountPath -}}
{{- /* Ray Serve replicas and proxies (the chart's `serve` values own these keys). */ -}}
{{- $_ := set $server "replicas" (include "distillery.serveReplicas" .Values.serve.gateway | fromYaml) -}}
{{- $_ := set $server "proxy_location" .Values.serve.proxyLocation -}}
{{- $storage := default dict $cfg.storage -}}
{{- with .Values.storage.s3 }}{{ if .url }}
{{- $_ := set $storage "adapters_url" .url -}}
{{- $_ := set $storage "s3_endpoint_url" (.endpoint | default nil) -}}
{{- $_ := set $storage "s3_region" .region -}}
{{- end }}{{ end -}}
{{- /* Adapters on the volume every Ray pod mounts: the service may span nodes (services/cluster.py). */ -}}
{{- if not .Values.storage.s3.url -}}
{{- $_ := set $storage "shared_volume" true -}}
{{- end -}}
{{- $_ := set $cfg "storage" $storage -}}
{{- $student := default dict $cfg.student -}}
{{- $_ := set $student "num_gpus" (ternary 1 0 (gt (int .Values.ray.worker.gpus) 0)) -}}
{{- $_ := set $student "replicas" (include "distillery.serveReplicas" .Values.serve.student | fromYaml) -}}
{{- $_ := set $cfg "student" $student -}}
{{- $debate := default dict $cfg.debate -}}
{{- $_ := set $debate "replicas" (include "distillery.serveReplicas" .Values.serve.debate | fromYaml) -}}
{{- $_ := set $cfg "debate" $debate -}}
{{- $training := default dict $cfg.training -}}
{{- $_ := set $training "enabled" (eq .Values.training.trigger "internal") -}}
{{- $trainGpus := ternary .Values.ray.worker.gpus .Values.training.trainer.gpus (eq .Values.training.trigger "internal") -}}
{{- $_ := set $training "use_gpu" (gt (int $trainGpus) 0) -}}
{{- $_ := set $cfg "training" $training -}}
{{- if .Values.teachers.endpoints -}}
{{- $teachers := list -}}
{{- range $i, $t := .Values.teachers.endpoints -}}
{{- $entry := dict "name" $t.name "model" $t.model "base_url_env" (printf "DISTILLERY_TEACHER_%d_URL" $i) "price_prompt_per_1k" ($t.pricePromptPer1k | default 0.0) "price_completion_per_1k" ($t.priceCompletionPer1k | default 0.0) -}}
{{- if $t.apiKeyKey -}}
{{- $_ := set $entry "api_key_env" (printf "DISTILLERY_TEACHER_%d_KEY" $i) -}}
{{- end -}}
{{- $entry = merge $entry (deepCopy ($t.options | default dict)) -}}
{{- $teachers = append $teachers $entry -}}
{{- end -}}
{{- $_ := set $cfg.debate "teachers" $teachers -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Environment of every Distillery container: the config file and the secrets it names. */}}
{{- define "distillery.env" -}}
- name: DISTILLERY_CONFIG
  value: /etc/distillery/config.yaml
- name: HF_HUB_OFFLINE
  value: "1"
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- if .Values.database.existingSecret }}
- name: DISTILLERY_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.existingSecret }}, key: {{ .Values.database.secretKey }}}
{{- end }}
- name: DISTILLERY_SERVER__ADMIN_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.auth.existingSecret }}, key: admin-key}
- name: DISTILLERY_SERVER__API_KEYS
  valueFrom:
    secretKeyRef: {name: {{ .Values.auth.existingSecret }}, key: api-keys{{ if .Values.auth.allowAnonymous }}, optional: true{{ end }}}
- name: DISTILLERY_SERVER__LABELLER_KEYS
  valueFrom:
    secretKeyRef: {name: {{ .Values.auth.existingSecret }}, key: labeller-keys, optional: true}
{{- /* Ray token auth on every Ray process (KubeRay's authOptions names the same Secret for its own calls and reads
the token from its `auth_token` key, hence that key's spelling). */}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ .Values.auth.existingSecret }}, key: auth_token}
- name: POD_IP
  valueFrom:
    fieldRef: {fieldPath: status.podIP}
{{- if and .Values.storage.s3.url .Values.storage.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ .Values.storage.s3.existingSecret }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.storage.s3.existingSecret }}, key: AWS_SECRET_ACCESS_KEY}
{{- end }}
{{- range $i, $t := .Values.teachers.endpoints }}
- name: {{ printf "DISTILLERY_TEACHER_%d_URL" $i }}
  valueFrom:
    secretKeyRef: {name: {{ $t.secretName }}, key: {{ $t.urlKey }}}
{{- if $t.apiKeyKey }}
- name: {{ printf "DISTILLERY_TEACHER_%d_KEY" $i }}
  valueFrom:
    secretKeyRef: {name: {{ $t.secretName }}, key: {{ $t.apiKeyKey }}}
{{- end }}
{{- end }}
{{- end -}}

{{/*
A Ray pod template. Args: root (the chart context), node ("head" | "worker"), container name, resources,
gpus, nodeSelector, tolerations, affinity, ports (bool: the head's Ray and Serve ports).
*/}}
{{- define "distillery.podTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "distillery.selectorLabels" $root | nindent 4 }}
    distillery.io/ray-node: {{ .node }}
  annotations:
    checksum/config: {{ include "distillery.config" $root | sha256sum }}
    {{- with $root.Values.podAnnotations }}{{ toYaml . | nindent 4 }}{{ end }}
spec:
  serviceAccountName: {{ include "distillery.serviceAccountName" $root }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets: {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext: {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .container }}
      image: {{ include "distillery.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      env: {{- include "distillery.env" $root | nindent 8 }}
      {{- if .ports }}
      ports:
        - {name: gcs-server, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        - {name: serve, containerPort: 8000}
        - {name: ray-metrics, containerPort: 8080}
      {{- /* KubeRay's default head probes ask localhost:8265, where the dashboard no longer listens (it is bound to
      the pod's address, rayStartParams dashboard-host). The same checks, on that address. */}}
      {{- $probe := dict "exec" (dict "command" (list "sh" "-c" "curl -fsS -m 2 http://127.0.0.1:52365/api/local_raylet_healthz | grep -q success && curl -fsS -m 2 http://${POD_IP}:8265/api/gcs_healthz | grep -q success")) "initialDelaySeconds" 30 "periodSeconds" 5 "timeoutSeconds" 5 "failureThreshold" 10 }}
      readinessProbe: {{- toYaml $probe | nindent 8 }}
      livenessProbe: {{- toYaml (merge (dict "failureThreshold" 120) $probe) | nindent 8 }}
      {{- end }}
      resources:
        {{- $res := deepCopy .resources }}
        {{- if gt (int .gpus) 0 }}
        {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $res.limits)) }}
        {{- end }}
        {{- toYaml $res | nindent 8 }}
      securityContext: {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - {name: config, mountPath: /etc/distillery, readOnly: true}
        - {name: data, mountPath: {{ $root.Values.storage.mountPath }}}
        - {name: dshm, mountPath: /dev/shm}
  volumes:
    - name: config
      configMap: {name: {{ include "distillery.fullname" $root }}-config}
    - name: data
      persistentVolumeClaim: {claimName: {{ include "distillery.claimName" $root }}}
    - name: dshm
      emptyDir: {medium: Memory, sizeLimit: {{ $root.Values.ray.shmSize }}}
  {{- with .nodeSelector }}
  nodeSelector: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .affinity }}
  affinity: {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
What the chart refuses to render: an open service (no auth Secret), SQLite opened from several pods or Ray nodes
(SQLite's locks do not hold across pods on a shared network volume, and services/cluster.py refuses SQLite on more
than one Ray node; the trial is one Ray pod), autoscaling bounds upside down, and more GPU student replicas than the
GPU workers can hold. Included by rayservice.yaml.
*/}}
{{- define "distillery.validate" -}}
{{- if not .Values.auth.existingSecret -}}
{{- fail (printf "auth.existingSecret is required: the API serves off loopback, so it needs an admin key, client keys (unless auth.allowAnonymous=true) and a Ray token. Create it with: kubectl -n %s create secret generic distillery-auth --from-literal=admin-key=$(openssl rand -hex 32) --from-literal=api-keys=\"[\\\"$(openssl rand -hex 32)\\\"]\" --from-literal=auth_token=$(openssl rand -hex 32), then set auth.existingSecret=distillery-auth" .Release.Namespace) -}}
{{- end -}}
{{- if not .Values.database.existingSecret -}}
{{- if not .Values.database.allowSqlite -}}
{{- fail "database.existingSecret is required: the head and every worker pod open the store, SQLite on a shared volume corrupts under writers in several pods, and the service refuses to start on several Ray nodes with SQLite. Put a Postgres URL (postgresql+psycopg://user:pass@host:5432/db) in a Secret and set database.existingSecret, or, for a single-pod trial only, set database.allowSqlite=true" -}}
{{- end -}}
{{- /* The trial is one Ray pod (distillery.singleNode): refuse what would need more pods, or a second writer. */ -}}
{{- $why := list -}}
{{- $students := int (include "distillery.serveReplicasMost" .Values.serve.student) -}}
{{- if gt $students 1 -}}
{{- $why = append $why (printf "serve.student may run %d replicas (replicas/maxReplicas > 1: a scale-out over worker pods)" $students) -}}
{{- end -}}
{{- if or (gt (int .Values.ray.worker.replicas) 1) (gt (int .Values.ray.worker.maxReplicas) 1) -}}
{{- $why = append $why (printf "ray.worker.replicas=%d/maxReplicas=%d ask for several worker pods" (int .Values.ray.worker.replicas) (int .Values.ray.worker.maxReplicas)) -}}
{{- end -}}
{{- if eq .Values.training.trigger "rayCronJob" -}}
{{- $why = append $why "training.trigger=rayCronJob writes the store from a Ray cluster of its own" -}}
{{- end -}}
{{- if $why -}}
{{- fail (printf "database.allowSqlite is a trial on one Ray pod (the head, with ray.worker's resources and GPUs; no worker group) with one student replica and internal training: SQLite is a file the service only opens from one Ray node. Here %s. Set database.existingSecret to a Secret with a Postgres URL" (join "; " $why)) -}}
{{- end -}}
{{- end -}}
{{- range $name := list "gateway" "student" -}}
{{- $r := index $.Values.serve $name -}}
{{- if gt (int $r.minReplicas) (int $r.maxReplicas) -}}
{{- fail (printf "serve.%s.minReplicas=%d exceeds serve.%s.maxReplicas=%d: equal values (the default) run a fixed serve.%s.replicas, maxReplicas above minReplicas autoscales between them" $name (int $r.minReplicas) $name (int $r.maxReplicas) $name) -}}
{{- end -}}
{{- end -}}
{{- /* Each student replica holds one whole GPU (student.num_gpus: 1), and only worker pods have GPUs (in the SQLite
trial, its one pod: ray.worker.maxReplicas is 1 there): more replicas than the workers' GPUs would wait for a GPU
forever. */ -}}
{{- $gpus := int .Values.ray.worker.gpus -}}
{{- if gt $gpus 0 -}}
{{- $least := int (include "distillery.serveReplicasLeast" .Values.serve.student) -}}
{{- $capacity := mul (int .Values.ray.worker.maxReplicas) $gpus -}}
{{- if .Values.serve.student.maxPerNode -}}
{{- $capacity = min $capacity (mul (int .Values.ray.worker.maxReplicas) (int .Values.serve.student.maxPerNode)) -}}
{{- end -}}
{{- if gt $least $capacity -}}
{{- fail (printf "serve.student asks for at least %d student replicas, but the GPU workers hold at most %d (ray.worker.maxReplicas=%d x ray.worker.gpus=%d, serve.student.maxPerNode=%d, 0: no limit): each replica needs a GPU of its own. Lower serve.student.replicas/minReplicas or add workers" $least $capacity (int .Values.ray.worker.maxReplicas) $gpus (int .Values.serve.student.maxPerNode)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Ray token auth (KubeRay >= 1.6): the operator signs its own dashboard calls with the token in this Secret. */}}
{{- define "distillery.rayAuth" -}}
authOptions:
  mode: token
  secretName: {{ .Values.auth.existingSecret }}
{{- end -}}

{{/* The dashboard (job and Serve REST API) listens on the pod's address only, never 0.0.0.0. */}}
{{- define "distillery.dashboardHost" -}}
dashboard-host: $(POD_IP)
{{- end -}}
