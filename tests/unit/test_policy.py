"""The rewrite rules of docs/design.md §1, through the pure core: parse, decide, respond, apply."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from tests.reviews import (
    AIRGAP_CONFIG,
    ONLINE_CONFIG,
    apply,
    images_of,
    operation_problem,
    patch_of,
    pod,
    review,
)
from webhook import config, policy
from webhook import review as wire
from webhook.config import Settings
from webhook.probes import Visibility

D = "sha256:" + "ab" * 32
PROXY = "proxy.replicated.com/proxy/my-app"
ANNOTATION = "image-proxy-webhook.io/original-images"

BASE = ONLINE_CONFIG
AIRGAP = AIRGAP_CONFIG


def settings(base: Mapping[str, Any] = BASE, **changes: Any) -> Settings:
    return config.parse({**base, **changes})


def mutate(
    s: Settings,
    rv: dict[str, Any],
    visibilities: Mapping[policy.Repository, Visibility] | None = None,
    endpoint: str = "mutate",
) -> dict[str, Any]:
    request = wire.parse(json.dumps(rv))
    planned = policy.plan(request.policy_request, s)
    # as the server decides: violations are formatted for the validating endpoint only
    decision = policy.decide(planned, visibilities or {}, s, explain=endpoint == "validate")
    if endpoint == "validate":
        return dict(wire.validate_response(request.uid, decision))
    answer: dict[str, Any] = dict(wire.mutate_response(request.uid, decision, s.secret_name))
    assert answer["response"]["uid"] == rv["request"]["uid"]
    return answer


def plan(s: Settings, rv: dict[str, Any], webhook_namespace: str = "") -> policy.Plan:
    return policy.plan(wire.parse(json.dumps(rv)).policy_request, s, webhook_namespace)


def assert_idempotent(s: Settings, obj: dict[str, Any], **kw: Any) -> None:
    again = mutate(s, review(obj, **kw))
    assert again["response"]["allowed"] is True
    assert patch_of(again) == []


# image, expected image after mutation, pull secret needed
ONLINE = [
    ("quay.io/private-org/api:v1.0.1", f"{PROXY}/quay.io/private-org/api:v1.0.1", True),
    ("nginx", "nginx", False),
    ("nginx:1.25", "nginx:1.25", False),
    ("acme/app", f"{PROXY}/docker.io/acme/app", True),
    ("index.docker.io/acme/app:2", f"{PROXY}/docker.io/acme/app:2", True),
    (f"quay.io/private-org/api@{D}", f"{PROXY}/quay.io/private-org/api@{D}", True),
    (f"quay.io/private-org/api:v1@{D}", f"{PROXY}/quay.io/private-org/api:v1@{D}", True),
    ("ghcr.io/public/tool:3", "ghcr.io/public/tool:3", False),
    (f"{PROXY}/quay.io/private-org/api:v1", f"{PROXY}/quay.io/private-org/api:v1", True),
    ("registry.replicated.com/my-app/api:2", "registry.replicated.com/my-app/api:2", True),
    # unknown visibility with the default onProbeFailure: proxy
    ("gcr.io/unknown/thing:1", f"{PROXY}/gcr.io/unknown/thing:1", True),
    # private, but a port cannot go into the proxy path: unchanged with a warning
    ("registry.example.com:5000/team/app:v1", "registry.example.com:5000/team/app:v1", False),
]


@pytest.mark.parametrize(("image", "expected", "secret"), ONLINE)
def test_online_rewrite(image: str, expected: str, secret: bool) -> None:
    s = settings()
    obj = pod(image)
    answer = mutate(s, review(obj))
    assert answer["response"]["allowed"] is True
    result = apply(answer, obj)
    assert images_of(result) == [expected]
    secrets = result["spec"].get("imagePullSecrets")
    assert secrets == ([{"name": "my-app-registry"}] if secret else None)
    if expected != image:
        assert json.loads(result["metadata"]["annotations"][ANNOTATION]) == {"c0": image}
        assert json.loads(answer["response"]["auditAnnotations"]["original-images"]) == {
            "c0": image
        }
    else:
        assert "annotations" not in result["metadata"]
    assert_idempotent(s, result)


def test_port_warning_says_why() -> None:
    answer = mutate(settings(), review(pod("registry.example.com:5000/team/app:v1")))
    (warning,) = answer["response"]["warnings"]
    assert "registry.example.com:5000/team/app:v1" in warning
    assert "has a port, which cannot be carried in the proxy path" in warning


def test_probe_results_decide_when_no_override() -> None:
    s = settings()
    obj = pod("gcr.io/a/pub:1", "gcr.io/a/priv:1")
    vis = {("gcr.io", "a/pub"): Visibility.PUBLIC, ("gcr.io", "a/priv"): Visibility.PRIVATE}
    result = apply(mutate(s, review(obj), vis), obj)
    assert images_of(result) == ["gcr.io/a/pub:1", f"{PROXY}/gcr.io/a/priv:1"]


def test_override_beats_probe_result() -> None:
    s = settings()
    obj = pod("ghcr.io/public/tool:3")
    answer = mutate(s, review(obj), {("ghcr.io", "public/tool"): Visibility.PRIVATE})
    assert patch_of(answer) == []


def test_repositories_to_probe_skips_overrides_own_hosts_and_duplicates() -> None:
    s = settings()
    obj = pod(
        "gcr.io/a/b:1",
        "gcr.io/a/b:2",
        "nginx",
        f"{PROXY}/x.io/y:1",
        "registry.replicated.com/z",
        "quay.io/private-org/api",
        "Bad Image",
    )
    wanted = plan(s, review(obj)).to_probe
    assert list(wanted) == [("gcr.io", "a/b")]
    assert wanted[("gcr.io", "a/b")].tag == "1"


@pytest.mark.parametrize(
    ("on_failure", "expected_allowed", "expected_image"),
    [
        ("proxy", True, f"{PROXY}/gcr.io/u/t:1"),
        ("direct", True, "gcr.io/u/t:1"),
        ("deny", False, None),
    ],
)
def test_on_probe_failure(
    on_failure: str, expected_allowed: bool, expected_image: str | None
) -> None:
    s = settings(visibility={"onProbeFailure": on_failure})
    obj = pod("gcr.io/u/t:1")
    answer = mutate(s, review(obj), {("gcr.io", "u/t"): Visibility.UNKNOWN})
    assert answer["response"]["allowed"] is expected_allowed
    if expected_image is None:
        assert answer["response"]["status"]["code"] == 403
        assert answer["response"]["status"]["message"] == (
            "container 'c0' image 'gcr.io/u/t:1': the registry could not be checked for "
            "anonymous access and onProbeFailure is deny; retry shortly"
        )
        assert "patch" not in answer["response"]
    else:
        assert images_of(apply(answer, obj)) == [expected_image]


def test_all_container_lists_and_existing_secrets_kept() -> None:
    s = settings()
    obj = pod(
        "acme/app:1",
        "nginx",
        init=("quay.io/private-org/init:1",),
        ephemeral=("acme/debug:1",),
        pull_secrets=[{"name": "other"}],
    )
    answer = mutate(s, review(obj))
    result = apply(answer, obj)
    assert images_of(result) == [f"{PROXY}/docker.io/acme/app:1", "nginx"]
    assert images_of(result, "initContainers") == [f"{PROXY}/quay.io/private-org/init:1"]
    assert images_of(result, "ephemeralContainers") == [f"{PROXY}/docker.io/acme/debug:1"]
    assert result["spec"]["imagePullSecrets"] == [{"name": "other"}, {"name": "my-app-registry"}]
    assert json.loads(result["metadata"]["annotations"][ANNOTATION]) == {
        "c0": "acme/app:1",
        "i0": "quay.io/private-org/init:1",
        "e0": "acme/debug:1",
    }
    assert_idempotent(s, result)


def test_secret_already_listed_is_not_added_twice() -> None:
    s = settings()
    obj = pod("acme/app:1", pull_secrets=[{"name": "my-app-registry"}])
    result = apply(mutate(s, review(obj)), obj)
    assert result["spec"]["imagePullSecrets"] == [{"name": "my-app-registry"}]


def test_existing_annotations_are_kept_and_merged() -> None:
    s = settings()
    obj = pod("acme/app:1", annotations={"team": "a", ANNOTATION: '{"old":"x:1"}'})
    result = apply(mutate(s, review(obj)), obj)
    assert result["metadata"]["annotations"]["team"] == "a"
    assert json.loads(result["metadata"]["annotations"][ANNOTATION]) == {
        "old": "x:1",
        "c0": "acme/app:1",
    }


def test_custom_registry_domain_replaces_upstream_host() -> None:
    s = settings(registryDomain="images.vendor.example")
    obj = pod("registry.replicated.com/my-app/api:2", "images.vendor.example/my-app/web:1")
    result = apply(mutate(s, review(obj)), obj)
    assert images_of(result) == [
        "images.vendor.example/my-app/api:2",
        "images.vendor.example/my-app/web:1",
    ]
    assert result["spec"]["imagePullSecrets"] == [{"name": "my-app-registry"}]
    assert_idempotent(s, result)


def test_custom_proxy_domain_and_secret_name() -> None:
    s = settings(proxyDomain="proxy.vendor.example", pullSecretName="vendor-pull")
    obj = pod("acme/app:1")
    result = apply(mutate(s, review(obj)), obj)
    assert images_of(result) == ["proxy.vendor.example/proxy/my-app/docker.io/acme/app:1"]
    assert result["spec"]["imagePullSecrets"] == [{"name": "vendor-pull"}]


@pytest.mark.parametrize("subresource", [None, "ephemeralcontainers"])
def test_update_rewrites_images_but_never_adds_the_secret(subresource: str | None) -> None:
    s = settings()
    obj = pod("nginx", ephemeral=("acme/debug:1",))
    answer = mutate(s, review(obj, operation="UPDATE", subresource=subresource))
    ops = patch_of(answer)
    assert {op["path"] for op in ops if "imagePullSecrets" in op["path"]} == set()
    result = apply(answer, obj)
    assert images_of(result, "ephemeralContainers") == [f"{PROXY}/docker.io/acme/debug:1"]
    assert "imagePullSecrets" not in result["spec"]
    (warning,) = answer["response"]["warnings"]
    assert warning.startswith("pod needs imagePullSecret 'my-app-registry', which cannot be added")
    # The subresource drops metadata changes, so only a plain UPDATE annotates.
    assert (ANNOTATION in result["metadata"].get("annotations", {})) is (subresource is None)


def test_legacy_ephemeral_containers_object() -> None:
    """Kubernetes 1.20/1.21 send pods/ephemeralcontainers as a v1 EphemeralContainers object."""
    s = settings()
    obj = {
        "apiVersion": "v1",
        "kind": "EphemeralContainers",
        "metadata": {"name": "web", "namespace": "my-app"},
        "ephemeralContainers": [
            {"name": "debug", "image": "acme/debug:1"},
            {"name": "shell", "image": "busybox"},
        ],
    }
    answer = mutate(
        s,
        review(
            obj, operation="UPDATE", kind="EphemeralContainers", subresource="ephemeralcontainers"
        ),
    )
    assert patch_of(answer) == [
        {
            "op": "replace",
            "path": "/ephemeralContainers/0/image",
            "value": f"{PROXY}/docker.io/acme/debug:1",
        }
    ]
    assert answer["response"]["auditAnnotations"] == {"original-images": '{"debug":"acme/debug:1"}'}


# image, expected (None: denied)
AIRGAP_CASES = [
    ("nginx", "registry.local:5000/my-app/nginx:latest"),
    ("nginx:1.25", "registry.local:5000/my-app/nginx:1.25"),
    ("quay.io/org/team/api:v2", "registry.local:5000/my-app/api:v2"),
    ("registry.local:5000/my-app/api:v2", "registry.local:5000/my-app/api:v2"),
    ("registry.local:5000/elsewhere/tool:1", "registry.local:5000/elsewhere/tool:1"),
    (f"{PROXY}/quay.io/org/api:v3", "registry.local:5000/my-app/api:v3"),
    (f"quay.io/org/api@{D}", None),
    (f"quay.io/org/api:v1@{D}", None),
]


@pytest.mark.parametrize(
    ("base", "image"),
    [(BASE, image) for image, _, _ in ONLINE]
    + [(AIRGAP, image) for image, _ in AIRGAP_CASES]
    + [(BASE, "Not An Image"), (BASE, "[::1]:5000/team/app:v1")],
)
@pytest.mark.parametrize("on_failure", ["proxy", "direct", "deny"])
def test_a_decision_without_explaining_differs_only_in_its_violations(
    base: Mapping[str, Any], image: str, on_failure: str
) -> None:
    s = settings(base, visibility={"onProbeFailure": on_failure})
    planned = plan(s, review(pod(image, "ops/tool:1"), operation="CREATE"))
    for visibility in Visibility:
        found = dict.fromkeys(planned.to_probe, visibility)
        explained = policy.decide(planned, found, s)
        quiet = policy.decide(planned, found, s, explain=False)
        assert quiet == explained._replace(violations=())
        if explained.rewrites or explained.denials:
            assert explained.violations  # explaining says why


@pytest.mark.parametrize(("image", "expected"), AIRGAP_CASES)
def test_airgap(image: str, expected: str | None) -> None:
    s = settings(AIRGAP)
    obj = pod(image)
    answer = mutate(s, review(obj))
    if expected is None:
        assert answer["response"]["allowed"] is False
        assert answer["response"]["status"] == {
            "code": 403,
            "message": f"container 'c0' image {image!r} is pinned by digest, which air-gap mode "
            "cannot serve from the local registry registry.local:5000: use a tag instead",
        }
        return
    result = apply(answer, obj)
    assert images_of(result) == [expected]
    assert "imagePullSecrets" not in result["spec"]  # no credentials configured
    assert_idempotent(s, result)


def test_airgap_with_credentials_needs_the_secret_and_empty_namespace() -> None:
    s = settings(
        AIRGAP, airgap={"registry": "registry.local", "username": "u", "passwordFile": "/p"}
    )
    obj = pod("quay.io/org/api:v2")
    result = apply(mutate(s, review(obj)), obj)
    assert images_of(result) == ["registry.local/api:v2"]
    assert result["spec"]["imagePullSecrets"] == [{"name": "my-app-registry"}]


def test_airgap_probes_nothing() -> None:
    s = settings(AIRGAP)
    assert plan(s, review(pod("gcr.io/a/b:1"))).to_probe == {}


def test_unparseable_image_is_left_with_a_warning_and_denied_by_validate() -> None:
    s = settings()
    obj = pod("Bad/Image", "acme/app:1")
    answer = mutate(s, review(obj))
    assert answer["response"]["allowed"] is True
    assert images_of(apply(answer, obj)) == ["Bad/Image", f"{PROXY}/docker.io/acme/app:1"]
    assert answer["response"]["warnings"] == [
        "container 'c0' left unchanged: invalid image reference 'Bad/Image': "
        "repository name 'Image' must be lower case"
    ]
    verdict = mutate(s, review(obj), endpoint="validate")
    assert verdict["response"]["allowed"] is False
    assert "repository name 'Image' must be lower case" in verdict["response"]["status"]["message"]


def test_validate_denies_what_mutation_would_change_and_allows_its_output() -> None:
    s = settings()
    obj = pod("acme/app:1", "nginx")
    verdict = mutate(s, review(obj), endpoint="validate")
    assert verdict["response"]["allowed"] is False
    assert verdict["response"]["status"]["code"] == 403
    assert verdict["response"]["status"]["message"] == (
        f"container 'c0' image 'acme/app:1' is private and must be pulled through the proxy: "
        f"use '{PROXY}/docker.io/acme/app:1'; pod needs imagePullSecret 'my-app-registry'"
    )
    assert "patch" not in verdict["response"]
    mutated = apply(mutate(s, review(obj)), obj)
    after = mutate(s, review(mutated), endpoint="validate")["response"]
    assert after == {"uid": after["uid"], "allowed": True}


def test_validate_denies_port_images_and_airgap_violations() -> None:
    port = mutate(
        settings(), review(pod("registry.example.com:5000/team/app:v1")), endpoint="validate"
    )
    assert port["response"]["allowed"] is False
    assert "has a port" in port["response"]["status"]["message"]
    off = mutate(settings(AIRGAP), review(pod("quay.io/org/api:v2")), endpoint="validate")
    assert off["response"]["status"]["message"] == (
        "container 'c0' image 'quay.io/org/api:v2' must come from the local registry: "
        "use 'registry.local:5000/my-app/api:v2'"
    )


@pytest.mark.parametrize(
    ("kind", "obj_pointer", "spec"),
    [
        ("Deployment", ("spec", "template"), None),
        ("StatefulSet", ("spec", "template"), None),
        ("DaemonSet", ("spec", "template"), None),
        ("ReplicaSet", ("spec", "template"), None),
        ("ReplicationController", ("spec", "template"), None),
        ("Job", ("spec", "template"), None),
        ("CronJob", ("spec", "jobTemplate", "spec", "template"), None),
    ],
)
def test_workload_templates(kind: str, obj_pointer: tuple[str, ...], spec: None) -> None:
    template = {"spec": {"containers": [{"name": "app", "image": "acme/app:1"}]}}
    obj: dict[str, Any] = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}}
    node = obj
    for key in obj_pointer[:-1]:
        node = node.setdefault(key, {})
    node[obj_pointer[-1]] = template

    off = mutate(settings(), review(obj, kind=kind, group="apps"))
    assert patch_of(off) == []

    s = settings(mutateWorkloads=True)
    result = apply(mutate(s, review(obj, kind=kind, group="apps")), obj)
    node = result
    for key in obj_pointer:
        node = node[key]
    assert node["spec"]["containers"][0]["image"] == f"{PROXY}/docker.io/acme/app:1"
    assert node["spec"]["imagePullSecrets"] == [{"name": "my-app-registry"}]
    assert json.loads(node["metadata"]["annotations"][ANNOTATION]) == {"app": "acme/app:1"}
    assert_idempotent(s, result, kind=kind, group="apps")


@pytest.mark.parametrize(
    ("namespaces", "namespace", "webhook_namespace", "mutated"),
    [
        (["my-app"], "my-app", "", True),
        (["my-app"], "other", "", False),
        (["*"], "other", "", True),
        (["*"], "kube-system", "", False),
        (["*"], "webhook-ns", "webhook-ns", False),
    ],
)
def test_namespace_coverage(
    namespaces: list[str], namespace: str, webhook_namespace: str, mutated: bool
) -> None:
    s = settings(namespaces=namespaces)
    planned = plan(s, review(pod("acme/app:1", namespace=namespace)), webhook_namespace)
    assert bool(policy.decide(planned, {}, s).rewrites) is mutated


def test_pod_with_no_containers_is_allowed_untouched() -> None:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {}}
    answer = mutate(settings(), review(obj))
    assert answer["response"] == {"uid": answer["response"]["uid"], "allowed": True}


def test_other_kinds_and_operations_are_allowed_untouched() -> None:
    s = settings()
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}}
    assert mutate(s, review(cm, kind="ConfigMap"))["response"]["allowed"] is True
    assert patch_of(mutate(s, review(cm, kind="ConfigMap"))) == []
    assert plan(s, review(None, operation="DELETE")).template is None


def test_malformed_shapes_inside_the_pod_are_skipped() -> None:
    s = settings()
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {
            "containers": [
                None,
                3,
                {"name": "a"},
                {"name": "b", "image": 7},
                {"image": "acme/app:1"},
            ],
            "initContainers": "nope",
            "imagePullSecrets": None,
        },
    }
    result = apply(mutate(s, review(obj)), obj)
    assert result["spec"]["containers"][4]["image"] == f"{PROXY}/docker.io/acme/app:1"
    assert result["spec"]["imagePullSecrets"] == [{"name": "my-app-registry"}]


def test_registry_on_an_internal_address_is_left_alone() -> None:
    """The customer's own registry: the proxy could not reach it, so nothing is rewritten."""
    for on_failure in ("proxy", "deny"):
        s = settings(visibility={"onProbeFailure": on_failure})
        obj = pod("harbor.corp.example/team/app:1")
        rv = review(obj)
        answer = mutate(s, rv, {("harbor.corp.example", "team/app"): Visibility.INTERNAL})
        assert answer["response"]["allowed"] is True
        assert patch_of(answer) == []
        assert answer["response"]["warnings"] == [
            "container 'c0' image 'harbor.corp.example/team/app:1': registry on an internal "
            "address, left unchanged (add a visibility override to route it)"
        ]
        visibilities = {("harbor.corp.example", "team/app"): Visibility.INTERNAL}
        assert policy.decide(plan(s, rv), visibilities, s).details == (
            "container 'c0' image 'harbor.corp.example/team/app:1': its registry is on an "
            "internal address, which the webhook does not probe and the proxy cannot reach; "
            "left unchanged (add a visibility override to route it)",
        )
        verdict = mutate(
            s, rv, {("harbor.corp.example", "team/app"): Visibility.INTERNAL}, "validate"
        )
        assert verdict["response"]["allowed"] is True


def test_override_visibility_must_be_public_or_private() -> None:
    with pytest.raises(config.ConfigError, match="visibility: required, one of public, private"):
        settings(visibility={"overrides": [{"match": "x/*", "visibility": "internal"}]})


def _without_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    del obj["metadata"]
    return obj


# Each shape of operation the mutating answer writes: (object, the expected (op, path) list).
PATCH_SHAPES = [
    (
        pod("acme/app:1"),
        [
            ("replace", "/spec/containers/0/image"),
            ("add", "/spec/imagePullSecrets"),
            ("add", "/metadata/annotations"),
        ],
    ),
    (
        pod("acme/app:1", pull_secrets=[{"name": "other"}], annotations={"team": "a"}),
        [
            ("replace", "/spec/containers/0/image"),
            ("add", "/spec/imagePullSecrets/-"),
            ("add", "/metadata/annotations/image-proxy-webhook.io~1original-images"),
        ],
    ),
    (
        _without_metadata(pod("nginx", "acme/app:1")),
        [
            ("replace", "/spec/containers/1/image"),
            ("add", "/spec/imagePullSecrets"),
            ("add", "/metadata"),
        ],
    ),
    (
        pod(image_volumes={"data": "acme/data:1"}),
        [
            ("replace", "/spec/volumes/0/image/reference"),
            ("add", "/spec/imagePullSecrets"),
            ("add", "/metadata/annotations"),
        ],
    ),
]


@pytest.mark.parametrize(("obj", "expected"), PATCH_SHAPES)
def test_patch_operations_are_well_formed_and_apply(
    obj: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    """The patch is written from the decision's pointers: each operation is checked
    (op, a JSON pointer path, a value) and the whole applies to the object."""
    answer = mutate(settings(), review(obj, namespace="my-app"))
    ops = patch_of(answer)  # checks every operation is well formed
    assert [(op["op"], op["path"]) for op in ops] == expected
    result = apply(answer, obj)
    assert result["spec"]["imagePullSecrets"][-1] == {"name": "my-app-registry"}
    assert ANNOTATION in result["metadata"]["annotations"]


@pytest.mark.parametrize(
    "op",
    [
        [],
        {"op": "remove", "path": "/spec"},
        {"op": "add", "path": "/spec"},
        {"op": "add", "path": "/spec", "value": 1, "from": "/x"},
        {"op": "replace", "path": "spec/containers", "value": "x"},
        {"op": "add", "path": "/metadata/annotations/a~2b", "value": "x"},
        {"op": "add", "path": "/metadata/annotations/a~", "value": "x"},
        {"op": "replace", "path": "/spec/imagePullSecrets/-", "value": {}},
        {"op": "add", "path": 3, "value": "x"},
    ],
)
def test_malformed_operations_are_caught(op: object) -> None:
    assert operation_problem(op) is not None


# metadata.annotations as the object holds it; the record's earlier originals kept
EARLIER = {"c9": "acme/old:1"}
ANNOTATION_STATES = [
    ("no metadata", None, {}),
    ("no annotations", {}, {}),
    ("annotations not a mapping", {"annotations": ["x"]}, {}),
    ("other annotations", {"annotations": {"team": "a"}}, {}),
    ("empty record", {"annotations": {ANNOTATION: ""}}, {}),
    ("record not JSON", {"annotations": {ANNOTATION: "{oops"}}, {}),
    ("record not an object", {"annotations": {ANNOTATION: "[1]"}}, {}),
    ("earlier record", {"annotations": {ANNOTATION: json.dumps(EARLIER)}}, EARLIER),
]


@pytest.mark.parametrize(
    ("metadata", "earlier"),
    [state[1:] for state in ANNOTATION_STATES],
    ids=[state[0] for state in ANNOTATION_STATES],
)
def test_audit_record_is_this_requests_originals_and_the_annotation_keeps_earlier_ones(
    metadata: dict[str, Any] | None, earlier: dict[str, str]
) -> None:
    obj = pod("acme/app:1")
    if metadata is None:
        del obj["metadata"]
    else:
        obj["metadata"].update(metadata)
    answer = mutate(settings(), review(obj, namespace="my-app"))
    record = apply(answer, obj)["metadata"]["annotations"][ANNOTATION]
    assert record == json.dumps(
        {**earlier, "c0": "acme/app:1"}, sort_keys=True, separators=(",", ":")
    )
    assert answer["response"]["auditAnnotations"] == {"original-images": '{"c0":"acme/app:1"}'}
