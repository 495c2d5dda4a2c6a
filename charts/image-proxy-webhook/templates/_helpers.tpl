{{/*
Names, labels and the pieces several templates share.
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

{{/*
RBAC rules for the pull secret, exactly the calls webhook/pullsecrets.py makes:
create it (create cannot be limited by name); read, update, and delete only that
one Secret (a Secret of another type is deleted and created again, because its
type cannot be changed). tests/e2e/test_rbac.py checks each verb is used.
*/}}
{{- define "image-proxy-webhook.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: [{{ include "image-proxy-webhook.pullSecretName" . | quote }}]
  verbs: ["get", "update", "delete"]
{{- end }}

{{- define "image-proxy-webhook.renderPolicy" -}}
{{- if and .Values.validatingAdmissionPolicy.enabled (eq .Values.mode "airgap") (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy") }}true{{ end }}
{{- end }}

{{/*
CEL: every image of the pod spec in .spec (a CEL expression) as
{at, what, image}: `at` is the place the rule "same place in oldObject"
(docs/design.md §1) compares, "<list>/<name>"; `what` names it in messages.
Containers, initContainers, ephemeralContainers and image volumes
(volumes[].image.reference). Core CEL only (no optional syntax), so that the
API servers' oldest environment with matchConditions (1.28, which compiles new
expressions with the 1.27 libraries) accepts it; a field that may be absent is
read behind has(), and a list that may be null (a nil list of the legacy
EphemeralContainers object) behind a type check. Kubernetes compiles CEL
with homogeneous aggregate literals, so every value of the map literal is
typed string (string(), concatenation), none dyn.
*/}}
{{- define "image-proxy-webhook.celImages" -}}
{{- $s := .spec }}
{{- range $list := list "containers" "initContainers" "ephemeralContainers" }}
(has({{ $s }}.{{ $list }}) && type({{ $s }}.{{ $list }}) == list ? {{ $s }}.{{ $list }}.map(c,
  {'at': '{{ $list }}/' + c.name, 'what': 'container ' + c.name, 'image': has(c.image) ? string(c.image) : ''}) : []) +
{{- end }}
(has({{ $s }}.volumes) && type({{ $s }}.volumes) == list ? {{ $s }}.volumes.filter(v, has(v.image)).map(v,
  {'at': 'volumes/' + v.name, 'what': 'image volume ' + v.name, 'image': has(v.image.reference) ? string(v.image.reference) : ''}) : [])
{{- end }}

{{/*
CEL: the images of the object in .obj (object or oldObject) of any kind the
webhooks receive: a Pod (spec), a workload (spec.template.spec), a CronJob
(spec.jobTemplate.spec.template.spec), or the v1 EphemeralContainers object of
the pods/ephemeralcontainers subresource before Kubernetes 1.22 (its
ephemeralContainers list at the top). The pod spec is picked once and bound
through a one-element map(). The templates on the way are structs in the API
types, always present; a ReplicationController's template is optional and
then yields no image.
*/}}
{{- define "image-proxy-webhook.celObjectImages" -}}
{{- $o := .obj -}}
[!has({{ $o }}.spec) ? {{ $o }}
  : has({{ $o }}.spec.template) ? {{ $o }}.spec.template.spec
  : has({{ $o }}.spec.jobTemplate) ? {{ $o }}.spec.jobTemplate.spec.template.spec
  : {{ $o }}.spec].map(s,
{{- include "image-proxy-webhook.celImages" (dict "spec" "s") | trim | nindent 2 }}
)[0]
{{- end }}

{{- define "image-proxy-webhook.matchConditionsEnabled" -}}
{{- $mode := .Values.webhook.matchConditions }}
{{- if or (eq $mode "enabled") (and (eq $mode "auto") (semverCompare ">=1.28-0" .Capabilities.KubeVersion.Version)) }}true{{ end }}
{{- end }}

{{/* matchCondition: mirror Pods (the API server's copies of static Pods) are left alone (docs/design.md §1). */}}
{{- define "image-proxy-webhook.notMirrorPod" -}}
- name: not-a-mirror-pod
  expression: >-
    request.kind.kind != 'Pod' || !has(object.metadata.annotations) ||
    !('kubernetes.io/config.mirror' in object.metadata.annotations)
{{- end }}

{{/*
matchConditions of both webhooks: the API server calls them only for what the
server would decide (docs/design.md §1), so that floods of Pod UPDATEs (labels,
annotations, finalizers) never reach them. An expression that fails applies
failurePolicy (Ignore would skip the call), so CREATE is settled before the
object is read.
*/}}
{{- define "image-proxy-webhook.matchConditions" -}}
{{ include "image-proxy-webhook.notMirrorPod" . }}
- name: changes-an-image
  expression: >-
    request.operation != 'UPDATE' || oldObject == null ||
    {{- include "image-proxy-webhook.celObjectImages" (dict "obj" "object") | nindent 4 }}
    !=
    {{- include "image-proxy-webhook.celObjectImages" (dict "obj" "oldObject") | nindent 4 }}
{{- end }}
