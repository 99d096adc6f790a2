{{/* Names and labels shared by every template. */}}

{{- define "orpheus-tts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or just the release when it already contains the chart name; 63 characters at most. */}}
{{- define "orpheus-tts.fullname" -}}
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

{{- define "orpheus-tts.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the operator pod: never change across upgrades. */}}
{{- define "orpheus-tts.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orpheus-tts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Standard labels for every object the chart creates. */}}
{{- define "orpheus-tts.labels" -}}
helm.sh/chart: {{ include "orpheus-tts.chart" . }}
app.kubernetes.io/name: {{ include "orpheus-tts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: orpheus-tts
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "orpheus-tts.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "orpheus-tts.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "orpheus-tts.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{/* Label selector of the voice pods' series: the `job` label the monitors set. */}}
{{- define "orpheus-tts.jobSelector" -}}
job="{{ .Values.metrics.jobLabel }}"
{{- end }}

{{/* Labels the monitors put on every scraped series: a fixed job, and the voice from the pod label. */}}
{{- define "orpheus-tts.monitorRelabelings" -}}
- action: replace
  targetLabel: job
  replacement: {{ .Values.metrics.jobLabel }}
- action: replace
  sourceLabels: [__meta_kubernetes_pod_label_tts_orpheus_io_voice]
  targetLabel: voice
- action: replace
  sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
{{- end }}

{{- define "orpheus-tts.monitorNamespaceSelector" -}}
{{- if .Values.metrics.monitor.namespaces }}
matchNames:
{{- toYaml .Values.metrics.monitor.namespaces | nindent 2 }}
{{- else }}
any: true
{{- end }}
{{- end }}
