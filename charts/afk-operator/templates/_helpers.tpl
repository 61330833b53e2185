{{- define "afk-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "afk-operator.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "afk-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "afk-operator.serviceAccountName" -}}
{{- default (include "afk-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Environment both containers share: logging, agents, API auth. */}}
{{- define "afk-operator.commonEnv" -}}
- name: AFK_LOG
  value: {{ .Values.log.filter | quote }}
- name: AFK_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: AFK_AGENTS_DIR
  value: /etc/afk/agents
{{- if .Values.sidecar.apiTokenSecret }}
- name: AFK_API_TOKEN_FILE
  value: /etc/afk/secrets/api/token
{{- end }}
{{- if .Values.sidecar.trustProxyHeader }}
- name: AFK_TRUST_PROXY_HEADER
  value: "true"
{{- end }}
{{- end -}}

{{- define "afk-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
The sidecar container's memory limit in MiB: a base for the server itself plus one per-turn
estimate for every `claude` turn it may run at once. Voice turns are capped by
claude.maxConcurrentTurns; breakglass turns run at most one per session, so by
breakglass.maxSessions. Defaults: 128 + (4 + 2) x 220 = 1448 MiB.
*/}}
{{- define "afk-operator.sidecarMemoryMiB" -}}
{{- $turns := add (int .Values.claude.maxConcurrentTurns) (int .Values.breakglass.maxSessions) -}}
{{- add (int .Values.sidecar.memory.baseMiB) (mul $turns (int .Values.sidecar.memory.perTurnMiB)) -}}
{{- end -}}
