{{/*
CEL: the air-gap ValidatingAdmissionPolicy's image lists and the webhooks' matchConditions.
*/}}

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
