"""A real kubelet and containerd pull private images with a dockerconfigjson Secret.

The ground every later cluster test stands on: the node is Ready, nothing in it
routes out of the machine, a Pod whose image sits in an htpasswd registry runs
with the right credentials, and a wrong password is the registry's 401 in the
Pod's events (containerd's wording, as users see it).
"""

from __future__ import annotations

import uuid

import pytest

from tests.cluster.conftest import VENDOR_USERS, NodeRegistries, TinyImages
from tests.cluster.node import NODE_ADDRESS, POD_CIDR, SERVICE_CIDR, Cluster
from tests.cluster.workloads import (
    POD_TIMEOUT,
    create_namespace,
    create_pull_secret,
    delete_namespace,
    events_of,
    wait_pod_running,
)
from tests.e2e.admission_harness import create_pod, pod
from tests.support import eventually


def test_the_node_has_no_route_out(cluster: Cluster) -> None:
    routes = cluster.namespace.run(["ip", "-4", "route", "show", "table", "all"])
    assert "default" not in routes, routes
    # Only the namespace's own ranges: the Service range, and the Pod range once a Pod ran.
    main = cluster.namespace.run(["ip", "-4", "route", "show"]).splitlines()
    assert all(line.startswith((SERVICE_CIDR, POD_CIDR)) for line in main), main
    unreachable = cluster.namespace.run(["sh", "-c", "ip route get 192.0.2.1 2>&1 || true"])
    assert "unreachable" in unreachable, unreachable
    assert NODE_ADDRESS in cluster.namespace.run(["ip", "-4", "addr", "show", "dev", "lo"])


async def test_private_image_runs_with_its_pull_secret(
    cluster: Cluster, node_registries: NodeRegistries, tiny_images: TinyImages
) -> None:
    namespace = f"pull-{uuid.uuid4().hex[:6]}"
    ((user, password),) = VENDOR_USERS.items()
    async with cluster.api_client() as api:
        await create_namespace(api, namespace)
        await create_pull_secret(
            api, namespace, "vendor", {node_registries.vendor.domain: (user, password)}
        )
        manifest = pod("app", {"app": tiny_images.private}, pull_secrets=["vendor"])
        (await create_pod(api, namespace, manifest)).ok()
        running = await wait_pod_running(api, namespace, "app")
        await delete_namespace(api, namespace)

    (status,) = running["status"]["containerStatuses"]
    assert status["image"] == tiny_images.private
    repository, _, digest = status["imageID"].partition("@")
    assert repository == f"{node_registries.vendor.domain}/vendor/app"
    # containerd answers the registry's challenge for each request: tag, then digest.
    resolved = node_registries.vendor.manifest_requests("vendor/app", "v1")
    assert [(e.method, e.status) for e in resolved][-2:] == [("HEAD", 401), ("HEAD", 200)]
    fetched = node_registries.vendor.manifest_requests("vendor/app", digest)
    assert [(e.method, e.status) for e in fetched] == [("GET", 401), ("GET", 200)], fetched


async def test_public_image_runs_without_a_secret(
    cluster: Cluster, node_registries: NodeRegistries, tiny_images: TinyImages
) -> None:
    namespace = f"public-{uuid.uuid4().hex[:6]}"
    async with cluster.api_client() as api:
        await create_namespace(api, namespace)
        (await create_pod(api, namespace, pod("tool", {"tool": tiny_images.public}))).ok()
        running = await wait_pod_running(api, namespace, "tool")
        await delete_namespace(api, namespace)
    assert running["status"]["containerStatuses"][0]["image"] == tiny_images.public


@pytest.mark.parametrize("password", ["wrong-password", None], ids=["wrong", "no-secret"])
async def test_a_refused_pull_is_the_registrys_401_in_the_pods_events(
    cluster: Cluster,
    node_registries: NodeRegistries,
    tiny_images: TinyImages,
    password: str | None,
) -> None:
    namespace = f"refused-{uuid.uuid4().hex[:6]}"
    ((user, _),) = VENDOR_USERS.items()
    async with cluster.api_client() as api:
        await create_namespace(api, namespace)
        secrets: list[str] = []
        if password is not None:
            await create_pull_secret(
                api, namespace, "vendor", {node_registries.vendor.domain: (user, password)}
            )
            secrets = ["vendor"]
        manifest = pod("app", {"app": tiny_images.private}, pull_secrets=secrets)
        # An earlier test left the image on the node: only a pull meets the registry.
        manifest["spec"]["containers"][0]["imagePullPolicy"] = "Always"
        (await create_pod(api, namespace, manifest)).ok()
        # kubelet reports the runtime's error and the container's state, in either order.
        failed: list[str] = []

        async def both_reported() -> bool:
            events = await events_of(api, namespace, "app")
            failed[:] = [e["message"] for e in events if e.get("reason") == "Failed"]
            return "Error: ErrImagePull" in failed and len(failed) >= 2

        await eventually(both_reported, timeout=POD_TIMEOUT, what="the pull's failure events")
        await delete_namespace(api, namespace)

    (pull_error,) = [m for m in failed if m.startswith("Failed to pull image ")]
    assert pull_error.startswith(f'Failed to pull image "{tiny_images.private}": '), failed
    assert pull_error.endswith(": 401 Unauthorized"), pull_error
