{{- define "tuneloop.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tuneloop.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tuneloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneloop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tuneloop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tuneloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.track }}
tuneloop.dev/track: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "tuneloop.image" -}}
{{- $flavour := ternary "cuda" "cpu" .Values.gpu.enabled -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-%s" $flavour .Chart.AppVersion) .Values.image.tag) -}}
{{- end -}}

{{- define "tuneloop.secretName" -}}
{{- default (include "tuneloop.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{- define "tuneloop.claimName" -}}
{{- default (printf "%s-data" (include "tuneloop.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* A shared key database is configured: from our Secret's value, or any existing Secret. */}}
{{- define "tuneloop.hasDatabaseUrl" -}}
{{- if or .Values.secret.existingSecret (and .Values.secret.create .Values.secret.databaseUrl) -}}true{{- end -}}
{{- end -}}

{{/* The training job (training.enabled). */}}
{{- define "tuneloop.trainName" -}}
{{- printf "%s-train" (include "tuneloop.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* Not the gateway's selector labels: its Service and ServiceMonitor must never pick training pods. */}}
{{- define "tuneloop.trainSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneloop.name" . }}-train
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: train
{{- end -}}

{{- define "tuneloop.trainLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tuneloop.trainSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
