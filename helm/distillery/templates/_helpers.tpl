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

{{/* The Distillery config file: the user's `config` with what the chart owns laid over it. */}}
{{- define "distillery.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $server := dict "host" "0.0.0.0" "port" 8000 "internal_url" (include "distillery.internalUrl" .) -}}
{{- $_ := set $cfg "server" (merge $server (default dict $cfg.server)) -}}
{{- $_ := set $cfg "data_dir" .Values.storage.mountPath -}}
{{- with .Values.storage.s3 }}{{ if .url }}
{{- $_ := set $cfg "storage" (dict "adapters_url" .url "s3_endpoint_url" (.endpoint | default nil) "s3_region" .region) -}}
{{- end }}{{ end -}}
{{- $student := default dict $cfg.student -}}
{{- $_ := set $student "num_gpus" (ternary 1 0 (gt (int .Values.ray.worker.gpus) 0)) -}}
{{- $_ := set $cfg "student" $student -}}
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
{{- $debate := default dict $cfg.debate -}}
{{- $_ := set $debate "teachers" $teachers -}}
{{- $_ := set $cfg "debate" $debate -}}
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
{{- if .Values.auth.existingSecret }}
- name: DISTILLERY_SERVER__ADMIN_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.auth.existingSecret }}, key: admin-key}
- name: DISTILLERY_SERVER__API_KEYS
  valueFrom:
    secretKeyRef: {name: {{ .Values.auth.existingSecret }}, key: api-keys, optional: true}
{{- end }}
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
