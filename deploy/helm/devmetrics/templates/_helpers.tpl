{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "devmetrics.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, with the chart's unless it already has it. */}}
{{- define "devmetrics.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "devmetrics.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "devmetrics.selectorLabels" -}}
app.kubernetes.io/name: {{ include "devmetrics.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "devmetrics.labels" -}}
helm.sh/chart: {{ include "devmetrics.chart" . }}
{{ include "devmetrics.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: devmetrics
{{- end }}

{{- define "devmetrics.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "devmetrics.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "devmetrics.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* The Secret mounted under secretsMountPath: existingSecret, else the chart's (when `secrets`). */}}
{{- define "devmetrics.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.secrets }}
{{- include "devmetrics.fullname" . }}
{{- end }}
{{- end }}

{{/* The Secret holding the HA connection URLs the chart writes (ha.redis.url, ha.queue.rabbitmq.url). */}}
{{- define "devmetrics.haSecretName" -}}
{{- printf "%s-ha" (include "devmetrics.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where the Redis URL file is mounted in HA mode. */}}
{{- define "devmetrics.haMountPath" -}}
/etc/devmetrics-ha
{{- end }}

{{/* Whether the chart provides storage.redis.url_file (ha.redis.url or ha.redis.existingSecret). */}}
{{- define "devmetrics.haRedisFromChart" -}}
{{- if and .Values.ha.enabled (or .Values.ha.redis.url .Values.ha.redis.existingSecret) }}true{{ end }}
{{- end }}

{{/* Whether the chart provides DEVMETRICS_QUEUE__RABBITMQ__URL. */}}
{{- define "devmetrics.haRabbitFromChart" -}}
{{- if and .Values.ha.enabled (eq .Values.ha.queue.backend "rabbitmq") (or .Values.ha.queue.rabbitmq.url .Values.ha.queue.rabbitmq.existingSecret) }}true{{ end }}
{{- end }}

{{/* The port of an address such as ":10477", "0.0.0.0:10477" or "[::]:10477". */}}
{{- define "devmetrics.portOf" -}}
{{- regexFind "[0-9]+$" . }}
{{- end }}

{{/* The metrics port: the first of config.web.listen_addresses, else service.port. */}}
{{- define "devmetrics.metricsPort" -}}
{{- $addrs := dig "web" "listen_addresses" list (.Values.config | default dict) }}
{{- if kindIs "string" $addrs }}{{ $addrs = list $addrs }}{{ end }}
{{- if $addrs }}
{{- include "devmetrics.portOf" (first $addrs | toString) }}
{{- else }}
{{- .Values.service.port }}
{{- end }}
{{- end }}

{{/* The webhook receivers' own port (config.webhooks.listen_address), or nothing. */}}
{{- define "devmetrics.webhookPort" -}}
{{- with dig "webhooks" "listen_address" "" (.Values.config | default dict) }}
{{- include "devmetrics.portOf" (toString .) }}
{{- end }}
{{- end }}

{{- define "devmetrics.telemetryPath" -}}
{{- dig "web" "telemetry_path" "/metrics" (.Values.config | default dict) }}
{{- end }}

{{/*
The configuration file: .Values.config with the chart's defaults filled in.
*/}}
{{- define "devmetrics.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $web := get $cfg "web" | default dict }}
{{- if not (hasKey $web "listen_addresses") }}
{{- $_ := set $web "listen_addresses" (list (printf ":%v" .Values.service.port)) }}
{{- end }}
{{- $_ := set $cfg "web" $web }}
{{- $storage := get $cfg "storage" | default dict }}
{{- if not (hasKey $storage "path") }}
{{- $_ := set $storage "path" (printf "%s/devmetrics.db" (trimSuffix "/" .Values.mountPath)) }}
{{- end }}
{{- if .Values.ha.enabled }}
{{- $_ := set $storage "backend" "redis" }}
{{- if include "devmetrics.haRedisFromChart" . }}
{{- $redis := get $storage "redis" | default dict }}
{{- if hasKey $redis "url" }}
{{- fail "ha.redis.url/existingSecret and config.storage.redis.url are both set: keep one" }}
{{- end }}
{{- $_ := set $redis "url_file" (printf "%s/redis-url" (include "devmetrics.haMountPath" .)) }}
{{- $_ := set $storage "redis" $redis }}
{{- end }}
{{- $queue := get $cfg "queue" | default dict }}
{{- $_ := set $queue "backend" .Values.ha.queue.backend }}
{{- $_ := set $cfg "queue" $queue }}
{{- end }}
{{- $_ := set $cfg "storage" $storage }}
{{- toYaml $cfg }}
{{- end }}

{{/* Checks that fail the render with a message rather than a pod that cannot start. */}}
{{- define "devmetrics.validate" -}}
{{- if .Values.ha.enabled }}
{{- if not (has .Values.ha.queue.backend (list "rabbitmq" "redis")) }}
{{- fail (printf "ha.queue.backend must be rabbitmq or redis, not %q" .Values.ha.queue.backend) }}
{{- end }}
{{- $storageRedis := dig "storage" "redis" dict (.Values.config | default dict) }}
{{- if and (not (include "devmetrics.haRedisFromChart" .)) (not $storageRedis) }}
{{- fail "ha.enabled needs Redis: set ha.redis.url, ha.redis.existingSecret, or config.storage.redis" }}
{{- end }}
{{- if eq .Values.ha.queue.backend "rabbitmq" }}
{{- $inConfig := dig "queue" "rabbitmq" "url" "" (.Values.config | default dict) }}
{{- $inEnv := false }}
{{- range .Values.env }}{{ if eq .name "DEVMETRICS_QUEUE__RABBITMQ__URL" }}{{ $inEnv = true }}{{ end }}{{ end }}
{{- if not (or (include "devmetrics.haRabbitFromChart" .) $inConfig $inEnv .Values.envFrom) }}
{{- fail "ha.queue.backend rabbitmq needs its URL: set ha.queue.rabbitmq.url or ha.queue.rabbitmq.existingSecret (or DEVMETRICS_QUEUE__RABBITMQ__URL in env/envFrom)" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
