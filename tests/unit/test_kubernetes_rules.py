"""The Kubernetes-side rules of docs/design.md §1, through the /mutate and /validate endpoints.

UPDATE decides only the images the request changes; image volumes follow every
rule of container images; workloads owned by a rewritten workload kind and mirror
Pods are left alone; warnings stay short. Each test posts AdmissionReviews to the
real aiohttp app (``server.webhook_app``) on 127.0.0.1 and applies the returned
patch with ``jsonpatch``.

Image volumes (``spec.volumes[].image``, Kubernetes 1.31+) are tested here, through
the endpoints and the CLI, and not in tests/e2e: the 1.20 kube-apiserver there drops
the unknown field before the webhook sees it.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from tests.reviews import (
    AIRGAP_CONFIG,
    ONLINE_CONFIG,
    StaticResolver,
    apply,
    images_of,
    patch_of,
    pod,
    review,
    template_of,
    volume_images_of,
    workload,
)
from webhook import config
from webhook import review as wire
from webhook.__main__ import main
from webhook.admission import Admitter
from webhook.policy import WARNING_MAX
from webhook.probes import Visibility
from webhook.review import ORIGINAL_IMAGES_ANNOTATION
from webhook.server import webhook_app

D = "sha256:" + "ab" * 32
PROXY = "proxy.replicated.com/proxy/my-app"
SECRET = "my-app-registry"
ONLINE = ONLINE_CONFIG
AIRGAP = {**AIRGAP_CONFIG, "namespaces": ["my-app"]}
LOCAL = "registry.local:5000/my-app"


Post = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
Serve = Callable[..., Awaitable[Post]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(settings_dict, resolver=...)``: a post(endpoint, review) function."""
    servers: list[TestServer] = []
    session = aiohttp.ClientSession()

    async def start(data: Mapping[str, Any], resolver: StaticResolver | None = None) -> Post:
        admitter = Admitter(config.parse(dict(data)), resolver=resolver or StaticResolver())
        server = TestServer(webhook_app(admitter), host="127.0.0.1")
        await server.start_server()
        servers.append(server)

        async def post(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
            url = f"http://127.0.0.1:{server.port}/{endpoint}"
            async with session.post(url, json=body) as response:
                assert response.status == 200, await response.text()
                answer: dict[str, Any] = await response.json()
            assert answer["response"]["uid"] == body["request"]["uid"]
            return answer

        return post

    yield start
    await session.close()
    for server in servers:
        await server.close()


def labelled(obj: dict[str, Any]) -> dict[str, Any]:
    """The object after a label and finalizer update (what a controller sends)."""
    new = copy.deepcopy(obj)
    new["metadata"].setdefault("labels", {})["touched"] = "yes"
    new["metadata"]["finalizers"] = ["example.com/cleanup"]
    return new


def record_of(obj: dict[str, Any]) -> Any:
    return json.loads(obj["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION])


# --- UPDATE: only what the request changes ----------------------------------------------


async def test_label_update_of_a_pod_whose_registry_cannot_be_probed_passes_unchanged(
    serve: Serve,
) -> None:
    """onProbeFailure: proxy would rewrite these images on CREATE; on UPDATE they are old."""
    resolver = StaticResolver()  # every probe fails: unknown
    post = await serve(ONLINE, resolver)
    old = pod("gcr.io/u/app:1", init=("gcr.io/u/init:1",), image_volumes={"data": "gcr.io/u/d:1"})
    new = labelled(old)
    for endpoint in ("mutate", "validate"):
        answer = await post(endpoint, review(new, operation="UPDATE", old=old))
        assert answer["response"] == {"uid": answer["response"]["uid"], "allowed": True}
    assert resolver.asked == []  # nothing to decide, nothing probed

    # An image the request changes is decided (and probed); the others still are not.
    changed = copy.deepcopy(new)
    changed["spec"]["containers"][0]["image"] = "gcr.io/u/app:2"
    answer = await post("mutate", review(changed, operation="UPDATE", old=old))
    assert patch_of(answer)[0] == {
        "op": "replace",
        "path": "/spec/containers/0/image",
        "value": f"{PROXY}/gcr.io/u/app:2",
    }
    result = apply(answer, changed)
    assert images_of(result) == [f"{PROXY}/gcr.io/u/app:2"]
    assert images_of(result, "initContainers") == ["gcr.io/u/init:1"]
    assert volume_images_of(result["spec"]) == {"data": "gcr.io/u/d:1"}
    assert "imagePullSecrets" not in result["spec"]  # never added on a Pod UPDATE
    assert record_of(result) == {"c0": "gcr.io/u/app:2"}
    assert resolver.asked == [("gcr.io", "u/app")]
    verdict = await post("validate", review(changed, operation="UPDATE", old=old))
    assert verdict["response"]["status"]["message"].startswith(
        "container 'c0' image 'gcr.io/u/app:2' is private and must be pulled through the proxy"
    )


async def test_label_update_of_a_digest_pinned_pod_passes_in_air_gap(serve: Serve) -> None:
    post = await serve(AIRGAP)
    old = pod(f"quay.io/org/api@{D}", image_volumes={"models": f"quay.io/org/m:v1@{D}"})
    for endpoint in ("mutate", "validate"):
        answer = await post(endpoint, review(labelled(old), operation="UPDATE", old=old))
        assert answer["response"] == {"uid": answer["response"]["uid"], "allowed": True}

    # The same Pod on CREATE, or an UPDATE that pins another digest, is refused.
    created = await post("mutate", review(old))
    assert created["response"]["allowed"] is False
    repinned = copy.deepcopy(old)
    repinned["spec"]["containers"][0]["image"] = f"quay.io/org/api@sha256:{'cd' * 32}"
    refused = await post("mutate", review(repinned, operation="UPDATE", old=old))
    assert refused["response"]["status"]["message"] == (
        f"container 'c0' image 'quay.io/org/api@sha256:{'cd' * 32}' is pinned by digest, which "
        "air-gap mode cannot serve from the local registry registry.local:5000: use a tag instead"
    )


async def test_update_decides_new_ephemeral_containers_and_moved_images(serve: Serve) -> None:
    post = await serve(ONLINE)
    old = pod("quay.io/private-org/api:1")  # created before the webhook: never rewritten
    new = copy.deepcopy(old)
    debug = {"name": "debug", "image": "quay.io/private-org/debug:1"}
    new["spec"]["ephemeralContainers"] = [debug]
    answer = await post(
        "mutate", review(new, operation="UPDATE", subresource="ephemeralcontainers", old=old)
    )
    assert patch_of(answer) == [
        {
            "op": "replace",
            "path": "/spec/ephemeralContainers/0/image",
            "value": f"{PROXY}/quay.io/private-org/debug:1",
        }
    ]

    # The same name and image in another list is another place: decided.
    moved = copy.deepcopy(old)
    moved["spec"]["initContainers"] = [{"name": "c0", "image": "quay.io/private-org/api:1"}]
    answer = await post("mutate", review(moved, operation="UPDATE", old=old))
    assert [op["path"] for op in patch_of(answer)] == [
        "/spec/initContainers/0/image",
        "/metadata/annotations",
    ]


async def test_update_without_old_object_decides_every_image(serve: Serve) -> None:
    post = await serve(ONLINE)
    obj = pod("quay.io/private-org/api:1")
    answer = await post("mutate", review(obj, operation="UPDATE"))
    assert images_of(apply(answer, obj)) == [f"{PROXY}/quay.io/private-org/api:1"]


# --- image volumes -----------------------------------------------------------------------


async def test_image_volume_is_proxied_with_the_secret_and_recorded_apart_from_containers(
    serve: Serve,
) -> None:
    post = await serve(ONLINE)
    # A container and an image volume with the same name: the record keeps both.
    obj = pod(
        "quay.io/private-org/api:1",
        name="web",
        image_volumes={"c0": "quay.io/private-org/models:v2", "docs": "nginx:1.25"},
    )
    answer = await post("mutate", review(obj))
    result = apply(answer, obj)
    assert volume_images_of(result["spec"]) == {
        "c0": f"{PROXY}/quay.io/private-org/models:v2",
        "docs": "nginx:1.25",
    }
    assert result["spec"]["volumes"][0]["image"]["pullPolicy"] == "IfNotPresent"  # kept
    assert result["spec"]["imagePullSecrets"] == [{"name": SECRET}]
    expected = {"c0": "quay.io/private-org/api:1", "volume:c0": "quay.io/private-org/models:v2"}
    assert record_of(result) == expected
    assert json.loads(answer["response"]["auditAnnotations"]["original-images"]) == expected

    verdict = await post("validate", review(obj))
    assert (
        "image volume 'c0' reference 'quay.io/private-org/models:v2' is private and must "
        in (verdict["response"]["status"]["message"])
    )
    again = await post("mutate", review(result))
    assert again["response"] == {"uid": again["response"]["uid"], "allowed": True}
    assert (await post("validate", review(result)))["response"]["allowed"] is True


async def test_image_volume_only_pod_needs_the_secret(serve: Serve) -> None:
    post = await serve(ONLINE)
    obj = pod("nginx", image_volumes={"models": "quay.io/private-org/models:v2"})
    result = apply(await post("mutate", review(obj)), obj)
    assert images_of(result) == ["nginx"]
    assert result["spec"]["imagePullSecrets"] == [{"name": SECRET}]


async def test_image_volume_in_air_gap_is_rewritten_and_refused_by_digest(serve: Serve) -> None:
    post = await serve(AIRGAP)
    obj = pod("nginx:1.25", image_volumes={"models": "quay.io/org/models:v2"})
    answer = await post("mutate", review(obj))
    result = apply(answer, obj)
    assert volume_images_of(result["spec"]) == {"models": f"{LOCAL}/models:v2"}
    assert record_of(result) == {"c0": "nginx:1.25", "volume:models": "quay.io/org/models:v2"}
    verdict = await post("validate", review(obj))
    assert (
        "image volume 'models' reference 'quay.io/org/models:v2' must come from the local "
        in (verdict["response"]["status"]["message"])
    )

    pinned = pod(f"{LOCAL}/app:1", image_volumes={"models": f"quay.io/org/models@{D}"})
    for endpoint in ("mutate", "validate"):
        refused = await post(endpoint, review(pinned))
        assert refused["response"]["status"]["message"] == (
            f"image volume 'models' reference 'quay.io/org/models@{D}' is pinned by digest, "
            "which air-gap mode cannot serve from the local registry registry.local:5000: "
            "use a tag instead"
        )


async def test_invalid_image_volume_is_left_with_a_warning_and_refused_by_validate(
    serve: Serve,
) -> None:
    post = await serve(ONLINE)
    obj = pod("nginx", image_volumes={"models": "Quay.io/Org/Models"})
    answer = await post("mutate", review(obj))
    assert patch_of(answer) == []
    assert answer["response"]["warnings"] == [
        "image volume 'models' left unchanged: invalid image reference 'Quay.io/Org/Models': "
        "repository name 'Org' must be lower case"
    ]
    verdict = await post("validate", review(obj))
    assert "image volume 'models' left unchanged" in verdict["response"]["status"]["message"]


async def test_workload_template_image_volume(serve: Serve) -> None:
    post = await serve({**ONLINE, "mutateWorkloads": True})
    spec = pod("nginx", image_volumes={"models": "quay.io/private-org/models:v2"})["spec"]
    obj = workload("StatefulSet", spec)
    answer = await post("mutate", review(obj, kind="StatefulSet", group="apps"))
    assert patch_of(answer)[0] == {
        "op": "replace",
        "path": "/spec/template/spec/volumes/0/image/reference",
        "value": f"{PROXY}/quay.io/private-org/models:v2",
    }
    template = template_of(apply(answer, obj))
    assert template["spec"]["imagePullSecrets"] == [{"name": SECRET}]
    assert record_of(template) == {"volume:models": "quay.io/private-org/models:v2"}


CLI_MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  template:
    spec:
      containers: [{name: api, image: "nginx:1.25"}]
      volumes:
        - {name: models, image: {reference: "quay.io/my-org/models:v2"}}
---
apiVersion: v1
kind: Pod
metadata: {name: tool}
spec:
  containers: [{name: main, image: "nginx"}]
  volumes:
    - {name: data, image: {reference: "quay.io/my-org/data@DIGEST"}}
""".replace("DIGEST", D)


def run_cli(*argv: str, config_file: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    manifest = config_file.parent / "manifest.yaml"
    manifest.write_text(CLI_MANIFEST)
    code = main([argv[0], "--config", str(config_file), "-f", str(manifest), *argv[1:]], out, err)
    return code, out.getvalue(), err.getvalue()


def test_cli_rewrite_and_validate_cover_image_volumes(tmp_path: Path) -> None:
    online = tmp_path / "online" / "config.yaml"
    online.parent.mkdir()
    online.write_text(yaml.safe_dump(ONLINE))
    code, out, err = run_cli("rewrite", "--offline", "--workloads", config_file=online)
    assert code == 0, err
    deployment, tool = yaml.safe_load_all(out)
    assert volume_images_of(deployment["spec"]["template"]["spec"]) == {
        "models": f"{PROXY}/quay.io/my-org/models:v2"
    }
    assert volume_images_of(tool["spec"]) == {"data": f"{PROXY}/quay.io/my-org/data@{D}"}
    assert tool["spec"]["imagePullSecrets"] == [{"name": SECRET}]

    code, out, _ = run_cli("validate", "--offline", "--workloads", config_file=online)
    assert code == 1
    assert out.splitlines()[0] == (
        "Deployment/api: image volume 'models' reference 'quay.io/my-org/models:v2' is private "
        f"and must be pulled through the proxy: use '{PROXY}/quay.io/my-org/models:v2'"
    )

    airgap = tmp_path / "airgap" / "config.yaml"
    airgap.parent.mkdir()
    airgap.write_text(yaml.safe_dump(AIRGAP))
    code, out, err = run_cli("rewrite", "--workloads", config_file=airgap)
    assert code == 1  # the digest-pinned image volume is denied
    deployment, _ = yaml.safe_load_all(out)
    assert volume_images_of(deployment["spec"]["template"]["spec"]) == {
        "models": f"{LOCAL}/models:v2"
    }
    assert f"denied: Pod/tool: image volume 'data' reference 'quay.io/my-org/data@{D}' is " in err


# --- workloads -------------------------------------------------------------------------

PRIVATE_SPEC: dict[str, Any] = {"containers": [{"name": "app", "image": "quay.io/private-org/a:1"}]}


def owner(api_version: str, kind: str, *, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": "parent",
        "uid": "5e0d6c5e-0000-4000-8000-000000000001",
        "controller": controller,
    }


@pytest.mark.parametrize(
    ("kind", "owners", "left_alone"),
    [
        ("ReplicaSet", [owner("apps/v1", "Deployment")], True),
        ("Job", [owner("batch/v1", "CronJob")], True),
        ("ReplicaSet", [owner("apps/v1", "Deployment", controller=False)], False),
        ("ReplicaSet", [owner("argoproj.io/v1alpha1", "Rollout")], False),
        ("ReplicaSet", [owner("example.com/v1", "Deployment")], False),  # not the apps kind
        ("Deployment", [], False),
    ],
)
async def test_workload_owned_by_a_rewritten_kind_is_left_alone(
    serve: Serve, kind: str, owners: list[dict[str, Any]], left_alone: bool
) -> None:
    post = await serve({**ONLINE, "mutateWorkloads": True})
    group = "batch" if kind == "Job" else "apps"
    obj = workload(kind, PRIVATE_SPEC, ownerReferences=owners)
    mutated = await post("mutate", review(obj, kind=kind, group=group))
    verdict = await post("validate", review(obj, kind=kind, group=group))
    if left_alone:
        assert mutated["response"] == {"uid": mutated["response"]["uid"], "allowed": True}
        assert verdict["response"]["allowed"] is True
    else:
        template = template_of(apply(mutated, obj))
        assert template["spec"]["containers"][0]["image"] == f"{PROXY}/quay.io/private-org/a:1"
        assert verdict["response"]["allowed"] is False


@pytest.mark.parametrize("kind", ["Deployment", "CronJob"])
async def test_workload_update_decides_changed_images_and_may_add_the_secret(
    serve: Serve, kind: str
) -> None:
    post = await serve({**ONLINE, "mutateWorkloads": True})
    group = "batch" if kind == "CronJob" else "apps"
    old = workload(kind, PRIVATE_SPEC)  # created before the webhook
    rv = review(labelled(old), operation="UPDATE", kind=kind, group=group, old=old)
    unchanged = await post("mutate", rv)
    assert unchanged["response"] == {"uid": unchanged["response"]["uid"], "allowed": True}

    new = copy.deepcopy(old)
    template_of(new)["spec"]["containers"][0]["image"] = "quay.io/private-org/a:2"
    answer = await post("mutate", review(new, operation="UPDATE", kind=kind, group=group, old=old))
    template = template_of(apply(answer, new))
    assert template["spec"]["containers"][0]["image"] == f"{PROXY}/quay.io/private-org/a:2"
    assert template["spec"]["imagePullSecrets"] == [{"name": SECRET}]  # unlike a Pod
    assert record_of(template) == {"app": "quay.io/private-org/a:2"}
    assert "warnings" not in answer["response"]


async def test_job_template_is_never_patched_on_update(serve: Serve) -> None:
    post = await serve({**ONLINE, "mutateWorkloads": True})
    old = workload("Job", PRIVATE_SPEC)
    new = copy.deepcopy(old)
    template_of(new)["spec"]["containers"][0]["image"] = "quay.io/private-org/a:2"
    for endpoint in ("mutate", "validate"):
        answer = await post(
            endpoint, review(new, operation="UPDATE", kind="Job", group="batch", old=old)
        )
        assert answer["response"] == {"uid": answer["response"]["uid"], "allowed": True}
    created = await post("mutate", review(new, kind="Job", group="batch"))
    assert patch_of(created) != []


# --- mirror Pods -------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
async def test_mirror_pods_are_never_mutated_nor_refused(serve: Serve, operation: str) -> None:
    mirror = {"kubernetes.io/config.mirror": "3f1c0ad1d5a0", "kubernetes.io/config.source": "file"}
    for data, image in ((ONLINE, "quay.io/private-org/etcd:3"), (AIRGAP, f"quay.io/org/etcd@{D}")):
        post = await serve(data)
        obj = pod(image, annotations=mirror)
        old = pod("quay.io/private-org/etcd:2", annotations=mirror)
        for endpoint in ("mutate", "validate"):
            rv = review(obj, operation=operation, old=old if operation == "UPDATE" else None)
            answer = await post(endpoint, rv)
            assert answer["response"] == {"uid": answer["response"]["uid"], "allowed": True}


# --- warnings ----------------------------------------------------------------------------

LONG_NAME = "n" * 300  # the mutating webhook sees a request before the API server validates it
LONG_TAG = "t" * 128
WARNING_CASES: list[tuple[dict[str, Any], str, Visibility | None, str]] = [
    # settings, image (255-character name, longest tag), probe result, reason in the warning
    (ONLINE, "gcr.io/" + "a" * 248 + ":" + LONG_TAG, None, "proxied reference would not be"),
    (ONLINE, "reg.example:5000/" + "a" * 238 + ":" + LONG_TAG, None, "registry has a port"),
    (ONLINE, "gcr.io/" + "a" * 248 + ":" + LONG_TAG, Visibility.INTERNAL, "internal address"),
    (
        {**ONLINE, "visibility": {"onProbeFailure": "direct"}},
        "gcr.io/" + "a" * 248 + ":" + LONG_TAG,
        None,
        "visibility unknown",
    ),
    (ONLINE, "gcr.io/" + "A" * 1000, None, "invalid image reference"),
]


@pytest.mark.parametrize(("data", "image", "visibility", "reason"), WARNING_CASES)
async def test_warnings_stay_short_with_the_longest_inputs(
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
    data: dict[str, Any],
    image: str,
    visibility: Visibility | None,
    reason: str,
) -> None:
    table = {} if visibility is None else {("gcr.io", "a" * 248): visibility}
    post = await serve(data, StaticResolver(table))
    obj = pod(image)
    obj["spec"]["containers"][0]["name"] = LONG_NAME
    with caplog.at_level(logging.INFO, logger="webhook.admission"):
        answer = await post("mutate", review(obj))
    (warning,) = answer["response"]["warnings"]
    assert len(warning) <= WARNING_MAX
    assert warning.startswith("container 'nnnnnnnn") and reason in warning
    assert "..." in warning  # the name and the image were shortened, not cut off
    (logged,) = [r for r in caplog.records if r.name == "webhook.admission"]
    (detail,) = vars(logged)["fields"]["warnings"]
    assert LONG_NAME in detail and image[:100] in detail
    if visibility is None and "unknown" not in reason:  # a violation: /validate says it all
        verdict = await post("validate", review(obj))
        assert LONG_NAME in verdict["response"]["status"]["message"]


@pytest.mark.parametrize("legacy", [False, True])
async def test_missing_secret_warning_stays_short_with_the_longest_secret_name(
    serve: Serve, legacy: bool
) -> None:
    secret = "s" * 253
    post = await serve({**ONLINE, "pullSecretName": secret})
    debug = {"name": LONG_NAME, "image": "quay.io/private-org/debug:1"}
    if legacy:
        obj: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "EphemeralContainers",
            "metadata": {"name": "web", "namespace": "my-app"},
            "ephemeralContainers": [debug],
        }
        old = {**obj, "ephemeralContainers": []}
        rv = review(
            obj,
            operation="UPDATE",
            kind="EphemeralContainers",
            subresource="ephemeralcontainers",
            old=old,
        )
    else:
        old = pod("nginx")
        obj = copy.deepcopy(old)
        obj["spec"]["ephemeralContainers"] = [debug]
        rv = review(obj, operation="UPDATE", subresource="ephemeralcontainers", old=old)
    answer = await post("mutate", rv)
    (warning,) = answer["response"]["warnings"]
    assert len(warning) <= WARNING_MAX
    assert warning.startswith("pod needs imagePullSecret 'sssss") and "recreate the pod" in warning


def test_any_warning_in_an_answer_is_bounded() -> None:
    """Warnings from outside the core (the pull-secret manager) are bounded too."""
    long = "the API server refused the pull secret: " + "x" * 1000
    (warning,) = wire.allow("uid", [long])["response"]["warnings"]
    assert len(warning) == WARNING_MAX
    assert warning.startswith("the API server refused the pull secret: xxx")


def test_old_object_that_is_not_an_object_is_a_bad_request() -> None:
    rv = review(pod("nginx"), operation="UPDATE")
    rv["request"]["oldObject"] = ["not", "a", "pod"]
    with pytest.raises(wire.ReviewError, match=r"request\.oldObject must be a dict, got list"):
        wire.parse(json.dumps(rv))
