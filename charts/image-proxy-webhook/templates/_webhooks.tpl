{{/*
The webhook configurations: where the API server calls, for which namespaces and objects.
*/}}

{{/* clientConfig for the path in .path; call with (dict "root" $ "path" "/mutate"). */}}
{{- define "image-proxy-webhook.clientConfig" -}}
{{- $root := .root }}
{{- if $root.Values.webhook.url }}
url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhook.url) .path | quote }}
{{- else }}
service:
  name: {{ include "image-proxy-webhook.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  path: {{ .path }}
  port: {{ $root.Values.service.port }}
{{- end }}
{{- with include "image-proxy-webhook.caBundle" $root }}
caBundle: {{ . }}
{{- end }}
{{- end }}

{{/*
Namespaces the webhooks and the policy apply to: never the release namespace
nor excludeNamespaces (the server skips them too), and only the covered ones
unless namespaces is ["*"]. Uses the kubernetes.io/metadata.name label that the
API server sets on every namespace (Kubernetes 1.21+).
*/}}
{{- define "image-proxy-webhook.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ prepend (include "image-proxy-webhook.excludeNamespaces" . | fromJsonArray) .Release.Namespace | uniq | toJson }}
{{- if not (include "image-proxy-webhook.allNamespaces" .) }}
  - key: kubernetes.io/metadata.name
    operator: In
    values: {{ include "image-proxy-webhook.namespaces" . }}
{{- end }}
{{- end }}

{{/* Admission rules: Pods and their ephemeral containers, plus workloads when mutateWorkloads. */}}
{{- define "image-proxy-webhook.rules" -}}
- apiGroups: [""]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["pods", "pods/ephemeralcontainers"]
  scope: Namespaced
{{- if .Values.mutateWorkloads }}
- apiGroups: ["apps"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["deployments", "statefulsets", "daemonsets", "replicasets"]
  scope: Namespaced
- apiGroups: [""]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["replicationcontrollers"]
  scope: Namespaced
- apiGroups: ["batch"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["jobs", "cronjobs"]
  scope: Namespaced
{{- end }}
{{- end }}
