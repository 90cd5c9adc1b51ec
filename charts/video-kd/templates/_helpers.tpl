{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "video-kd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, suffixed with the chart name unless it already holds it. */}}
{{- define "video-kd.fullname" -}}
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

{{/* "<fullname>-<suffix>", within the 63 characters of a DNS label for any release name Helm
allows (53): a full name too long for the suffix is cut and given 8 hex of its SHA-256, so two
long release names sharing a prefix still get names of their own.  Call with (list . "suffix"). */}}
{{- define "video-kd.suffixed" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $full := include "video-kd.fullname" $root }}
{{- if le (add (len $full) (len $suffix) 1) 63 }}
{{- printf "%s-%s" $full $suffix }}
{{- else }}
{{- $cut := $full | trunc (int (sub 63 (add (len $suffix) 10))) | trimSuffix "-" }}
{{- printf "%s-%s-%s" $cut (sha256sum $full | trunc 8) $suffix }}
{{- end }}
{{- end }}

{{/* The pipeline's name in KFP: pipeline.name, else "<fullname>-distillation", so that two
releases in one namespace upload two pipelines (and schedule two recurring runs). */}}
{{- define "video-kd.pipelineName" -}}
{{- default (include "video-kd.suffixed" (list . "distillation")) .Values.pipeline.name }}
{{- end }}

{{/* The recurring run's name: schedule.name, else "<pipeline name>-<experiment>". */}}
{{- define "video-kd.recurringRunName" -}}
{{- default (printf "%s-%s" (include "video-kd.pipelineName" .) .Values.schedule.experiment) .Values.schedule.name }}
{{- end }}

{{- define "video-kd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "video-kd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "video-kd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "video-kd.labels" -}}
helm.sh/chart: {{ include "video-kd.chart" . }}
{{ include "video-kd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: video-kd
{{- end }}

{{/* ServiceAccount the pipeline's pods, the PyTorchJob and the hook Job run as. */}}
{{- define "video-kd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "video-kd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "video-kd.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* CPU image: the hook Job. */}}
{{- define "video-kd.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "video-kd.tag" .) }}
{{- end }}

{{/* Image of the pipeline run (components + PyTorchJob): CUDA build when training on GPUs. */}}
{{- define "video-kd.pipelineImage" -}}
{{- if .Values.training.gpu.enabled }}
{{- printf "%s:%s%s" .Values.image.repository (include "video-kd.tag" .) .Values.image.cudaTagSuffix }}
{{- else }}
{{- include "video-kd.image" . }}
{{- end }}
{{- end }}

{{- define "video-kd.gpusPerWorker" -}}
{{- if .Values.training.gpu.enabled }}{{ .Values.training.gpu.perWorker }}{{ else }}0{{ end }}
{{- end }}

{{- define "video-kd.pvcName" -}}
{{- if .Values.persistence.existingClaim }}
{{- .Values.persistence.existingClaim }}
{{- else if .Values.persistence.enabled }}
{{- include "video-kd.suffixed" (list . "cache") }}
{{- end }}
{{- end }}

{{/* Run parameters: user params first, then the ones the chart owns (never overridable). */}}
{{- define "video-kd.pipelineParams" -}}
{{- $owned := dict
      "image" (include "video-kd.pipelineImage" .)
      "s3_bucket" .Values.s3.bucket
      "s3_prefix" .Values.s3.prefix
      "num_workers" (toString .Values.training.workers)
      "gpus_per_worker" (include "video-kd.gpusPerWorker" .)
      "keep_checkpoints" (toString .Values.training.keepCheckpoints) }}
{{- $params := dict }}
{{- range $k, $v := .Values.pipeline.params }}
{{- if and (not (hasKey $owned $k)) (ne (toString $v) "") }}
{{- $_ := set $params $k (toString $v) }}
{{- end }}
{{- end }}
{{- range $k, $v := $owned }}
{{- $_ := set $params $k $v }}
{{- end }}
{{- toJson $params }}
{{- end }}

{{/* Container fields shared by the hook Job's upload and schedule containers; call with (dict "root" .). */}}
{{- define "video-kd.hookContainer" -}}
image: {{ include "video-kd.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
command: ["video-kd"]
env:
  - name: KFP_HOST
    value: {{ .root.Values.kfp.host | quote }}
  {{- if .root.Values.kfp.serviceAccountToken.enabled }}
  - name: KF_PIPELINES_SA_TOKEN_PATH
    value: /var/run/secrets/kubeflow/pipelines/token
  {{- end }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml .root.Values.uploadJob.resources | nindent 2 }}
volumeMounts:
  - name: home
    mountPath: /home/app
  - name: tmp
    mountPath: /tmp
  {{- if .root.Values.kfp.serviceAccountToken.enabled }}
  - name: kfp-token
    mountPath: /var/run/secrets/kubeflow/pipelines
    readOnly: true
  {{- end }}
{{- end }}

{{/* ServiceAccount of the training pods: their own, with no API rights and no token. */}}
{{- define "video-kd.trainingServiceAccountName" -}}
{{- if .Values.training.serviceAccount.create }}
{{- default (include "video-kd.suffixed" (list . "trainer")) .Values.training.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.training.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespace of the KFP experiment / recurring run. */}}
{{- define "video-kd.kfpNamespace" -}}
{{- default .Release.Namespace .Values.kfp.namespace }}
{{- end }}

{{/* Namespace KFP itself runs in, read from kfp.host when it is a cluster Service URL
(http://<service>.<namespace>.svc[.cluster.local][:port]); empty otherwise. */}}
{{- define "video-kd.kfpServiceNamespace" -}}
{{- $hostname := regexReplaceAll "^[a-zA-Z][a-zA-Z0-9+.-]*://" .Values.kfp.host "" | splitList "/" | first | splitList ":" | first }}
{{- $parts := splitList "." $hostname }}
{{- if and (ge (len $parts) 3) (eq (index $parts 2) "svc") }}{{ index $parts 1 }}{{ end }}
{{- end }}

{{/* The namespaced TrainingRuntime the chart creates for TrainJobs. */}}
{{- define "video-kd.trainingRuntimeName" -}}
{{- include "video-kd.suffixed" (list . "torch") }}
{{- end }}

{{/* Whether the chart creates its TrainingRuntime ("true" or ""): only for backend trainjob,
since a cluster for the other backends may lack Trainer's CRDs.  The training ConfigMap names
the runtime by this same test, so it never names one that does not exist. */}}
{{- define "video-kd.createsRuntime" -}}
{{- if and (eq .Values.training.backend "trainjob") .Values.training.trainJob.createRuntime }}true{{ end }}
{{- end }}

{{/* ServiceAccount the scheduled (recurring) runs execute as. */}}
{{- define "video-kd.scheduleServiceAccount" -}}
{{- default (include "video-kd.serviceAccountName" .) .Values.schedule.serviceAccount }}
{{- end }}

{{/* Whether to create Argo's executor Role ("true" or ""): asked for, or the scheduled runs
execute as the chart's ServiceAccount (every KFP pod's Argo executor needs it). */}}
{{- define "video-kd.argoExecutor" -}}
{{- $scheduledAsChart := and .Values.schedule.enabled (eq (include "video-kd.scheduleServiceAccount" .) (include "video-kd.serviceAccountName" .)) }}
{{- if or .Values.rbac.argoExecutor $scheduledAsChart }}true{{ end }}
{{- end }}

{{/* The chart TrainingRuntime's failurePolicy.maxRestarts: backoffLimitPerNode, counted in
incidents (a JobSet restarts every node once per failure), as a PyTorchJob's backoff limit of
backoffLimitPerNode x workers counts the failed pods of as many incidents. */}}
{{- define "video-kd.maxRestarts" -}}
{{- .Values.training.backoffLimitPerNode }}
{{- end }}

{{/* The image prefixes a run may name (JSON list): pipeline.allowedImagePrefixes, or the
chart's own repository (`<repository>:` and `<repository>@`, so `<repository>-evil` is not). */}}
{{- define "video-kd.allowedImagePrefixes" -}}
{{- if .Values.pipeline.allowedImagePrefixes }}
{{- toJson .Values.pipeline.allowedImagePrefixes }}
{{- else }}
{{- toJson (list (printf "%s:" .Values.image.repository) (printf "%s@" .Values.image.repository)) }}
{{- end }}
{{- end }}
