"""The chart's CEL, as the chart renders it, evaluated by a real CEL engine
(cel-expr-python, Google's C++ CEL) against sample admission requests: the
ValidatingAdmissionPolicy (with the strings and optional extensions Kubernetes
enables) and the webhooks' matchConditions (core CEL only, as the oldest API
servers with matchConditions compile them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.chart.chartlib import KUBE_VERSION, VAP_API, RenderFn
from tests.reviews import review
from tests.support import require

pytestmark = pytest.mark.chart

REGISTRY = "registry.local:5000"
DIGEST = "sha256:" + "ab" * 32
GOOD = f"{REGISTRY}/my-app/api:1.0"
AIRGAP = {
    "appSlug": "my-app",
    "mode": "airgap",
    "airgap": {"registry": REGISTRY, "namespace": "my-app"},
}


@dataclass
class Policy:
    """A ValidatingAdmissionPolicy evaluated the way the API server does: its
    matchConditions (all true, or the request is not checked), then variables in
    order under `variables`, then each validation; a false validation denies with
    its messageExpression."""

    env: Any
    conditions: list[Any]
    variables: list[tuple[str, Any]]
    validations: list[tuple[Any, Any]]

    def denials(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
        request = admission(obj, old)
        data: dict[str, Any] = {
            "object": obj,
            "oldObject": old,
            "request": request,
            "variables": {},
        }
        if not matches(self.conditions, data):
            return []
        for name, expression in self.variables:
            data["variables"][name] = expression.eval(data=data).plain_value()
        messages = []
        for check, message in self.validations:
            allowed = check.eval(data=data).plain_value()
            assert isinstance(allowed, bool), allowed
            if not allowed:
                messages.append(message.eval(data=data).plain_value())
        return messages


def admission(
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    subresource: str | None = None,
    kind: str | None = None,
    group: str = "",
) -> dict[str, Any]:
    """The AdmissionRequest the API server builds (tests/reviews.py): UPDATE when
    there is an oldObject."""
    request: dict[str, Any] = review(
        obj,
        operation="UPDATE" if old is not None else "CREATE",
        kind=kind or obj.get("kind", "Pod"),
        group=group,
        subresource=subresource,
        old=old,
    )["request"]
    return request


def matches(conditions: list[Any], data: dict[str, Any]) -> bool:
    """matchConditions: every one must be true. A condition that fails to
    evaluate would make the API server apply failurePolicy, so it fails the test."""
    results = [condition.eval(data=data).plain_value() for condition in conditions]
    for result in results:
        assert isinstance(result, bool), result
    return all(results)


def cel_env(*, extensions: bool) -> Any:
    cel = require("cel_expr_python.cel", "cel-expr-python")
    used = []
    if extensions:
        strings = require("cel_expr_python.ext.ext_strings", "cel-expr-python")
        optional = require("cel_expr_python.ext.ext_optional", "cel-expr-python")
        used = [strings.ExtStrings(), optional.ExtOptional()]
    return cel.NewEnv(
        variables={
            "object": cel.Type.DYN,
            "oldObject": cel.Type.DYN,
            "request": cel.Type.DYN,
            "variables": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
        },
        extensions=used,
    )


def compile_policy(render: RenderFn, values: dict[str, Any]) -> Policy:
    env = cel_env(extensions=True)
    rendered = render(values, api_versions=(VAP_API,), kube_version=KUBE_VERSION)
    spec = rendered.one("ValidatingAdmissionPolicy")["spec"]
    return Policy(
        env,
        [env.compile(c["expression"]) for c in spec["matchConditions"]],
        [(v["name"], env.compile(v["expression"])) for v in spec["variables"]],
        [
            (env.compile(v["expression"]), env.compile(v["messageExpression"]))
            for v in spec["validations"]
        ],
    )


@pytest.fixture(scope="module")
def policy(render: RenderFn) -> Policy:
    return compile_policy(render, AIRGAP)


def pod(
    containers: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
    ephemeral: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers}
    if init is not None:
        spec["initContainers"] = init
    if ephemeral is not None:
        spec["ephemeralContainers"] = ephemeral
    if volumes is not None:
        spec["volumes"] = volumes
    metadata: dict[str, Any] = {"name": "p", "namespace": "my-app"}
    if annotations is not None:
        metadata["annotations"] = annotations
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def c(name: str, image: str | None) -> dict[str, Any]:
    return {"name": name} if image is None else {"name": name, "image": image}


def image_volume(name: str, reference: str | None) -> dict[str, Any]:
    """An image volume (Kubernetes 1.31+): the kubelet pulls `reference` like a
    container image. Without a reference the API server refuses it later; the
    CEL must still not fail on it."""
    source = {} if reference is None else {"reference": reference, "pullPolicy": "IfNotPresent"}
    return {"name": name, "image": source}


def empty_dir(name: str) -> dict[str, Any]:
    return {"name": name, "emptyDir": {}}


PINNED = "images pinned by digest are not allowed"
MIRROR = "kubernetes.io/config.mirror"
OFF = f"every image must be on the local registry {REGISTRY}"

CASES: list[tuple[str, dict[str, Any], dict[str, Any] | None, list[str]]] = [
    # id, object, oldObject, expected denial messages (substrings, in order)
    (
        "local-images",
        pod(
            [c("app", GOOD)],
            [c("init", f"{REGISTRY}/my-app/init:2")],
            [c("debug", f"{REGISTRY}/my-app/debug:1")],
        ),
        None,
        [],
    ),
    ("no-optional-lists", pod([c("app", GOOD)]), None, []),
    ("empty-optional-lists", pod([c("app", GOOD)], [], []), None, []),
    ("registry-host-case", pod([c("app", "Registry.LOCAL:5000/my-app/api:1.0")]), None, []),
    (
        "digest",
        pod([c("app", f"{REGISTRY}/my-app/api@{DIGEST}")]),
        None,
        [f"{PINNED}, use a tag: container app image {REGISTRY}/my-app/api@{DIGEST}"],
    ),
    ("tag-and-digest", pod([c("app", f"{REGISTRY}/my-app/api:1.0@{DIGEST}")]), None, [PINNED]),
    ("docker-hub", pod([c("app", "nginx:1.25")]), None, [f"{OFF}: container app image nginx:1.25"]),
    ("other-registry-digest", pod([c("app", f"quay.io/org/api@{DIGEST}")]), None, [PINNED, OFF]),
    (
        "init-container",
        pod([c("app", GOOD)], [c("init", "busybox:1.36")]),
        None,
        [f"{OFF}: container init image busybox:1.36"],
    ),
    (
        "ephemeral-container",
        pod([c("app", GOOD)], None, [c("debug", f"{REGISTRY}/debug@{DIGEST}")]),
        None,
        [f"{PINNED}, use a tag: container debug image"],
    ),
    ("lookalike-port", pod([c("app", "registry.local:50001/my-app/api:1.0")]), None, [OFF]),
    ("lookalike-host", pod([c("app", "registry.local:5000-evil.example/api:1.0")]), None, [OFF]),
    ("registry-without-path", pod([c("app", "registry.local:5000")]), None, [OFF]),
    ("no-image-field", pod([c("app", None)]), None, [f"{OFF}: container app image "]),
    (
        "several-named",
        pod([c("a", "nginx"), c("b", GOOD), c("c", "redis")]),
        None,
        [f"{OFF}: container a image nginx, container c image redis"],
    ),
    # UPDATE: only images the request introduces are checked.
    ("update-keeps-old-image", pod([c("app", "nginx:1.25")]), pod([c("app", "nginx:1.25")]), []),
    (
        "update-new-ephemeral",
        pod([c("app", "nginx:1.25")], None, [c("debug", "busybox")]),
        pod([c("app", "nginx:1.25")]),
        [f"{OFF}: container debug image busybox"],
    ),
    (
        "update-to-digest",
        pod([c("app", f"{REGISTRY}/my-app/api@{DIGEST}")]),
        pod([c("app", GOOD)]),
        [PINNED],
    ),
    ("update-to-local", pod([c("app", GOOD)]), pod([c("app", "nginx:1.25")]), []),
    # A new ephemeral container is decided even with an image another container had.
    (
        "update-ephemeral-reuses-a-pinned-image",
        pod(
            [c("app", f"quay.io/org/api@{DIGEST}")], None, [c("debug", f"quay.io/org/api@{DIGEST}")]
        ),
        pod([c("app", f"quay.io/org/api@{DIGEST}")]),
        [f"{PINNED}, use a tag: container debug image quay.io/org/api@{DIGEST}", OFF],
    ),
    # Image volumes follow the rules of container images.
    (
        "image-volume-digest",
        pod([c("app", GOOD)], volumes=[image_volume("data", f"{REGISTRY}/my-app/data@{DIGEST}")]),
        None,
        [f"{PINNED}, use a tag: image volume data image {REGISTRY}/my-app/data@{DIGEST}"],
    ),
    (
        "image-volume-tag",
        pod(
            [c("app", GOOD)],
            volumes=[empty_dir("tmp"), image_volume("data", f"{REGISTRY}/my-app/data:1")],
        ),
        None,
        [],
    ),
    (
        "image-volume-off-registry",
        pod([c("app", GOOD)], volumes=[image_volume("data", "quay.io/org/data:1")]),
        None,
        [f"{OFF}: image volume data image quay.io/org/data:1"],
    ),
    (
        "image-volume-without-reference",
        pod([c("app", GOOD)], volumes=[image_volume("data", None)]),
        None,
        [f"{OFF}: image volume data image "],
    ),
    (
        "update-keeps-pinned-image-volume",
        pod([c("app", GOOD)], volumes=[image_volume("data", f"quay.io/org/data@{DIGEST}")]),
        pod([c("app", GOOD)], volumes=[image_volume("data", f"quay.io/org/data@{DIGEST}")]),
        [],
    ),
    (
        "update-image-volume-to-digest",
        pod([c("app", GOOD)], volumes=[image_volume("data", f"{REGISTRY}/my-app/data@{DIGEST}")]),
        pod([c("app", GOOD)], volumes=[image_volume("data", f"{REGISTRY}/my-app/data:1")]),
        [f"{PINNED}, use a tag: image volume data image"],
    ),
    # An image volume named like a container is another place.
    (
        "image-volume-named-like-a-container",
        pod(
            [c("app", f"quay.io/org/api@{DIGEST}")],
            volumes=[image_volume("app", f"quay.io/org/api@{DIGEST}")],
        ),
        pod([c("app", f"quay.io/org/api@{DIGEST}")]),
        [f"{PINNED}, use a tag: image volume app image", OFF],
    ),
    # Mirror Pods (static Pods seen through the API) are never refused.
    (
        "mirror-pod",
        pod([c("app", f"quay.io/org/api@{DIGEST}")], annotations={MIRROR: "abc"}),
        None,
        [],
    ),
]


@pytest.mark.parametrize(
    ("obj", "old", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_airgap_policy(
    policy: Policy, obj: dict[str, Any], old: dict[str, Any] | None, expected: list[str]
) -> None:
    messages = policy.denials(obj, old)
    assert len(messages) == len(expected), messages
    for message, part in zip(messages, expected, strict=True):
        assert message.startswith("air-gap mode: ") and part in message, message


def test_registry_value_is_compared_case_insensitively(render: RenderFn) -> None:
    upper = compile_policy(render, {**AIRGAP, "airgap": {"registry": "Registry.Local"}})
    assert upper.denials(pod([c("app", "registry.local/my-app/api:1")])) == []
    assert len(upper.denials(pod([c("app", "registry.local:5000/my-app/api:1")]))) == 1


# --- the webhooks' matchConditions -------------------------------------------

WEBHOOKS = {
    "appSlug": "my-app",
    "license": {"id": "test-license-id"},
    "mutateWorkloads": True,
    "validatingWebhook": {"enabled": True},
}
# The oldest API server with matchConditions (beta, on by default).
MATCH_CONDITIONS_VERSION = "1.28.0"


@pytest.fixture(scope="module")
def conditions(render: RenderFn) -> dict[str, list[Any]]:
    """The compiled matchConditions of each webhook, by webhook name. Compiled
    without the CEL extensions: a 1.28 API server compiles new expressions with
    the libraries of 1.27, which have neither optional syntax nor the strings
    extension Kubernetes later enables."""
    env = cel_env(extensions=False)
    rendered = render(WEBHOOKS, kube_version=MATCH_CONDITIONS_VERSION)
    found = {}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        [hook] = rendered.one(kind)["webhooks"]
        found[hook["name"]] = [env.compile(c["expression"]) for c in hook["matchConditions"]]
    return found


def workload(
    kind: str,
    containers: list[dict[str, Any]],
    *,
    volumes: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """A workload whose pod template holds these containers (a CronJob's one level
    deeper)."""
    template_spec: dict[str, Any] = {"containers": containers}
    if volumes is not None:
        template_spec["volumes"] = volumes
    template = {"metadata": {"labels": {"app": "web"}}, "spec": template_spec}
    group = {"Job": "batch", "CronJob": "batch", "ReplicationController": ""}.get(kind, "apps")
    spec: dict[str, Any]
    if kind == "CronJob":
        spec = {
            "schedule": f"*/{replicas} * * * *",
            "jobTemplate": {"spec": {"template": template}},
        }
    else:
        spec = {"replicas": replicas, "template": template}
    metadata: dict[str, Any] = {"name": "w", "namespace": "my-app"}
    if annotations is not None:
        metadata["annotations"] = annotations
    api_version = f"{group}/v1" if group else "v1"
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}


def legacy_ephemeral(containers: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The v1 EphemeralContainers object of the pods/ephemeralcontainers
    subresource before Kubernetes 1.22 (a nil list is serialised as null)."""
    return {
        "apiVersion": "v1",
        "kind": "EphemeralContainers",
        "metadata": {"name": "p", "namespace": "my-app"},
        "ephemeralContainers": containers,
    }


APP = c("app", "quay.io/org/api:1.0")
APP2 = c("app", "quay.io/org/api:2.0")
DEBUG = c("debug", "busybox:1.36")
VOLUME = image_volume("data", "quay.io/org/data:1")
VOLUME2 = image_volume("data", "quay.io/org/data:2")
GROUPS = {"Deployment": "apps", "StatefulSet": "apps", "Job": "batch", "CronJob": "batch"}

# id, object, oldObject (None: CREATE), subresource, whether the API server calls the webhooks
CALLS: list[tuple[str, dict[str, Any], dict[str, Any] | None, str | None, bool]] = [
    ("pod-create", pod([APP]), None, None, True),
    ("pod-create-annotated", pod([APP], annotations={"team": "a"}), None, None, True),
    ("pod-create-no-image", pod([c("app", None)]), None, None, True),
    ("mirror-pod-create", pod([APP], annotations={MIRROR: "x"}), None, None, False),
    (
        "mirror-pod-image-changed",
        pod([APP2], annotations={MIRROR: "x"}),
        pod([APP], annotations={MIRROR: "x"}),
        None,
        False,
    ),
    ("pod-label-only", pod([APP], labels={"a": "b"}), pod([APP]), None, False),
    (
        "pod-annotation-only",
        pod([APP], [c("init", "busybox")], [DEBUG], [VOLUME], annotations={"x": "y"}),
        pod([APP], [c("init", "busybox")], [DEBUG], [VOLUME]),
        None,
        False,
    ),
    ("pod-unchanged-no-image", pod([c("app", None)]), pod([c("app", None)]), None, False),
    ("pod-image-changed", pod([APP2]), pod([APP]), None, True),
    ("pod-image-removed", pod([c("app", None)]), pod([APP]), None, True),
    (
        "pod-init-image-changed",
        pod([APP], [c("init", "busybox:2")]),
        pod([APP], [c("init", "busybox:1")]),
        None,
        True,
    ),
    ("ephemeral-added", pod([APP], None, [DEBUG]), pod([APP]), "ephemeralcontainers", True),
    (
        "ephemeral-added-to-others",
        pod([APP], None, [DEBUG, c("debug2", "busybox:1.36")]),
        pod([APP], None, [DEBUG]),
        "ephemeralcontainers",
        True,
    ),
    (
        "ephemeral-unchanged",
        pod([APP], None, [DEBUG]),
        pod([APP], None, [DEBUG]),
        "ephemeralcontainers",
        False,
    ),
    (
        "legacy-ephemeral-added",
        legacy_ephemeral([DEBUG]),
        legacy_ephemeral(None),
        "ephemeralcontainers",
        True,
    ),
    (
        "legacy-ephemeral-unchanged",
        legacy_ephemeral([DEBUG]),
        legacy_ephemeral([DEBUG]),
        "ephemeralcontainers",
        False,
    ),
    (
        "legacy-ephemeral-null",
        legacy_ephemeral(None),
        legacy_ephemeral(None),
        "ephemeralcontainers",
        False,
    ),
    (
        "image-volume-changed",
        pod([APP], volumes=[VOLUME2]),
        pod([APP], volumes=[VOLUME]),
        None,
        True,
    ),
    ("image-volume-added", pod([APP], volumes=[VOLUME]), pod([APP], volumes=[]), None, True),
    (
        "image-volume-renamed",
        pod([APP], volumes=[image_volume("other", "quay.io/org/data:1")]),
        pod([APP], volumes=[VOLUME]),
        None,
        True,
    ),
    (
        "other-volume-added",
        pod([APP], volumes=[VOLUME, empty_dir("tmp")]),
        pod([APP], volumes=[VOLUME]),
        None,
        False,
    ),
    ("deployment-create", workload("Deployment", [APP]), None, None, True),
    (
        "deployment-create-mirror-annotation",  # only Pods are mirror Pods
        workload("Deployment", [APP], annotations={MIRROR: "x"}),
        None,
        None,
        True,
    ),
    (
        "deployment-scaled",
        workload("Deployment", [APP], replicas=3),
        workload("Deployment", [APP]),
        None,
        False,
    ),
    ("deployment-image", workload("Deployment", [APP2]), workload("Deployment", [APP]), None, True),
    (
        "deployment-container-renamed",
        workload("Deployment", [c("web", "quay.io/org/api:1.0")]),
        workload("Deployment", [APP]),
        None,
        True,
    ),
    (
        "deployment-container-added",
        workload("Deployment", [APP, DEBUG]),
        workload("Deployment", [APP]),
        None,
        True,
    ),
    (
        "deployment-image-volume",
        workload("Deployment", [APP], volumes=[VOLUME2]),
        workload("Deployment", [APP], volumes=[VOLUME]),
        None,
        True,
    ),
    (
        "statefulset-image",
        workload("StatefulSet", [APP2]),
        workload("StatefulSet", [APP]),
        None,
        True,
    ),
    ("job-create", workload("Job", [APP]), None, None, True),
    (
        "job-image-volume-added",
        workload("Job", [APP], volumes=[VOLUME]),
        workload("Job", [APP]),
        None,
        True,
    ),
    ("cronjob-create", workload("CronJob", [APP]), None, None, True),
    (
        "cronjob-schedule",
        workload("CronJob", [APP], replicas=5),
        workload("CronJob", [APP]),
        None,
        False,
    ),
    ("cronjob-image", workload("CronJob", [APP2]), workload("CronJob", [APP]), None, True),
    (
        "replicationcontroller-without-template",
        {**workload("ReplicationController", [APP], replicas=2), "spec": {"replicas": 2}},
        {**workload("ReplicationController", [APP]), "spec": {"replicas": 1}},
        None,
        False,
    ),
    (
        "replicationcontroller-image",
        workload("ReplicationController", [APP2]),
        workload("ReplicationController", [APP]),
        None,
        True,
    ),
]


@pytest.mark.parametrize(
    ("obj", "old", "subresource", "called"),
    [case[1:] for case in CALLS],
    ids=[case[0] for case in CALLS],
)
def test_match_conditions(
    conditions: dict[str, list[Any]],
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    subresource: str | None,
    called: bool,
) -> None:
    kind = obj["kind"]
    request = admission(obj, old, subresource, kind, GROUPS.get(kind, ""))
    data = {"object": obj, "oldObject": old, "request": request}
    assert set(conditions) == {"mutate.image-proxy-webhook.io", "validate.image-proxy-webhook.io"}
    for name, compiled in conditions.items():
        assert matches(compiled, data) is called, name
