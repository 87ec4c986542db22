{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "tuneforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, truncated to 63 characters. */}}
{{- define "tuneforge.fullname" -}}
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

{{/* Name of one service's objects: <fullname>-<service>, within 63 characters. */}}
{{- define "tuneforge.serviceName" -}}
{{- printf "%s-%s" (include "tuneforge.fullname" .root | trunc (int (sub 62 (len .name))) | trimSuffix "-") .name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tuneforge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tuneforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select this release's pods. */}}
{{- define "tuneforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The artifact volume's claim name. */}}
{{- define "tuneforge.artifactClaim" -}}
{{- default (printf "%s-artifacts" (include "tuneforge.fullname" .)) .Values.artifacts.existingClaim }}
{{- end }}
