{{/* Names, labels and the few derived values every template shares. */}}

{{- define "chrono-upscaler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: at most 45 characters, so suffixes stay within 63. */}}
{{- define "chrono-upscaler.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "chrono-upscaler.operatorName" -}}
{{- printf "%s-operator" (include "chrono-upscaler.fullname" .) }}
{{- end }}

{{- define "chrono-upscaler.redisName" -}}
{{- printf "%s-redis" (include "chrono-upscaler.fullname" .) }}
{{- end }}

{{- define "chrono-upscaler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chrono-upscaler.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "chrono-upscaler.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "chrono-upscaler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chrono-upscaler
{{- end }}

{{- define "chrono-upscaler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chrono-upscaler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "chrono-upscaler.operatorSelectorLabels" -}}
{{ include "chrono-upscaler.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "chrono-upscaler.redisSelectorLabels" -}}
{{ include "chrono-upscaler.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "chrono-upscaler.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The predictor's CUDA variant (GPU deployments); a CPU-only tag here would reach GPU nodes. */}}
{{- define "chrono-upscaler.predictorImage" -}}
{{- $tag := .Values.config.predictorImage.tag | default .Chart.AppVersion }}
{{- if hasSuffix "-cpu" $tag }}
{{- fail (printf "config.predictorImage.tag %q is the CPU-only variant, which GPU deployments would get: set config.predictorImage.cpuTag for CPU deployments and leave tag to the CUDA variant" $tag) }}
{{- end }}
{{- printf "%s:%s" .Values.config.predictorImage.repository $tag }}
{{- end }}

{{/* The predictor's CPU-only variant (deployments without GPUs: sr). */}}
{{- define "chrono-upscaler.predictorCpuImage" -}}
{{- printf "%s:%s" .Values.config.predictorImage.repository (.Values.config.predictorImage.cpuTag | default (printf "%s-cpu" .Chart.AppVersion)) }}
{{- end }}

{{/* The namespaces the operator serves, comma-separated; empty means the whole cluster. */}}
{{- define "chrono-upscaler.watchNamespaces" -}}
{{- if .Values.config.watchNamespaces }}
{{- join "," (uniq .Values.config.watchNamespaces) }}
{{- else if .Values.rbac.namespaced }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The Redis the predictors share: checks that at most one source is chosen. */}}
{{- define "chrono-upscaler.redisEnv" -}}
{{- $sources := 0 }}
{{- range (list .Values.redis.enabled .Values.redis.url .Values.redis.existingSecret) }}
{{- if . }}{{ $sources = add1 $sources }}{{ end }}
{{- end }}
{{- if gt $sources 1 }}
{{- fail "choose at most one of redis.enabled, redis.url and redis.existingSecret" }}
{{- end }}
{{- if regexMatch "^[a-z]+://[^/]*@" .Values.redis.url }}
{{- fail "redis.url holds credentials: put the URL under key `url` of a Secret and set redis.existingSecret instead" }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: UPSCALER_REDIS_URL
  value: {{ printf "redis://%s.%s.svc.%s:6379/0" (include "chrono-upscaler.redisName" .) .Release.Namespace .Values.clusterDomain | quote }}
{{- else if .Values.redis.url }}
- name: UPSCALER_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- else if .Values.redis.existingSecret }}
- name: UPSCALER_REDIS_SECRET  # a Secret in each upscaler's namespace; key `url` holds the URL
  value: {{ .Values.redis.existingSecret | quote }}
{{- end }}
{{- end }}

{{/* Monitoring objects need the Prometheus Operator's API: fail clearly rather than at apply. */}}
{{- define "chrono-upscaler.requireMonitoringApi" -}}
{{- if not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}
{{- fail (printf "%s needs the Prometheus Operator's monitoring.coreos.com/v1 API in the cluster (with helm template: --api-versions monitoring.coreos.com/v1)" .what) }}
{{- end }}
{{- end }}
