{{/*
Names, labels, covered namespaces and the pieces several templates share.
*/}}

{{- define "image-proxy-webhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix; 52 characters leave room for the suffixes below. */}}
{{- define "image-proxy-webhook.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "image-proxy-webhook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "image-proxy-webhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-proxy-webhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "image-proxy-webhook.labels" -}}
helm.sh/chart: {{ include "image-proxy-webhook.chart" . }}
{{ include "image-proxy-webhook.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: admission-webhook
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "image-proxy-webhook.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-proxy-webhook.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "image-proxy-webhook.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Covered namespaces as a JSON list: `namespaces`, or [appSlug]. */}}
{{- define "image-proxy-webhook.namespaces" -}}
{{- if .Values.namespaces }}
{{- toJson .Values.namespaces }}
{{- else }}
{{- list .Values.appSlug | toJson }}
{{- end }}
{{- end }}

{{/* excludeNamespaces as a JSON list; null (a removed key) fails rather than meaning "none". */}}
{{- define "image-proxy-webhook.excludeNamespaces" -}}
{{- if kindIs "invalid" .Values.excludeNamespaces }}
{{- fail "excludeNamespaces must be a list of namespaces ([] excludes none)" }}
{{- end }}
{{- toJson .Values.excludeNamespaces }}
{{- end }}

{{- define "image-proxy-webhook.allNamespaces" -}}
{{- if has "*" (include "image-proxy-webhook.namespaces" . | fromJsonArray) }}true{{ end }}
{{- end }}

{{- define "image-proxy-webhook.pullSecretName" -}}
{{- .Values.pullSecretName | default (printf "%s-registry" .Values.appSlug) }}
{{- end }}

{{- define "image-proxy-webhook.licenseSecretName" -}}
{{- .Values.license.existingSecret | default (printf "%s-license" (include "image-proxy-webhook.fullname" .)) }}
{{- end }}

{{- define "image-proxy-webhook.hasLicense" -}}
{{- if or .Values.license.existingSecret .Values.license.id }}true{{ end }}
{{- end }}

{{- define "image-proxy-webhook.airgapSecretName" -}}
{{- .Values.airgap.existingSecret | default (printf "%s-airgap" (include "image-proxy-webhook.fullname" .)) }}
{{- end }}

{{- define "image-proxy-webhook.hasAirgapPassword" -}}
{{- if and (eq .Values.mode "airgap") (or .Values.airgap.existingSecret .Values.airgap.password) }}true{{ end }}
{{- end }}

{{/*
RBAC rules for the pull secret, exactly the calls webhook/pullsecrets.py makes:
create it (create cannot be limited by name); list and watch only that name (the
webhook follows the secret by a fieldSelector on its name, which RBAC can limit,
unlike a label selector), update and delete only that one Secret (a Secret of
another type is deleted and created again, because its type cannot be changed).
tests/e2e/test_rbac.py checks each verb is used.
*/}}
{{- define "image-proxy-webhook.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: [{{ include "image-proxy-webhook.pullSecretName" . | quote }}]
  verbs: ["list", "watch", "update", "delete"]
{{- end }}
