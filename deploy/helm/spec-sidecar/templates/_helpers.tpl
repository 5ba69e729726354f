{{/* Names follow the usual chart conventions; every object is named from spec-sidecar.fullname. */}}
{{- define "spec-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spec-sidecar.fullname" -}}
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

{{- define "spec-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spec-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spec-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spec-sidecar.labels" -}}
helm.sh/chart: {{ include "spec-sidecar.chart" . }}
{{ include "spec-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "spec-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spec-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Deployment the sidecar acts on: the chart's own, or (vllm.enabled false) the one target.deployment names. */}}
{{- define "spec-sidecar.targetDeployment" -}}
{{- if .Values.vllm.enabled }}
{{- include "spec-sidecar.fullname" . }}
{{- else }}
{{- required "vllm.enabled is false: set target.deployment to the name of the Deployment that runs vLLM (in the release namespace)" .Values.target.deployment }}
{{- end }}
{{- end }}

{{/* The labels of the vLLM pods: the chart's own, or target.podLabels beside an existing Deployment. */}}
{{- define "spec-sidecar.podSelector" -}}
{{- if .Values.vllm.enabled }}
{{- include "spec-sidecar.selectorLabels" . }}
{{- else }}
{{- toYaml .Values.target.podLabels }}
{{- end }}
{{- end }}

{{/* Whether the NetworkPolicy is rendered: beside an existing Deployment, only when asked (target.networkPolicy). */}}
{{- define "spec-sidecar.networkPolicyOn" -}}
{{- if and .Values.networkPolicy.enabled (or .Values.vllm.enabled (and .Values.target.networkPolicy .Values.target.podLabels)) }}true{{ end }}
{{- end }}

{{/* The Lease the sidecar replicas elect one actor with: the sidecar names it <deployment>-spec-sidecar. */}}
{{- define "spec-sidecar.leaseName" -}}
{{- printf "%s-spec-sidecar" (include "spec-sidecar.targetDeployment" .) }}
{{- end }}

{{- define "spec-sidecar.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (default .Chart.AppVersion .Values.sidecar.image.tag) }}
{{- end }}

{{/* The runbook link in each alert: the rule file says docs/runbook.md#anchor; a chart value points it elsewhere. */}}
{{- define "spec-sidecar.rules" -}}
{{- $rules := .Files.Get "files/alerts/spec-sidecar-rules.yaml" }}
{{- if not $rules }}{{ fail "files/alerts/spec-sidecar-rules.yaml is missing from the chart" }}{{ end }}
{{- $rules | replace "docs/runbook.md#" (printf "%s#" (trimSuffix "#" .Values.prometheusRule.runbookBaseUrl)) }}
{{- end }}

{{/* vllm.speculativeConfig (an object or a JSON string) as compact JSON, or "" when speculation is off. */}}
{{- define "spec-sidecar.speculativeConfig" -}}
{{- $spec := .Values.vllm.speculativeConfig }}
{{- if kindIs "string" $spec }}
{{- $parsed := fromJson (default "{}" $spec) }}
{{- if hasKey $parsed "Error" }}{{ fail (printf "vllm.speculativeConfig is not a JSON object: %s" $spec) }}{{ end }}
{{- $spec = $parsed }}
{{- end }}
{{- if $spec }}{{ toJson $spec }}{{ end }}
{{- end }}

{{/* One NetworkPolicy ingress rule: port (a container port name), from ("anywhere" or a list of peers; an empty
list renders no rule, so no one but the node and the pod itself reaches the port), why (a comment). */}}
{{- define "spec-sidecar.ingressRule" -}}
{{- if eq (toString .from) "anywhere" -}}
# {{ .why }}: from anywhere
- ports:
    - port: {{ .port }}
      protocol: TCP
{{- else if kindIs "string" .from }}
{{- fail (printf "networkPolicy: %q is neither \"anywhere\" nor a list of peers" .from) }}
{{- else if .from -}}
# {{ .why }}
- ports:
    - port: {{ .port }}
      protocol: TCP
  from:
    {{- toYaml .from | nindent 4 }}
{{- else -}}
# {{ .why }}: closed (an empty list)
{{- end }}
{{- end }}
