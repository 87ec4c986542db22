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

{{/* The inference front's gRPC address (its Service and port), which evaluation and Self-Instruct runs call. */}}
{{- define "tuneforge.inferenceAddress" -}}
{{- printf "%s:%d" (include "tuneforge.componentName" (dict "root" . "name" "inference")) (int .Values.inference.port) }}
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

{{/* The model cache's claim name. */}}
{{- define "tuneforge.modelCacheClaim" -}}
{{- default (include "tuneforge.componentName" (dict "root" . "name" "models")) .Values.modelCache.existingClaim }}
{{- end }}

{{/* Where the model cache is mounted: the models cache dir of the settings (HF_HOME beneath it). */}}
{{- define "tuneforge.modelCacheDir" -}}
/var/cache/tuneforge/models
{{- end }}

{{/* sha256 of one file of the settings ConfigMap: a pod-template annotation, so a pod rolls when the file it
reads changes, and only then. Call with (dict "root" $ "file" "training.yaml"); Ray pods read ray.yaml. */}}
{{- define "tuneforge.settingsChecksum" -}}
{{- get (include (print .root.Template.BasePath "/configmap.yaml") .root | fromYaml).data .file | required (printf "no %s in the settings ConfigMap" .file) | sha256sum }}
{{- end }}

{{/* A role's ServiceAccount name: its `name`, or <release>-<default> when the chart creates it ("" = none set). Call with (dict "root" $ "block" $block "default" "curation"). */}}
{{- define "tuneforge.serviceAccountName" -}}
{{- if .block.serviceAccount.create }}
{{- default (include "tuneforge.componentName" (dict "root" .root "name" .default)) .block.serviceAccount.name }}
{{- else }}
{{- .block.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Pod-spec options every role may set: ServiceAccount, runtime and priority classes, spread, grace period. Call with (dict "root" $ "block" $block "default" "<sa default name>"). */}}
{{- define "tuneforge.podOptions" -}}
terminationGracePeriodSeconds: {{ .block.terminationGracePeriodSeconds }}
{{- with include "tuneforge.serviceAccountName" . }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .block.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .block.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .block.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Environment for model loading: the shared Hugging Face cache and, if given, a token for gated models. */}}
{{- define "tuneforge.modelEnv" -}}
- name: HF_HOME
  value: {{ include "tuneforge.modelCacheDir" . }}/hf
{{- with .Values.modelCache.hfToken.existingSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.modelCache.hfToken.secretKey }}
{{- end }}
{{- end }}

{{/* The token the front presents to Serve and the Serve replicas check (front Deployment and RayService pods). */}}
{{- define "tuneforge.serveTokenEnv" -}}
{{- with .Values.inference.rayService.serveToken.existingSecret }}
- name: TUNEFORGE_INFERENCE__SERVE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.inference.rayService.serveToken.secretKey }}
{{- end }}
{{- end }}

{{/* Ray's token auth for a client of a Ray cluster (the training service): the Secret KubeRay injects into the Ray pods. */}}
{{- define "tuneforge.rayAuthEnv" -}}
{{- if .Values.rayAuth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "rayAuth.existingSecret must name the Secret with the Ray auth token (key auth_token)" .Values.rayAuth.existingSecret }}
      key: auth_token
{{- end }}
{{- end }}

{{/*
Options shared by the training RayCluster's spec and the RayService's rayClusterConfig: Ray token auth
with the chart's Secret (KubeRay injects RAY_AUTH_MODE/RAY_AUTH_TOKEN into every Ray container and
generates no Secret of its own when secretName is set) and, optionally, GCS fault tolerance in Redis.
*/}}
{{- define "tuneforge.rayClusterOptions" -}}
authOptions:
  {{- if .Values.rayAuth.enabled }}
  mode: token
  secretName: {{ required "rayAuth.existingSecret must name the Secret with the Ray auth token (key auth_token)" .Values.rayAuth.existingSecret }}
  {{- else }}
  mode: disabled
  {{- end }}
{{- with .Values.gcsFaultTolerance }}
{{- if .enabled }}
gcsFaultToleranceOptions:
  redisAddress: {{ required "gcsFaultTolerance.redisAddress (host:port) is required when gcsFaultTolerance.enabled" .redisAddress | quote }}
  {{- with .redisPassword.existingSecret }}
  redisPassword:
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: {{ $.Values.gcsFaultTolerance.redisPassword.secretKey }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The in-tree autoscaler sidecar of a head. Ray pods mount no ServiceAccount token; the autoscaler alone
mounts the head's projected token volume (see tuneforge.rayPod) where the Kubernetes client looks for it.
Call with (dict "root" $ "idleTimeoutSeconds" 600).
*/}}
{{- define "tuneforge.autoscalerOptions" -}}
upscalingMode: Default
idleTimeoutSeconds: {{ .idleTimeoutSeconds }}
resources:
  requests: {cpu: 500m, memory: 512Mi}
  limits: {cpu: 500m, memory: 512Mi}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
volumeMounts:
  - name: autoscaler-token
    mountPath: /var/run/secrets/kubernetes.io/serviceaccount
    readOnly: true
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

{{/* The Serve application of one served model version (an entry of inference.rayService.models): its name and route.
     Readable parts, then a hash of tenant/model: `a` + `b-c:1` and `a-b` + `c:1` read the same, their hashes differ. */}}
{{- define "tuneforge.modelAppName" -}}
{{- $readable := printf "%s-%s-%s" .root.Values.inference.rayService.appName .model.tenant (.model.model | replace ":" "-v") | replace "_" "-" }}
{{- printf "%s-%s" $readable (printf "%s/%s" .model.tenant .model.model | sha256sum | trunc 8) }}
{{- end }}

{{- define "tuneforge.modelServeUrl" -}}
{{- printf "http://%s-serve-svc.%s.svc:8000/%s" (include "tuneforge.rayName" (dict "root" .root "name" "inference")) .root.Release.Namespace (include "tuneforge.modelAppName" .) }}
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
- name: models
  {{- if .Values.modelCache.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "tuneforge.modelCacheClaim" . }}
  {{- else }}
  emptyDir: {}
  {{- end }}
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
- name: models
  mountPath: {{ include "tuneforge.modelCacheDir" . }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
A Ray pod template (head or worker) of a KubeRay cluster. Call with
(dict "root" $ "ctx" $ctx "image" $image "what" "rayCluster.image" "container" "ray-head" "group" $group
 "sa" "training-ray-head" "gpus" 0 "head" true "autoscaler" true "env" $extraEnv "serve" false
 "annotations" $podAnnotations).
Pod annotations: checksum/settings (ray.yaml), then `annotations` (what else must make new pods), then the
group's podAnnotations.
No probes are stated: KubeRay 1.7 injects its own into the Ray container (raylet and GCS health; for
Serve workers also the proxy's /-/healthz in readiness), which know the Ray version's endpoints.
No ServiceAccount token is mounted into any Ray container; with `autoscaler`, the head carries a
projected token volume that only KubeRay's autoscaler sidecar mounts (tuneforge.autoscalerOptions).
*/}}
{{- define "tuneforge.rayPod" -}}
{{- $root := .root }}
{{- $group := .group -}}
metadata:
  labels:
    {{- include "tuneforge.componentLabels" .ctx | nindent 4 }}
  annotations:
    # the settings file Ray pods read (ray.yaml: the layout only); a change replaces the cluster's pods
    checksum/settings: {{ include "tuneforge.settingsChecksum" (dict "root" $root "file" "ray.yaml") }}
    {{- with .annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $group.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  automountServiceAccountToken: false
  {{- include "tuneforge.podOptions" (dict "root" $root "block" $group "default" .sa) | nindent 2 }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .container }}
      image: {{ include "tuneforge.image" (dict "image" .image "what" .what) | quote }}
      imagePullPolicy: {{ .image.pullPolicy | default "IfNotPresent" }}
      env:
        - name: TUNEFORGE_CONFIG
          value: /etc/tuneforge/settings/ray.yaml
        - name: HOME
          value: /home/tuneforge
        {{- include "tuneforge.modelEnv" $root | nindent 8 }}
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $group.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $group.envFrom }}
      envFrom:
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
        {{- if .serve }}
        - name: serve
          containerPort: 8000
          protocol: TCP
        {{- end }}
      {{- end }}
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
    {{- if .autoscaler }}
    # the autoscaler sidecar's API token (it lists and patches the cluster's pods); no other container mounts it
    - name: autoscaler-token
      projected:
        defaultMode: 0444
        sources:
          - serviceAccountToken:
              path: token
              expirationSeconds: 3607
          - configMap:
              name: kube-root-ca.crt
              items:
                - key: ca.crt
                  path: ca.crt
          - downwardAPI:
              items:
                - path: namespace
                  fieldRef:
                    apiVersion: v1
                    fieldPath: metadata.namespace
    {{- end }}
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
