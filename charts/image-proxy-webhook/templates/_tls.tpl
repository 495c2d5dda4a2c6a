{{/*
The serving certificate in each tls.mode: names, the Helm-generated pair, the caBundle.
*/}}

{{- define "image-proxy-webhook.tlsSecretName" -}}
{{- if eq .Values.tls.mode "existingSecret" }}
{{- .Values.tls.existingSecret }}
{{- else if eq .Values.tls.mode "selfManaged" }}
{{- printf "%s-certs" (include "image-proxy-webhook.fullname" .) }}
{{- else }}
{{- printf "%s-tls" (include "image-proxy-webhook.fullname" .) }}
{{- end }}
{{- end }}

{{- define "image-proxy-webhook.certificateName" -}}
{{- include "image-proxy-webhook.fullname" . }}
{{- end }}

{{/* The names the API server may use for the Service. */}}
{{- define "image-proxy-webhook.dnsNames" -}}
{{- $svc := include "image-proxy-webhook.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/* tls.mode selfManaged: the names of the webhook's certificate, plus webhook.url's host. */}}
{{- define "image-proxy-webhook.selfManagedNames" -}}
{{- $names := include "image-proxy-webhook.dnsNames" . | fromJsonArray }}
{{- with .Values.webhook.url }}
{{- $names = append $names (urlParse .).hostname }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/*
tls.mode helm: the CA and serving certificate, as JSON {ca, crt, key} (PEM).
The Secret of an earlier release is reused when it holds all three files, so an
upgrade keeps the CA the webhook configurations trust. Otherwise a new pair is
generated once per render and cached, so that the Secret and the webhook
configurations (separate templates) agree.
*/}}
{{- define "image-proxy-webhook.helmTLS" -}}
{{- $cache := index .Values "__imageProxyWebhookTLS" | default dict }}
{{- if not $cache.crt }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "image-proxy-webhook.tlsSecretName" .) }}
{{- $data := dig "data" dict $existing }}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") }}
{{- $_ := set $cache "ca" (index $data "ca.crt" | b64dec) }}
{{- $_ := set $cache "crt" (index $data "tls.crt" | b64dec) }}
{{- $_ := set $cache "key" (index $data "tls.key" | b64dec) }}
{{- else }}
{{- $days := int .Values.tls.validityDays }}
{{- $ca := genCA (printf "%s-ca" (include "image-proxy-webhook.fullname" .)) $days }}
{{- $names := include "image-proxy-webhook.dnsNames" . | fromJsonArray }}
{{- $cert := genSignedCert (index $names 2) nil $names $days $ca }}
{{- $_ := set $cache "ca" $ca.Cert }}
{{- $_ := set $cache "crt" $cert.Cert }}
{{- $_ := set $cache "key" $cert.Key }}
{{- end }}
{{- $_ := set .Values "__imageProxyWebhookTLS" $cache }}
{{- end }}
{{- toJson $cache }}
{{- end }}

{{/*
The caBundle for clientConfig (base64 of PEM), or "" when cert-manager or, with
tls.mode selfManaged, the webhook itself sets it.
*/}}
{{- define "image-proxy-webhook.caBundle" -}}
{{- if eq .Values.tls.mode "selfManaged" }}
{{- else if or .Values.webhook.url (eq .Values.tls.mode "existingSecret") }}
{{- $ca := .Values.tls.caBundle | trim }}
{{- if hasPrefix "-----BEGIN" $ca }}{{ b64enc $ca }}{{ else }}{{ $ca }}{{ end }}
{{- else if eq .Values.tls.mode "helm" }}
{{- (include "image-proxy-webhook.helmTLS" . | fromJson).ca | b64enc }}
{{- end }}
{{- end }}

{{/* Annotations of a webhook configuration (cert-manager CA injection). */}}
{{- define "image-proxy-webhook.webhookAnnotations" -}}
{{- if and (eq .Values.tls.mode "certManager") (not .Values.webhook.url) }}
cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "image-proxy-webhook.certificateName" .) }}
{{- end }}
{{- end }}
