"""The README's `helm install` on a fresh cluster, with real Helm against a kube-apiserver
of this module's own that starts empty (no application namespace, no release
namespace).

- Without the application's namespace and without ``createNamespaces``, the install
  stops before anything is applied, with a message that says what to do; no webhook
  configuration is left registered.
- The README's command (``createNamespaces=true``, ``--rollback-on-failure``): here no
  Pod ever runs (there is no kubelet), so Helm's wait for the webhook Pods fails, which
  is a real failed install: the release is uninstalled and no webhook configuration,
  RBAC object or Secret of it remains; the application's namespace is kept.
- The same values without the wait: install, upgrade, uninstall and install again
  succeed; the namespace is created labelled ``kubernetes.io/metadata.name`` before the
  Role in it, and kept on uninstall.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client as k8s

from tests.e2e.admission_harness import call
from tests.e2e.chart_release import CHART, HelmRelease, require_helm
from tests.e2e.kubeapi import KubeAPIServer, require_binaries

pytestmark = [pytest.mark.e2e, pytest.mark.chart, pytest.mark.asyncio(loop_scope="module")]

RELEASE = "image-proxy-webhook"
SYSTEM = "image-proxy-webhook"
ADMISSION = "/apis/admissionregistration.k8s.io/v1"
RBAC = "/apis/rbac.authorization.k8s.io/v1"


def readme_values(app: str) -> dict[str, Any]:
    """The README's --set flags."""
    return {
        "appSlug": "my-app",
        "license": {"id": "fresh-install-license"},
        "namespaces": [app],
        "createNamespaces": True,
    }


@pytest.fixture(scope="module")
def empty_cluster() -> Iterator[KubeAPIServer]:
    apiserver, etcd = require_binaries()
    require_helm()
    with KubeAPIServer(binary=apiserver, etcd_binary=etcd) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def admin(empty_cluster: KubeAPIServer) -> AsyncIterator[k8s.ApiClient]:
    async with empty_cluster.api_client() as api:
        yield api


def failed_install(kube: KubeAPIServer, values: dict[str, Any], **options: Any) -> str:
    """`helm install -n image-proxy-webhook --create-namespace` that must fail: its error."""
    helm = require_helm()
    with (
        helm.Config(kubeconfig_path=kube.kubeconfig_path, namespace=SYSTEM) as cfg,
        helm.Chart.load(CHART) as chart,
        pytest.raises(helm.HelmError) as failure,
    ):
        cfg.install(chart, RELEASE, values, create_namespace=True, **options)
    return str(failure.value)


async def names(admin: k8s.ApiClient, path: str) -> list[str]:
    answer = await call(admin, "GET", path)
    if answer.status == 404:
        return []
    return [item["metadata"]["name"] for item in answer.ok()["items"]]


async def webhook_configurations(admin: k8s.ApiClient) -> list[str]:
    return await names(admin, f"{ADMISSION}/mutatingwebhookconfigurations") + await names(
        admin, f"{ADMISSION}/validatingwebhookconfigurations"
    )


async def namespace_of(admin: k8s.ApiClient, name: str) -> dict[str, Any] | None:
    answer = await call(admin, "GET", f"/api/v1/namespaces/{name}")
    return None if answer.status == 404 else answer.ok()


async def test_missing_namespace_stops_the_install_before_anything_is_applied(
    empty_cluster: KubeAPIServer, admin: k8s.ApiClient
) -> None:
    app = "my-app"
    assert await namespace_of(admin, app) is None
    values = {k: v for k, v in readme_values(app).items() if k != "createNamespaces"}
    message = failed_install(empty_cluster, values, timeout=60)
    assert (
        f'namespace "{app}" does not exist: create it first, or set createNamespaces=true'
    ) in message
    assert await webhook_configurations(admin) == []
    assert await names(admin, f"/api/v1/namespaces/{SYSTEM}/secrets") == []
    assert [n for n in await names(admin, f"{RBAC}/clusterroles") if RELEASE in n] == []
    assert await namespace_of(admin, app) is None
    await HelmRelease(empty_cluster, RELEASE, SYSTEM).uninstall()


async def test_readme_command_that_fails_leaves_no_webhook_configuration(
    empty_cluster: KubeAPIServer, admin: k8s.ApiClient
) -> None:
    app = "shop"
    assert await namespace_of(admin, app) is None
    message = failed_install(
        empty_cluster, readme_values(app), rollback_on_failure=True, timeout=15
    )
    assert "uninstalled due to rollback-on-failure" in message, message
    assert "Deployment" in message and "not ready" in message, message
    assert await webhook_configurations(admin) == []
    assert [n for n in await names(admin, f"{RBAC}/clusterroles") if RELEASE in n] == []
    assert await names(admin, f"{RBAC}/namespaces/{app}/roles") == []
    assert await names(admin, f"/api/v1/namespaces/{SYSTEM}/secrets") == []
    # The application's namespace is kept (helm.sh/resource-policy: keep).
    kept = await namespace_of(admin, app)
    assert kept is not None and kept["metadata"]["labels"]["kubernetes.io/metadata.name"] == app


async def test_install_upgrade_uninstall_and_install_again(
    empty_cluster: KubeAPIServer, admin: k8s.ApiClient
) -> None:
    app = "store"
    assert await namespace_of(admin, app) is None
    release = HelmRelease(empty_cluster, RELEASE, SYSTEM)
    values = readme_values(app)
    await release.install(values)
    status = await release.status()
    assert status["status"] == "deployed"

    created = await namespace_of(admin, app)
    assert created is not None
    assert created["metadata"]["labels"]["kubernetes.io/metadata.name"] == app
    fullname = RELEASE  # the release name holds the chart name: no suffix
    assert fullname in await names(admin, f"{RBAC}/namespaces/{app}/roles")
    hooks = (await call(admin, "GET", f"{ADMISSION}/mutatingwebhookconfigurations/{fullname}")).ok()
    # tls.mode selfManaged: the webhook, not the chart, sets the caBundle.
    assert "caBundle" not in hooks["webhooks"][0]["clientConfig"]

    await release.upgrade({**values, "webhook": {"timeoutSeconds": 12}})
    assert release.revision == 2
    assert (await release.status())["status"] == "deployed"
    hooks = (await call(admin, "GET", f"{ADMISSION}/mutatingwebhookconfigurations/{fullname}")).ok()
    assert hooks["webhooks"][0]["timeoutSeconds"] == 12

    await release.uninstall()
    assert await webhook_configurations(admin) == []
    assert await names(admin, f"{RBAC}/namespaces/{app}/roles") == []
    assert await namespace_of(admin, app) is not None  # kept: the application lives there

    # Installing again adopts the namespace it kept.
    await release.install(values)
    assert (await release.status())["status"] == "deployed"
    assert fullname in await webhook_configurations(admin)
    await release.uninstall()
