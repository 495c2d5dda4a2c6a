"""The Helm chart installed with real Helm into the end-to-end kube-apiserver.

Helm v4 (helm-python-sdk) installs the chart into the real API server: every object
is stored, nothing runs (there is no kubelet). The webhook then runs locally the way
the chart's Deployment would run it: its config file, license and serving certificate
are written from the ConfigMap and Secrets the release stored, under the Deployment's
mount paths; ``POD_NAMESPACE`` is the release namespace; and it talks to the API
server with a token of the chart's ServiceAccount, so only the chart's RBAC lets it
write pull secrets. ``webhook.url`` points the chart's Mutating- and
ValidatingWebhookConfiguration at it, with ``tls.caBundle`` the CA of its certificate
(``tls.mode: existingSecret``, the certificate for 127.0.0.1 in a Secret). Pods are
then created through the API server and read back.

A second release, with the chart's defaults for TLS (``tls.mode: helm``), shows that
``helm upgrade`` keeps the generated CA, and that deleting its Secret renews it.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from kubernetes_asyncio import client as k8s

from tests.e2e.admission_harness import (
    Answer,
    call,
    create_pod,
    dockerconfig_of,
    license_dockerconfig,
    pod,
    read_pod,
    read_secret,
    stored_view,
)
from tests.e2e.chart_release import (
    HelmRelease,
    kubeconfig_for,
    local_config,
    materialize_pod,
    namespace,
    require_helm,
    service_account_token,
)
from tests.e2e.kubeapi import KubeAPIServer
from tests.support import eventually, free_port
from webhook import config, pki, service
from webhook.config import WEBHOOK_NAMESPACE_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.chart, pytest.mark.asyncio(loop_scope="module")]

LICENSE = "chart-e2e-license-2ViYxYAm4h"
SECRET = "my-app-registry"
PROXY = "proxy.replicated.com"
PREFIX = f"{PROXY}/proxy/my-app/"
OPT_OUT = "image-proxy-webhook.io/ignore"
PORTED = "registry.example.com:5000/team/app:v1"  # private, and a port cannot be proxied
OVERRIDES = [
    {"match": "quay.io/my-org/*", "visibility": "private"},
    {"match": "registry.example.com:5000/*", "visibility": "private"},
    {"match": "docker.io/*", "visibility": "public"},
]


@dataclass
class Installed:
    release: HelmRelease
    app: str  # covered namespaces
    extra: str
    other: str  # not covered
    url: str
    ca_pem: bytes
    admin: k8s.ApiClient


def tls_secret(name: str, certs: pki.CertPaths) -> dict[str, Any]:
    assert certs.ca_file is not None

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "webhook-tls"},
        "data": {"tls.crt": b64(certs.cert_file), "tls.key": b64(certs.key_file)},
    }


async def wait_until_active(admin: k8s.ApiClient, ns: str) -> None:
    """The API server picks up webhook configurations asynchronously: dry-run Pods
    (a dry run writes no pull secret) until one comes back rewritten and one that
    cannot be proxied is refused."""
    probe = pod(f"ready-{uuid.uuid4().hex[:6]}", {"app": "quay.io/my-org/ready:v1"})
    refused = pod(f"ready-{uuid.uuid4().hex[:6]}", {"app": PORTED})

    async def mutated() -> bool:
        answer = await create_pod(admin, ns, probe, dry_run=True)
        return answer.status == 201 and answer.body["spec"]["containers"][0]["image"].startswith(
            PREFIX
        )

    async def validated() -> bool:
        return (await create_pod(admin, ns, refused, dry_run=True)).status in (400, 403)

    await eventually(mutated, timeout=30, what=f"the chart's webhook to mutate Pods in {ns}")
    await eventually(validated, timeout=30, what=f"the chart's webhook to validate Pods in {ns}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def installed(
    kube_apiserver: KubeAPIServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Installed]:
    require_helm()
    tag = uuid.uuid4().hex[:6]
    kube = kube_apiserver
    system = await namespace(kube, f"ipw-system-{tag}")
    app = await namespace(kube, f"chart-app-{tag}")
    extra = await namespace(kube, f"chart-extra-{tag}")
    other = await namespace(kube, f"chart-other-{tag}")

    work = tmp_path_factory.mktemp("chart-install")
    certs = pki.generate(work / "certs", ("127.0.0.1", "localhost"))
    assert certs.ca_file is not None
    ca_pem = certs.ca_file.read_bytes()
    port, health_port = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    values = {
        "appSlug": "my-app",
        "license": {"id": LICENSE},
        "namespaces": [app, extra],
        "visibility": {"overrides": OVERRIDES},
        "server": {"port": port, "healthPort": health_port, "logFormat": "text"},
        "webhook": {"url": url},
        "validatingWebhook": {"enabled": True},
        "tls": {
            "mode": "existingSecret",
            "existingSecret": "webhook-tls",
            "caBundle": ca_pem.decode(),
        },
    }
    release = HelmRelease(kube, f"ipw-{tag}", system)
    async with contextlib.AsyncExitStack() as stack:
        admin = await stack.enter_async_context(kube.api_client())
        (
            await call(
                admin,
                "POST",
                f"/api/v1/namespaces/{system}/secrets",
                tls_secret("webhook-tls", certs),
            )
        ).ok()
        await release.install(values)
        stack.push_async_callback(release.uninstall)

        # The webhook Pod, locally: files from the stored objects, identity from the chart.
        root = work / "pod"
        container = await materialize_pod(kube, release, root)
        settings = config.parse(local_config(root, container))
        account = release.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
        token = await service_account_token(kube, system, account)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("KUBECONFIG", str(kubeconfig_for(kube, token, work / "kubeconfig")))
            env.setenv(WEBHOOK_NAMESPACE_ENV, system)  # the Deployment's downward API
            await stack.enter_async_context(service.running(settings))
        await wait_until_active(admin, app)
        await wait_until_active(admin, extra)
        yield Installed(release, app, extra, other, url, ca_pem, admin)


def denied(answer: Answer, webhook: str, *fragments: str) -> None:
    assert answer.status in (400, 403), f"HTTP {answer.status}: {answer.body}"
    message = answer.message
    assert f'admission webhook "{webhook}" denied the request' in message, message
    for fragment in fragments:
        assert fragment in message, message


# --- the release ---------------------------------------------------------------------


async def test_every_object_of_the_release_is_stored(installed: Installed) -> None:
    release = installed.release
    status = await release.status()
    assert status["status"] == "deployed" and status["revision"] == 1
    kinds = set()
    for doc in release.documents:
        stored = (await call(installed.admin, "GET", release.path(doc))).ok()
        assert stored["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name
        kinds.add(doc["kind"])
    assert {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Role",
        "RoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    } <= kinds
    assert "ValidatingAdmissionPolicy" not in kinds  # 1.20 has no such API


async def test_webhook_configurations_point_at_the_local_server(installed: Installed) -> None:
    release = installed.release
    for kind, path in (
        ("MutatingWebhookConfiguration", "/mutate"),
        ("ValidatingWebhookConfiguration", "/validate"),
    ):
        stored = (await call(installed.admin, "GET", release.path(release.one(kind)))).ok()
        [hook] = stored["webhooks"]
        assert hook["clientConfig"]["url"] == installed.url + path
        ca_bundle = base64.b64decode(hook["clientConfig"]["caBundle"])
        assert ca_bundle.strip() == installed.ca_pem.strip()  # the chart trims the PEM
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "NoneOnDryRun"


# --- mutation through the API server -------------------------------------------------------


async def test_pod_in_a_covered_namespace_is_rewritten_and_gets_the_pull_secret(
    installed: Installed,
) -> None:
    admin = installed.admin
    for ns in (installed.app, installed.extra):
        manifest = pod(
            "api",
            {"api": "quay.io/my-org/api:v1.0.1", "web": "nginx:1.25"},
            init={"migrate": "quay.io/my-org/migrate:v1.0.1"},
            pull_secrets=["existing"],
        )
        created = await create_pod(admin, ns, manifest)
        assert created.status == 201, created.body
        assert stored_view(await read_pod(admin, ns, "api")) == {
            "images": {
                "migrate": PREFIX + "quay.io/my-org/migrate:v1.0.1",
                "api": PREFIX + "quay.io/my-org/api:v1.0.1",
                "web": "nginx:1.25",
            },
            "imagePullSecrets": [{"name": "existing"}, {"name": SECRET}],
            "original-images": {
                "api": "quay.io/my-org/api:v1.0.1",
                "migrate": "quay.io/my-org/migrate:v1.0.1",
            },
        }
        # Written by the webhook as the chart's ServiceAccount, with the license
        # the chart stored.
        secret = (await read_secret(admin, ns, SECRET)).ok()
        assert secret["type"] == "kubernetes.io/dockerconfigjson"
        assert dockerconfig_of(secret) == license_dockerconfig(
            LICENSE, PROXY, "registry.replicated.com"
        )


async def test_pods_outside_the_covered_namespaces_are_left_alone(installed: Installed) -> None:
    admin = installed.admin
    for ns in (installed.other, installed.release.namespace):
        created = await create_pod(admin, ns, pod("api", {"api": "quay.io/my-org/api:v1.0.1"}))
        assert created.status == 201, created.body
        stored = await read_pod(admin, ns, "api")
        assert stored_view(stored) == {
            "images": {"api": "quay.io/my-org/api:v1.0.1"},
            "imagePullSecrets": None,
            "original-images": None,
        }
    assert (await read_secret(admin, installed.other, SECRET)).status == 404


async def test_opt_out_label_skips_the_mutation(installed: Installed) -> None:
    manifest = pod("opted-out", {"web": "nginx:1.25"})
    manifest["metadata"]["labels"] = {OPT_OUT: "true"}
    created = await create_pod(installed.admin, installed.app, manifest)
    assert created.status == 201, created.body
    stored = await read_pod(installed.admin, installed.app, "opted-out")
    assert stored_view(stored)["images"] == {"web": "nginx:1.25"}
    assert stored_view(stored)["imagePullSecrets"] is None


# --- validation through the API server ----------------------------------------------------


async def test_private_image_that_cannot_be_proxied_is_denied(installed: Installed) -> None:
    answer = await create_pod(installed.admin, installed.app, pod("ported", {"app": PORTED}))
    denied(
        answer,
        "validate.image-proxy-webhook.io",
        f"container 'app' image '{PORTED}'",
        "has a port",
    )
    assert (
        await call(installed.admin, "GET", f"/api/v1/namespaces/{installed.app}/pods/ported")
    ).status == 404


async def test_policy_has_no_opt_out(installed: Installed) -> None:
    """The opt-out label skips the mutation, not the admin's policy: a private image
    that was not proxied is refused."""
    manifest = pod("sneaky", {"api": "quay.io/my-org/api:v1.0.1"})
    manifest["metadata"]["labels"] = {OPT_OUT: "true"}
    answer = await create_pod(installed.admin, installed.app, manifest)
    denied(
        answer,
        "validate.image-proxy-webhook.io",
        "quay.io/my-org/api:v1.0.1",
        PREFIX + "quay.io/my-org/api:v1.0.1",
    )


# --- tls.mode helm: the generated CA across upgrades -------------------------------------


async def test_upgrade_keeps_the_generated_ca_and_a_deleted_secret_renews_it(
    kube_apiserver: KubeAPIServer, installed: Installed
) -> None:
    kube, admin = kube_apiserver, installed.admin
    tag = uuid.uuid4().hex[:6]
    system = await namespace(kube, f"ipw-ca-{tag}")
    covered = await namespace(kube, f"ca-app-{tag}")
    release = HelmRelease(kube, f"ca-{tag}", system)
    values: dict[str, Any] = {
        "appSlug": "my-app",
        "license": {"id": LICENSE},
        "namespaces": [covered],
        "validatingWebhook": {"enabled": True},
        "tls": {"mode": "helm"},
    }

    async def served() -> tuple[dict[str, str], set[str]]:
        secret_doc = next(d for d in release.all("Secret") if d["type"] == "kubernetes.io/tls")
        secret = (await call(admin, "GET", release.path(secret_doc))).ok()
        bundles = set()
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            stored = (await call(admin, "GET", release.path(release.one(kind)))).ok()
            bundles |= {h["clientConfig"]["caBundle"] for h in stored["webhooks"]}
        return secret["data"], bundles

    try:
        await release.install(values)
        data, bundles = await served()
        assert bundles == {data["ca.crt"]}
        ca = x509.load_pem_x509_certificate(base64.b64decode(data["ca.crt"]))
        cert = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        service = release.one("Service")["metadata"]["name"]
        assert f"{service}.{system}.svc" in names.get_values_for_type(x509.DNSName)

        values["webhook"] = {"timeoutSeconds": 12}
        await release.upgrade(values)
        assert release.revision == 2
        assert (await served()) == (data, bundles)  # same CA, certificate and key
        mutating = (
            await call(admin, "GET", release.path(release.one("MutatingWebhookConfiguration")))
        ).ok()
        assert mutating["webhooks"][0]["timeoutSeconds"] == 12  # the upgrade did apply

        # values.yaml: "delete the Secret and upgrade to renew".
        secret_doc = next(d for d in release.all("Secret") if d["type"] == "kubernetes.io/tls")
        (await call(admin, "DELETE", release.path(secret_doc))).ok()
        await release.upgrade(values)
        renewed, renewed_bundles = await served()
        assert renewed["ca.crt"] != data["ca.crt"]
        assert renewed_bundles == {renewed["ca.crt"]}
        x509.load_pem_x509_certificate(
            base64.b64decode(renewed["tls.crt"])
        ).verify_directly_issued_by(
            x509.load_pem_x509_certificate(base64.b64decode(renewed["ca.crt"]))
        )
    finally:
        await release.uninstall()
