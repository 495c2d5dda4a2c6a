{{/*
The webhook's config file, and the checks across values that the schema cannot express.
*/}}

{{- define "image-proxy-webhook.terminationGracePeriodSeconds" -}}
{{- $min := addf .Values.preStopSleepSeconds .Values.server.shutdownTimeoutSeconds }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- addf $min 5 | ceil | int }}
{{- else if le (float64 .Values.terminationGracePeriodSeconds) $min }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be above preStopSleepSeconds + server.shutdownTimeoutSeconds (%v), or the server is killed before it finishes the requests in flight" .Values.terminationGracePeriodSeconds $min) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/*
Checks across values that the schema cannot express. Included by the
Deployment, so every install runs them.
*/}}
{{- define "image-proxy-webhook.validate" -}}
{{- if not .Values.appSlug }}
{{- fail "appSlug is required (the application slug, e.g. my-app)" }}
{{- end }}
{{- if ge (float64 .Values.server.admissionDeadlineSeconds) (float64 .Values.webhook.timeoutSeconds) }}
{{- fail (printf "server.admissionDeadlineSeconds (%v) must be below webhook.timeoutSeconds (%v): the server must answer before the API server gives up" .Values.server.admissionDeadlineSeconds .Values.webhook.timeoutSeconds) }}
{{- end }}
{{- if eq (int .Values.server.port) (int .Values.server.healthPort) }}
{{- fail "server.healthPort must differ from server.port" }}
{{- end }}
{{- if lt (int64 .Values.server.maxBodyBytesInFlight) (int64 .Values.server.maxRequestBytes) }}
{{- fail (printf "server.maxBodyBytesInFlight (%v) must be at least server.maxRequestBytes (%v), or the largest review is never accepted" (int64 .Values.server.maxBodyBytesInFlight) (int64 .Values.server.maxRequestBytes)) }}
{{- end }}
{{- if and (eq .Values.mode "online") (not (include "image-proxy-webhook.hasLicense" .)) }}
{{- fail "license.id or license.existingSecret is required in online mode" }}
{{- end }}
{{- if and (eq .Values.mode "airgap") (not .Values.airgap.registry) }}
{{- fail "airgap.registry is required when mode is airgap" }}
{{- end }}
{{- if and (eq .Values.tls.mode "existingSecret") (not .Values.tls.existingSecret) }}
{{- fail "tls.existingSecret is required when tls.mode is existingSecret" }}
{{- end }}
{{- if and (eq .Values.tls.mode "existingSecret") (not .Values.tls.caBundle) }}
{{- fail "tls.caBundle is required when tls.mode is existingSecret (the CA the API server trusts for the webhook)" }}
{{- end }}
{{- if and (eq .Values.tls.mode "selfManaged") (gt (float64 .Values.tls.selfManaged.certValidityDays) (float64 .Values.tls.selfManaged.caValidityDays)) }}
{{- fail "tls.selfManaged.certValidityDays must not exceed tls.selfManaged.caValidityDays: the CA signs the certificate" }}
{{- end }}
{{- $namespaces := include "image-proxy-webhook.namespaces" . | fromJsonArray }}
{{- if and .Values.createNamespaces (has "*" $namespaces) }}
{{- fail "createNamespaces: namespaces is [\"*\"]; list the namespaces to create" }}
{{- end }}
{{- if and (has "*" $namespaces) (gt (len $namespaces) 1) }}
{{- fail "namespaces: \"*\" already covers every namespace; list it alone" }}
{{- end }}
{{- /*
At install and upgrade each covered namespace must exist or be created by the
chart: a Role in a missing namespace would fail the release halfway, after its
webhook configurations were applied. Checked only when lookup reaches a cluster
(it finds kube-system); under `helm template` it finds nothing.
*/}}
{{- if and (not .Values.createNamespaces) (not (has "*" $namespaces)) (lookup "v1" "Namespace" "" "kube-system") }}
{{- range $namespaces }}
{{- if not (lookup "v1" "Namespace" "" .) }}
{{- fail (printf "namespace %q does not exist: create it first, or set createNamespaces=true to let the chart create it" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $namespaces }}
{{- if eq . $.Release.Namespace }}
{{- fail (printf "namespaces: %q is never mutated (the webhook skips its own namespace); install the webhook into a namespace of its own" .) }}
{{- end }}
{{- if has . (include "image-proxy-webhook.excludeNamespaces" $ | fromJsonArray) }}
{{- fail (printf "namespaces: %q is also in excludeNamespaces; list it in one of them" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The webhook's config file (docs/design.md §4); only keys webhook/config.py accepts. */}}
{{- define "image-proxy-webhook.config" -}}
{{- $v := .Values }}
{{- $config := dict
  "appSlug" $v.appSlug
  "proxyDomain" $v.proxyDomain
  "registryDomain" $v.registryDomain
  "namespaces" (include "image-proxy-webhook.namespaces" . | fromJsonArray)
  "excludeNamespaces" (include "image-proxy-webhook.excludeNamespaces" . | fromJsonArray)
  "mode" $v.mode
  "visibility" $v.visibility
  "probe" $v.probe
  "mutateWorkloads" $v.mutateWorkloads
}}
{{- if include "image-proxy-webhook.hasLicense" . }}
{{- $_ := set $config "licenseIDFile" "/etc/image-proxy-webhook/license/id" }}
{{- end }}
{{- if $v.pullSecretName }}
{{- $_ := set $config "pullSecretName" $v.pullSecretName }}
{{- end }}
{{- if eq $v.mode "airgap" }}
{{- $airgap := dict "registry" $v.airgap.registry "namespace" $v.airgap.namespace "username" $v.airgap.username }}
{{- if include "image-proxy-webhook.hasAirgapPassword" . }}
{{- $_ := set $airgap "passwordFile" "/etc/image-proxy-webhook/airgap/password" }}
{{- end }}
{{- $_ := set $config "airgap" $airgap }}
{{- end }}
{{- $_ := set $config "server" (dict
  "host" $v.server.host
  "port" $v.server.port
  "healthPort" $v.server.healthPort
  "certFile" "/etc/image-proxy-webhook/tls/tls.crt"
  "keyFile" "/etc/image-proxy-webhook/tls/tls.key"
  "admissionDeadlineSeconds" $v.server.admissionDeadlineSeconds
  "shutdownTimeoutSeconds" $v.server.shutdownTimeoutSeconds
  "maxRequestBytes" (int64 $v.server.maxRequestBytes)
  "maxImagesPerObject" (int64 $v.server.maxImagesPerObject)
  "maxJsonValues" (int64 $v.server.maxJsonValues)
  "maxAdmissionsInFlight" (int64 $v.server.maxAdmissionsInFlight)
  "maxBodyBytesInFlight" (int64 $v.server.maxBodyBytesInFlight)
  "maxConnections" (int64 $v.server.maxConnections)
  "tlsHandshakeTimeoutSeconds" $v.server.tlsHandshakeTimeoutSeconds
  "headerTimeoutSeconds" $v.server.headerTimeoutSeconds
  "idleTimeoutSeconds" $v.server.idleTimeoutSeconds
) }}
{{- if eq $v.tls.mode "selfManaged" }}
{{- $fullname := include "image-proxy-webhook.fullname" . }}
{{- $_ := set $config "selfManagedTLS" (dict
  "secretName" (include "image-proxy-webhook.tlsSecretName" .)
  "dnsNames" (include "image-proxy-webhook.selfManagedNames" . | fromJsonArray)
  "mutatingWebhookConfiguration" $fullname
  "validatingWebhookConfiguration" (ternary $fullname "" $v.validatingWebhook.enabled)
  "caValidityDays" $v.tls.selfManaged.caValidityDays
  "certValidityDays" $v.tls.selfManaged.certValidityDays
  "checkIntervalSeconds" $v.tls.selfManaged.checkIntervalSeconds
) }}
{{- end }}
{{- toYaml $config }}
{{- end }}
