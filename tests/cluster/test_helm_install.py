"""The README's ``helm install`` command, exactly as written, on the empty cluster.

Real Helm v4, the image built from this tree's Dockerfile and pulled by kubelet
from a registry inside the node: only ``image.repository`` and ``image.tag`` are
added, to point the chart at that image. The install must succeed (Helm waits for
the webhook Pods, and rolls back on failure), the webhook must set its own
caBundle (self-managed TLS), and ``helm uninstall`` must leave no webhook
configuration behind, so Pods can still be created.
"""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.cluster.conftest import NodeRegistries, PushedImage, TinyImages
from tests.cluster.helm import readme_install_command, run_shell
from tests.cluster.node import Cluster
from tests.cluster.workloads import wait_pod_running
from tests.e2e.admission_harness import call, create_pod, pod
from tests.support import eventually

WEBHOOK_CONFIGURATIONS = (
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
)


def release_of(command: str) -> tuple[str, str, list[str]]:
    """(release, release namespace, covered namespaces) as the command names them."""
    words = shlex.split(command.replace("\\\n", " "))
    release = words[words.index("install") + 1]
    namespace = words[words.index("-n") + 1]
    covered = next(w for w in words if w.startswith("namespaces="))
    return release, namespace, re.findall(r"[\w-]+", covered.partition("=")[2])


async def items(api: k8s.ApiClient, path: str, selector: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (
        (await call(api, "GET", path, query={"labelSelector": selector})).ok().get("items", [])
    )
    return found


async def test_the_readmes_install_command_works_as_written(
    cluster: Cluster,
    node_registries: NodeRegistries,
    tiny_images: TinyImages,
    webhook_image: PushedImage,
    helm: Path,
) -> None:
    command = readme_install_command()
    release, namespace, (covered,) = release_of(command)
    selector = f"app.kubernetes.io/instance={release}"
    pointing = (
        f" --set image.repository={webhook_image.repository} --set image.tag={webhook_image.tag}"
    )

    installed = run_shell(cluster, command + pointing, LICENSE_ID=node_registries.license_id)
    assert installed.returncode == 0, installed.output

    async with cluster.api_client() as api:
        (deployment,) = await items(
            api, f"/apis/apps/v1/namespaces/{namespace}/deployments", selector
        )
        replicas = deployment["spec"]["replicas"]
        assert deployment["status"].get("readyReplicas") == replicas >= 1, deployment["status"]
        webhook_pods = await items(api, f"/api/v1/namespaces/{namespace}/pods", selector)
        running = [p for p in webhook_pods if p["status"].get("phase") == "Running"]
        assert len(running) == replicas, [p["status"] for p in webhook_pods]
        for webhook_pod in running:
            (status,) = webhook_pod["status"]["containerStatuses"]
            assert status["ready"] and status["image"] == webhook_image.reference, status

        # Self-managed TLS: the CA of the webhook's own Secret is every webhook's caBundle.
        secrets = (await call(api, "GET", f"/api/v1/namespaces/{namespace}/secrets")).ok()
        (certs,) = [s for s in secrets["items"] if s["metadata"]["name"].endswith("-certs")]
        ca_bundle = certs["data"]["ca.crt"]
        assert base64.b64decode(ca_bundle).startswith(b"-----BEGIN CERTIFICATE-----")

        async def ca_bundles_in_place() -> bool:
            bundles = [
                webhook.get("clientConfig", {}).get("caBundle")
                for path in WEBHOOK_CONFIGURATIONS
                for configuration in await items(api, path, selector)
                for webhook in configuration["webhooks"]
            ]
            return bool(bundles) and all(bundle == ca_bundle for bundle in bundles)

        await eventually(ca_bundles_in_place, timeout=60, what="the caBundle of every webhook")

    uninstalled = run_shell(cluster, f"helm uninstall {release} -n {namespace} --wait")
    assert uninstalled.returncode == 0, uninstalled.output

    async with cluster.api_client() as api:
        for path in WEBHOOK_CONFIGURATIONS:
            left = (await call(api, "GET", path)).ok()["items"]
            assert left == [], [c["metadata"]["name"] for c in left]
        # The covered namespace (kept on uninstall) admits Pods again, unchanged.
        name = "after-uninstall"
        created = (await create_pod(api, covered, pod(name, {"tool": tiny_images.public}))).ok()
        assert created["spec"]["containers"][0]["image"] == tiny_images.public
        await wait_pod_running(api, covered, name)
