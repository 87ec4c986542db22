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

{{/* Name of one role's objects: <fullname>-<role>, within 63 characters. Call with (dict "root" $ "name" "curation"). */}}
{{- define "tuneforge.componentName" -}}
{{- printf "%s-%s" (include "tuneforge.fullname" .root | trunc (int (sub 62 (len .name))) | trimSuffix "-") .name }}
{{- end }}

{{/* Ray cluster names must leave room for KubeRay's suffixes (`-head-svc`, `-serve-svc`, pod hashes): 40 characters. */}}
{{- define "tuneforge.rayName" -}}
{{- printf "%s-%s" (include "tuneforge.fullname" .root | trunc (int (sub 39 (len .name))) | trimSuffix "-") .name }}
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

{{/* Labels of one role's objects and pods. Call with (dict "root" $ "name" "curation"). */}}
{{- define "tuneforge.componentLabels" -}}
{{ include "tuneforge.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* Selector of one role's pods. Call with (dict "root" $ "name" "curation"). */}}
{{- define "tuneforge.componentSelector" -}}
{{ include "tuneforge.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* "repository:tag" of an image block; a tag is required and `latest` is refused. */}}
{{- define "tuneforge.image" -}}
{{- $tag := required (printf "%s.tag must be set (a pinned version)" .what) .image.tag | toString }}
{{- if eq $tag "latest" }}{{ fail (printf "%s.tag must be a pinned version, not latest" .what) }}{{ end }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}

{{/* The image block of a control-plane role: its override over controlImage. */}}
{{- define "tuneforge.roleImage" -}}
{{- $role := get .root.Values .name }}
{{- toYaml (merge (deepCopy ($role.image | default dict)) .root.Values.controlImage) }}
{{- end }}

{{/* The artifact volume's claim name. */}}
{{- define "tuneforge.artifactClaim" -}}
{{- default (include "tuneforge.componentName" (dict "root" . "name" "artifacts")) .Values.artifacts.existingClaim }}
{{- end }}

{{/* Job Submission (dashboard) address of the training Ray cluster. */}}
{{- define "tuneforge.trainingRayAddress" -}}
{{- if .Values.rayCluster.enabled }}
{{- printf "http://%s-head-svc.%s.svc:8265" (include "tuneforge.rayName" (dict "root" . "name" "training")) .Release.Namespace }}
{{- else }}
{{- required "rayCluster.externalAddress is required when rayCluster.enabled is false" .Values.rayCluster.externalAddress }}
{{- end }}
{{- end }}

{{/* Base URL of the inference Serve application on Serve's HTTP proxy (KubeRay's <rayservice>-serve-svc, port 8000, the app's route prefix): the front's data path, never Ray Client. */}}
{{- define "tuneforge.inferenceServeUrl" -}}
{{- printf "http://%s-serve-svc.%s.svc:8000/%s" (include "tuneforge.rayName" (dict "root" . "name" "inference")) .Release.Namespace .Values.inference.rayService.appName }}
{{- end }}

{{/* Refuses configurations that would lose or corrupt data. */}}
{{- define "tuneforge.validate" -}}
{{- if and .Values.evaluation.enabled (not .Values.inference.enabled) }}
{{- fail "evaluation.enabled needs inference.enabled: evaluation runs generate through the inference service" }}
{{- end }}
{{- if not .Values.database.existingSecret }}
{{- if not .Values.database.allowSqlite }}
{{- fail "database.existingSecret must name a Secret with the PostgreSQL URL (or set database.allowSqlite for a single-node trial)" }}
{{- end }}
{{- range $role := list "curation" "training" "evaluation" "inference" }}
{{- $block := get $.Values $role }}
{{- if and $block.enabled (gt (int $block.replicas) 1) }}
{{- fail (printf "%s.replicas > 1 needs PostgreSQL (database.existingSecret): SQLite cannot be shared between pods" $role) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment every Tuneforge process (services, Ray pods) gets: settings file and secrets. */}}
{{- define "tuneforge.env" -}}
- name: TUNEFORGE_CONFIG
  value: /etc/tuneforge/settings/{{ .file }}
{{- if .root.Values.database.existingSecret }}
- name: TUNEFORGE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.database.existingSecret }}
      key: {{ .root.Values.database.secretKey }}
{{- end }}
{{- end }}

{{/* Volumes of every Tuneforge pod. */}}
{{- define "tuneforge.volumes" -}}
- name: settings
  configMap:
    name: {{ include "tuneforge.componentName" (dict "root" . "name" "settings") }}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "tuneforge.artifactClaim" . }}
- name: cache
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- end }}

{{/* Mounts of those volumes. */}}
{{- define "tuneforge.volumeMounts" -}}
- name: settings
  mountPath: /etc/tuneforge/settings
  readOnly: true
- name: data
  mountPath: /var/lib/tuneforge
- name: cache
  mountPath: /var/cache/tuneforge
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
A Ray pod template (head or worker) of a KubeRay cluster. Call with
(dict "root" $ "ctx" $ctx "image" $image "container" "ray-head" "group" $group "gpus" 0 "head" true "env" $extraEnv "serve" false).
Probes are spelled out (the same checks KubeRay would inject) so every container states its own.
*/}}
{{- define "tuneforge.rayPod" -}}
{{- $root := .root }}
{{- $group := .group -}}
metadata:
  labels:
    {{- include "tuneforge.componentLabels" .ctx | nindent 4 }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  automountServiceAccountToken: false
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .container }}
      image: {{ include "tuneforge.image" (dict "image" .image "what" .what) | quote }}
      imagePullPolicy: {{ .image.pullPolicy | default "IfNotPresent" }}
      env:
        - name: RAY_AUTH_MODE
          value: disabled
        - name: HOME
          value: /home/tuneforge
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if .head }}
      ports:
        - name: gcs
          containerPort: 6379
          protocol: TCP
        - name: dashboard
          containerPort: 8265
          protocol: TCP
        - name: client
          containerPort: 10001
          protocol: TCP
        - name: metrics
          containerPort: 8080
          protocol: TCP
        {{- if .serve }}
        - name: serve
          containerPort: 8000
          protocol: TCP
        {{- end }}
      {{- else }}
      ports:
        - name: metrics
          containerPort: 8080
          protocol: TCP
      {{- end }}
      {{- if .startupSeconds }}
      # Serve replicas download and load the base model before the proxy reports healthy
      startupProbe:
        exec:
          command:
            - bash
            - -c
            - wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success{{ if and .serve (not .head) }} && wget -T 2 -q -O- http://localhost:8000/-/healthz | grep success{{ end }}
        periodSeconds: 10
        timeoutSeconds: 2
        failureThreshold: {{ div .startupSeconds 10 }}
      {{- end }}
      readinessProbe:
        exec:
          command:
            - bash
            - -c
            {{- if .head }}
            - wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success && wget -T 2 -q -O- http://localhost:8265/api/gcs_healthz | grep success
            {{- else if .serve }}
            - wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success && wget -T 2 -q -O- http://localhost:8000/-/healthz | grep success
            {{- else }}
            - wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success
            {{- end }}
        initialDelaySeconds: 10
        periodSeconds: 5
        timeoutSeconds: 2
        failureThreshold: 10
      livenessProbe:
        exec:
          command:
            - bash
            - -c
            {{- if .head }}
            - wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success && wget -T 2 -q -O- http://localhost:8265/api/gcs_healthz | grep success
            {{- else }}
            - wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success
            {{- end }}
        initialDelaySeconds: 30
        periodSeconds: 5
        timeoutSeconds: 2
        failureThreshold: 120
      lifecycle:
        preStop:
          exec:
            command: ["ray", "stop"]
      resources:
        {{- if .head }}
        {{- toYaml $group.resources | nindent 8 }}
        {{- else }}
        {{- $amounts := dict "cpu" $group.resources.cpu "memory" $group.resources.memory }}
        {{- if gt (int $group.gpus) 0 }}
        {{- $_ := set $amounts "nvidia.com/gpu" (int $group.gpus) }}
        {{- end }}
        requests:
          {{- toYaml $amounts | nindent 10 }}
        limits:
          {{- toYaml $amounts | nindent 10 }}
        {{- end }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        {{- include "tuneforge.volumeMounts" $root | nindent 8 }}
        - name: home
          mountPath: /home/tuneforge
        - name: dshm
          mountPath: /dev/shm
  volumes:
    {{- include "tuneforge.volumes" $root | nindent 4 }}
    - name: home
      emptyDir: {}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $group.shmSize | default "4Gi" }}
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
