"""Online mode on a real node: the chart installed by Helm, private images pulled through the proxy.

One release of the chart (``namespaces: ["*"]``, the webhook's image from a registry on
the node) serves every test here. Its images are the vendor's: a private registry
with htpasswd (the webhook's anonymous probe gets 401) and a public one.

How containerd reaches "the proxy": the release keeps the default ``proxyDomain``,
``proxy.replicated.com``, so the rewritten images, the pull Secret's registry key and
the Host header containerd sends are exactly those of a customer's cluster. The
stand-in is a distribution registry that checks the license as the proxy does
(htpasswd users ``LICENSE_ID`` and the license ID, both with the license ID as
password) and holds the vendor's images at ``proxy/<appSlug>/<registry>/<path>``,
copied from the vendor's registry as the proxy would pull them through. Only the
name's resolution belongs to the test: the node's namespace has no DNS, its own
/etc/hosts maps the name to the stand-in's address, and containerd's hosts.toml for
the name says plain HTTP (the stand-in has no certificate for it). Setting
``proxyDomain`` to the stand-in's address instead would test a configuration no
customer has, and a hosts.toml mirror would pull from another host than the one the
image and the Secret name.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.cluster.conftest import PROXY_DOMAIN, NodeRegistries, PushedImage
from tests.cluster.helm import ChartRelease
from tests.cluster.images import pause_image
from tests.cluster.node import Cluster, kube_binary
from tests.cluster.node_registries import containerd_user_agent, copy_image, push_archive
from tests.cluster.workloads import (
    create_namespace,
    delete_namespace,
    delete_pull_secrets,
    wait_pod_running,
    wait_pods_running,
    wait_until_rewritten,
)
from tests.e2e.admission_harness import (
    call,
    create_pod,
    dockerconfig_of,
    images_of,
    license_dockerconfig,
    pod,
    read_secret,
)
from tests.support import eventually
from webhook.registry import USER_AGENT as PROBE_USER_AGENT
from webhook.review import ORIGINAL_IMAGES_ANNOTATION

APP_SLUG = "cluster-app"
PULL_SECRET = f"{APP_SLUG}-registry"  # the default pullSecretName (docs/design.md §3)
REGISTRY_DOMAIN = "registry.replicated.com"  # the chart's default registryDomain
RELEASE = "ipw-online"

# One release for the module: its fixture and the tests share the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class VendorImages:
    """The vendor's images, each a tiny image of its own, and their manifest digests."""

    init: str  # private (vendor registry)
    app: str  # private
    tool: str  # public (public registry)
    digests: dict[str, str]  # image -> digest


def proxied(image: str) -> str:
    """docs/design.md §1: ``P/proxy/S/<normalised domain>/<path>`` + the suffix as written."""
    return f"{PROXY_DOMAIN}/proxy/{APP_SLUG}/{image}"


def repository(image: str) -> str:
    """The image's path on its registry, without host or tag."""
    return image.split("/", 1)[1].rsplit(":", 1)[0]


@pytest.fixture(scope="module")
def vendor_images(
    cluster: Cluster, node_registries: NodeRegistries, tmp_path_factory: pytest.TempPathFactory
) -> VendorImages:
    """Pushed to the vendor's registries, the private ones also to the proxy stand-in
    (copied from the vendor's registry, as the proxy pulls them through)."""
    vendor, public = node_registries.vendor, node_registries.public
    images = VendorImages(
        init=f"{vendor.domain}/online/init:v1",
        app=f"{vendor.domain}/online/app:v1",
        tool=f"{public.domain}/online/tool:v1",
        digests={},
    )
    directory = tmp_path_factory.mktemp("online-images")
    for image, registry in ((images.init, vendor), (images.app, vendor), (images.tool, public)):
        archive = directory / f"{repository(image).replace('/', '-')}.tar"
        images.digests[image] = pause_image(archive, name=image, pause_binary=kube_binary("pause"))
        push_archive(cluster, registry, archive, repository(image), "v1")
    for image in (images.init, images.app):
        copy_image(cluster, image, vendor, node_registries.proxy, proxied(image).split("/", 1)[1])
    return images


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def online_release(
    cluster: Cluster,
    node_registries: NodeRegistries,
    webhook_image: PushedImage,
    helm: Path,
    vendor_images: VendorImages,
) -> AsyncIterator[ChartRelease]:
    release = ChartRelease(cluster, RELEASE, RELEASE)
    await release.install(
        {
            "appSlug": APP_SLUG,
            "license": {"id": node_registries.license_id},
            "namespaces": ["*"],
            # The registries live on the node's (private) addresses, over plain HTTP.
            "probe": {
                "insecureRegistries": [
                    node_registries.vendor.domain,
                    node_registries.public.domain,
                ],
                "allowPrivateNetworks": True,
            },
            "image": {"repository": webhook_image.repository, "tag": webhook_image.tag},
            "replicaCount": 1,
        }
    )
    try:
        yield release
    finally:
        await release.uninstall()
        # namespaces ["*"] covered the cluster's own namespaces too (default, ...).
        async with cluster.api_client() as api:
            await delete_pull_secrets(api, PULL_SECRET)


def deployment(name: str, images: VendorImages, replicas: int) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    # pause -v prints its version and exits 0: an init container that completes.
                    "initContainers": [{"name": "init", "image": images.init, "args": ["-v"]}],
                    "containers": [
                        {"name": "app", "image": images.app},
                        {"name": "tool", "image": images.tool},
                    ],
                },
            },
        },
    }


async def test_a_deployments_private_images_are_pulled_through_the_proxy_with_the_webhooks_secret(
    cluster: Cluster,
    node_registries: NodeRegistries,
    vendor_images: VendorImages,
    online_release: ChartRelease,
) -> None:
    images = vendor_images
    namespace = f"online-{uuid.uuid4().hex[:6]}"
    async with cluster.api_client() as api:
        await create_namespace(api, namespace)
        try:
            await wait_until_rewritten(api, namespace, images.app, proxied(images.app))
            manifest = deployment("shop", images, replicas=2)
            path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
            (await call(api, "POST", path, manifest)).ok()
            pods = await wait_pods_running(api, namespace, "app=shop", count=2)
            stored = (await call(api, "GET", f"{path}/shop")).ok()
            secret = (await read_secret(api, namespace, PULL_SECRET)).ok()
        finally:
            await delete_namespace(api, namespace)

    # The Deployment is left as written (mutateWorkloads is off); its Pods are rewritten.
    template = stored["spec"]["template"]["spec"]
    assert [c["image"] for c in template["initContainers"] + template["containers"]] == [
        images.init,
        images.app,
        images.tool,
    ]
    on_proxy = f"{PROXY_DOMAIN}/proxy/{APP_SLUG}/{node_registries.vendor.domain}/online"
    for running in pods:
        assert images_of(running) == {
            "init": f"{on_proxy}/init:v1",
            "app": f"{on_proxy}/app:v1",
            "tool": images.tool,
        }
        assert running["spec"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
        assert json.loads(running["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION]) == {
            "init": images.init,
            "app": images.app,
        }
        [init] = running["status"]["initContainerStatuses"]
        assert init["state"]["terminated"]["exitCode"] == 0, init
        # What containerd pulled, by the name it pulled it under: the same digests.
        assert init["imageID"] == f"{on_proxy}/init@{images.digests[images.init]}"
        app, tool = running["status"]["containerStatuses"]
        assert app["imageID"] == f"{on_proxy}/app@{images.digests[images.app]}"
        assert tool["image"] == images.tool
        assert tool["imageID"] == (
            f"{node_registries.public.domain}/online/tool@{images.digests[images.tool]}"
        )

    # The Secret the kubelet used: the literal user LICENSE_ID, the license ID as password.
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "image-proxy-webhook"
    config = dockerconfig_of(secret)
    assert config == license_dockerconfig(node_registries.license_id, PROXY_DOMAIN, REGISTRY_DOMAIN)
    auth = base64.b64decode(config["auths"][PROXY_DOMAIN]["auth"]).decode()
    assert auth == f"LICENSE_ID:{node_registries.license_id}"

    # The stand-in saw containerd ask for the proxy's name, as LICENSE_ID, for both images.
    agent = containerd_user_agent()
    pulls = [r for r in node_registries.proxy.served() if r.user_agent == agent]
    manifests = {(r.user, r.uri, r.status) for r in pulls if r.method == "GET"}
    for image in (images.init, images.app):
        fetched = (f"/v2/{repository(proxied(image))}/manifests/{images.digests[image]}", 200)
        assert ("LICENSE_ID", *fetched) in manifests, pulls
    assert {r.host for r in pulls} == {PROXY_DOMAIN}, pulls
    assert {r.user for r in pulls if r.status} == {"LICENSE_ID"}, pulls

    # The vendor's registry met only the webhook's anonymous probes (its 401 made the
    # images private, docs/design.md §2), never containerd.
    vendor = [r for r in node_registries.vendor.requests() if "/online/" in r.uri]
    assert not [r for r in vendor if r.user_agent == agent], vendor
    probes = {(r.method, r.uri, r.status) for r in vendor if r.user_agent == PROBE_USER_AGENT}
    assert probes == {
        ("HEAD", "/v2/online/init/manifests/v1", 401),
        ("HEAD", "/v2/online/app/manifests/v1", 401),
    }
    # The public image came from its own registry, unchanged: probed (200), then pulled.
    public = {
        (r.user_agent, r.method, r.uri, r.status)
        for r in node_registries.public.requests()
        if r.uri.startswith("/v2/online/tool/")
    }
    assert (PROBE_USER_AGENT, "HEAD", "/v2/online/tool/manifests/v1", 200) in public, public
    tool_digest = images.digests[images.tool]
    assert (agent, "GET", f"/v2/online/tool/manifests/{tool_digest}", 200) in public, public


async def test_a_namespace_created_after_install_gets_the_secret_and_its_pod_runs(
    cluster: Cluster,
    node_registries: NodeRegistries,
    vendor_images: VendorImages,
    online_release: ChartRelease,
) -> None:
    app = vendor_images.app
    namespace = f"later-{uuid.uuid4().hex[:6]}"
    agent = containerd_user_agent()

    def pulls_of_app() -> int:
        """containerd's authenticated manifest requests for the app on the stand-in."""
        prefix = f"/v2/{repository(proxied(app))}/manifests/"
        return sum(
            r.user_agent == agent and r.user == "LICENSE_ID" and r.uri.startswith(prefix)
            for r in node_registries.proxy.served()
        )

    async with cluster.api_client() as api:
        await create_namespace(api, namespace)
        try:
            # No Pod yet: the webhook's watch on namespaces writes the Secret (§3).
            async def secret_written() -> bool:
                return (await read_secret(api, namespace, PULL_SECRET)).status == 200

            await eventually(secret_written, timeout=60, what=f"{namespace}/{PULL_SECRET}")
            secret = (await read_secret(api, namespace, PULL_SECRET)).ok()
            pulls_before = pulls_of_app()
            manifest = pod("app", {"app": app})
            # Pulled even if on the node already: the stand-in meets this namespace's Secret.
            manifest["spec"]["containers"][0]["imagePullPolicy"] = "Always"
            (await create_pod(api, namespace, manifest)).ok()
            running = await wait_pod_running(api, namespace, "app")
        finally:
            await delete_namespace(api, namespace)

    assert dockerconfig_of(secret) == license_dockerconfig(
        node_registries.license_id, PROXY_DOMAIN, REGISTRY_DOMAIN
    )
    assert images_of(running) == {"app": proxied(app)}
    assert running["spec"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
    [status] = running["status"]["containerStatuses"]
    assert status["imageID"] == f"{proxied(app).rsplit(':', 1)[0]}@{vendor_images.digests[app]}"
    assert pulls_of_app() > pulls_before
