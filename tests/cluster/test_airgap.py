"""Air gap on a real node: the chart installed by Helm, every image pulled from the local registry.

The customer's local registry is a distribution registry on the node with htpasswd
(``airgap.username`` / ``airgap.password``), holding the application's images where an
air-gap bundle puts them: ``<registry>/<namespace>/<last path segment>:<tag>``
(docs/design.md §1). The images as the application names them exist nowhere on the
node: a Pod runs only if the webhook rewrote every one of them and the kubelet pulled
with the Secret the webhook wrote. A digest-pinned image is refused with the
documented message.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.cluster.conftest import NodeRegistries, PushedImage
from tests.cluster.helm import ChartRelease
from tests.cluster.images import pause_image
from tests.cluster.node import Cluster, kube_binary
from tests.cluster.node_registries import containerd_user_agent, push_archive, start_registry
from tests.cluster.workloads import (
    create_namespace,
    delete_namespace,
    wait_pod_running,
    wait_until_rewritten,
)
from tests.e2e.admission_harness import (
    call,
    create_pod,
    dockerconfig_of,
    expected_dockerconfig,
    images_of,
    pod,
    read_secret,
)
from tests.integration.registries import Registry

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"
APP_SLUG = "airgap-app"
PULL_SECRET = f"{APP_SLUG}-registry"
RELEASE = "ipw-airgap"
LOCAL_NAMESPACE = "apps"  # airgap.namespace: the path under the local registry
AIRGAP_USER = "airgap-puller"
AIRGAP_PASSWORD = "airgap-s3cret"
# The application's images as its manifests name them (never pushed anywhere).
ORIGINAL = {
    "init": "registry.replicated.com/airgap-app/migrate:2.1",
    "app": "quay.io/vendor-org/api:v1.0.1",
    "tool": "busybox:1.36",
}

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class AirGap:
    local: Registry
    namespace: str  # the covered namespace
    release: ChartRelease
    digests: dict[str, str]  # local image -> manifest digest

    def local_image(self, original: str) -> str:
        last, tag = original.rsplit("/", 1)[-1].rsplit(":", 1)
        return f"{self.local.domain}/{LOCAL_NAMESPACE}/{last}:{tag}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def airgap(
    cluster: Cluster,
    node_registries: NodeRegistries,
    webhook_image: PushedImage,
    helm: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[AirGap]:
    local = start_registry(cluster, "airgap-local", users={AIRGAP_USER: AIRGAP_PASSWORD})
    namespace = f"airgap-{uuid.uuid4().hex[:6]}"
    setup = AirGap(local, namespace, ChartRelease(cluster, RELEASE, RELEASE), {})
    directory = tmp_path_factory.mktemp("airgap-images")
    try:
        for original in ORIGINAL.values():
            image = setup.local_image(original)
            repository, tag = image.split("/", 1)[1].rsplit(":", 1)
            archive = directory / f"{repository.replace('/', '-')}.tar"
            setup.digests[image] = pause_image(
                archive, name=image, pause_binary=kube_binary("pause")
            )
            push_archive(cluster, local, archive, repository, tag)
        async with cluster.api_client() as api:
            await create_namespace(api, namespace)
        await setup.release.install(
            {
                "appSlug": APP_SLUG,
                "mode": "airgap",
                "airgap": {
                    "registry": local.domain,
                    "namespace": LOCAL_NAMESPACE,
                    "username": AIRGAP_USER,
                    "password": AIRGAP_PASSWORD,
                },
                "namespaces": [namespace],
                "image": {"repository": webhook_image.repository, "tag": webhook_image.tag},
                "replicaCount": 1,
            }
        )
        yield setup
    finally:
        await setup.release.uninstall()
        async with cluster.api_client() as api:
            await delete_namespace(api, namespace)
        local.stop()


async def test_airgap_pods_are_pulled_from_the_local_registry_with_its_credentials(
    cluster: Cluster, airgap: AirGap
) -> None:
    namespace = airgap.namespace
    manifest = pod("shop", {"app": ORIGINAL["app"], "tool": ORIGINAL["tool"]})
    # pause -v prints its version and exits 0: an init container that completes.
    init = {"name": "init", "image": ORIGINAL["init"], "args": ["-v"]}
    manifest["spec"]["initContainers"] = [init]
    async with cluster.api_client() as api:
        await wait_until_rewritten(
            api, namespace, ORIGINAL["app"], airgap.local_image(ORIGINAL["app"])
        )
        (await create_pod(api, namespace, manifest)).ok()
        running = await wait_pod_running(api, namespace, "shop")
        secret = (await read_secret(api, namespace, PULL_SECRET)).ok()

    assert images_of(running) == {
        "init": f"{airgap.local.domain}/apps/migrate:2.1",
        "app": f"{airgap.local.domain}/apps/api:v1.0.1",
        "tool": f"{airgap.local.domain}/apps/busybox:1.36",
    }
    assert running["spec"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
    statuses = running["status"]["initContainerStatuses"] + running["status"]["containerStatuses"]
    for status in statuses:
        repository = status["image"].rsplit(":", 1)[0]
        assert status["imageID"] == f"{repository}@{airgap.digests[status['image']]}", status
    assert dockerconfig_of(secret) == expected_dockerconfig(
        {airgap.local.domain: (AIRGAP_USER, AIRGAP_PASSWORD)}
    )

    # containerd pulled all three from the local registry, as the air-gap user.
    agent = containerd_user_agent()
    pulls = [r for r in airgap.local.served() if r.user_agent == agent]
    fetched = {(r.uri, r.user) for r in pulls if r.method == "GET" and r.status == 200}
    for image, digest in airgap.digests.items():
        repository = image.split("/", 1)[1].rsplit(":", 1)[0]
        assert (f"/v2/{repository}/manifests/{digest}", AIRGAP_USER) in fetched, pulls
    assert {r.user for r in pulls if r.status} == {AIRGAP_USER}, pulls


async def test_airgap_refuses_a_digest_pinned_pod_with_the_documented_message(
    cluster: Cluster, airgap: AirGap
) -> None:
    pinned = "quay.io/vendor-org/api@sha256:" + "5" * 64
    webhook = airgap.release.one("MutatingWebhookConfiguration")["webhooks"][0]["name"]
    async with cluster.api_client() as api:
        await wait_until_rewritten(
            api, airgap.namespace, ORIGINAL["app"], airgap.local_image(ORIGINAL["app"])
        )
        refused = await create_pod(api, airgap.namespace, pod("pinned", {"app": pinned}))
        stored = await call(api, "GET", f"/api/v1/namespaces/{airgap.namespace}/pods/pinned")

    assert refused.status == 403, refused.body
    assert refused.message == (
        f'admission webhook "{webhook}" denied the request: '
        + documented_digest_denial("app", pinned, airgap.local.domain)
    )
    assert refused.message == (  # the same, written out
        f"admission webhook \"{webhook}\" denied the request: container 'app' image "
        f"'{pinned}' is pinned by digest, which air-gap mode cannot serve from the local "
        f"registry {airgap.local.domain}: use a tag instead"
    )
    assert stored.status == 404


def documented_digest_denial(name: str, image: str, registry: str) -> str:
    """The air-gap digest denial as docs/design.md §1 writes it, filled in."""
    text = DESIGN.read_text()
    match = re.search(r"`(container '<name>' image '<image>' is pinned by digest[^`]*)`", text)
    assert match, "docs/design.md §1 no longer documents the digest denial"
    return match[1].replace("<name>", name).replace("<image>", image).replace("<L>", registry)
