"""Smoke test: the real API server stores a Pod in a namespace we create."""

from __future__ import annotations

import uuid

import pytest
from kubernetes_asyncio import client as k8s

from tests.e2e.kubeapi import KubeAPIServer

pytestmark = pytest.mark.e2e


@pytest.mark.asyncio
async def test_create_and_read_pod(kube_apiserver: KubeAPIServer) -> None:
    namespace = f"smoke-{uuid.uuid4().hex[:8]}"
    await kube_apiserver.create_namespace(namespace, labels={"purpose": "smoke"})

    async with kube_apiserver.api_client() as api:
        core = k8s.CoreV1Api(api)
        account = await core.read_namespaced_service_account("default", namespace)
        assert account.automount_service_account_token is False

        pod = k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="web", namespace=namespace),
            spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="web", image="nginx:1.25")]),
        )
        created = await core.create_namespaced_pod(namespace, pod)
        assert created.spec.service_account_name == "default"

        stored = await core.read_namespaced_pod("web", namespace)
        assert stored.metadata.namespace == namespace
        assert [c.image for c in stored.spec.containers] == ["nginx:1.25"]

        version = await k8s.VersionApi(api).get_code()
        assert version.git_version == "v1.20.2"


def test_kubeconfig_points_at_server(kube_apiserver: KubeAPIServer) -> None:
    text = kube_apiserver.kubeconfig_path.read_text()
    assert kube_apiserver.url in text
    assert kube_apiserver.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
