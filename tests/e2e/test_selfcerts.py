"""``tls.mode: selfManaged`` through the real kube-apiserver, deployed the GitOps way.

The chart is rendered by ``helm template`` (helm-python-sdk, no cluster access) and
its objects are applied one by one with server-side apply, as Argo CD does. The
webhook then runs as a real process (``python -m webhook serve``) on the config file
from the applied ConfigMap, with a kubeconfig holding a token of the chart's
ServiceAccount: only the chart's RBAC lets it create its certificate Secret and set
the caBundle. ``webhook.url`` points the webhook configurations at the process on
127.0.0.1 (the certificate then also names 127.0.0.1); their failurePolicy is Fail,
so a TLS failure is a failed request.

Proved: no Secret at start → one is created and the caBundle set in both
configurations, a Pod created through the API server is mutated; a restart keeps the
CA and the certificate; two replicas started at once end with one CA and serve the
same certificate; a certificate at two thirds of its (short) life is renewed and
served with no failed request during the swap; a GitOps sync that re-applies or
replaces the configurations (no caBundle in them) leaves the webhook working.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from kubernetes_asyncio import client as k8s

from tests import reviews
from tests.e2e.admission_harness import call, create_pod, pod, read_pod, read_secret
from tests.e2e.chart_release import (
    CHART,
    kubeconfig_for,
    local_config,
    namespace,
    object_path,
    require_helm,
    service_account_token,
)
from tests.e2e.kubeapi import KUBE_VERSION, KubeAPIServer
from tests.support import eventually, free_port
from webhook import config, pki, selfcerts
from webhook.config import WEBHOOK_NAMESPACE_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.chart, pytest.mark.asyncio(loop_scope="module")]

LICENSE = "selfcerts-e2e-license"
PRIVATE = "quay.io/my-org/api:v1"
REWRITTEN = f"proxy.replicated.com/proxy/my-app/{PRIVATE}"
CONFIGURATIONS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
# Argo CD's order of kinds within a sync wave (webhook configurations last).
KIND_ORDER = (
    "Namespace",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
)
WEBHOOK_PROCESS_START_SECONDS = 60.0


# --- the chart, rendered and applied as a GitOps tool does ------------------------------


def rendered(values: dict[str, Any], release: str, release_namespace: str) -> dict[str, str]:
    """`helm template --kube-version`, the API server's version, as Argo CD passes it:
    template path → text; no cluster is contacted. (helm-python-sdk's Chart.render has
    no kube version; the library call under it takes one.)"""
    helm = require_helm()
    from helm_python import _native

    options = {"name": release, "namespace": release_namespace, "kube_version": KUBE_VERSION}
    with helm.Chart.load(CHART) as chart:
        raw = _native.call_string(
            "helm_render", chart._raw(), json.dumps(values), json.dumps(options)
        )
    manifests: dict[str, str] = json.loads(raw)
    return manifests


def documents(manifests: dict[str, str]) -> list[dict[str, Any]]:
    docs = [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    rank = {kind: index for index, kind in enumerate(KIND_ORDER)}
    return sorted(docs, key=lambda d: rank.get(d["kind"], len(KIND_ORDER)))


async def apply(api: k8s.ApiClient, docs: list[dict[str, Any]], release_namespace: str) -> None:
    """Server-side apply of each object, one by one (Argo CD's ServerSideApply)."""
    for doc in docs:
        answer = await call(
            api,
            "PATCH",
            object_path(doc, release_namespace),
            doc,
            query={"fieldManager": "argocd-controller", "force": "true"},
            content_type="application/apply-patch+yaml",
        )
        answer.ok()


# --- the webhook as a process -----------------------------------------------------------


@dataclass
class WebhookProcess:
    """The Deployment's container command line on a local copy of its config file."""

    config: dict[str, Any]
    args: list[str]  # the container's
    work: Path
    env: dict[str, str]
    name: str = "webhook"
    process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.config["server"]["port"])

    @property
    def health_port(self) -> int:
        return int(self.config["server"]["healthPort"])

    @property
    def log(self) -> Path:
        return self.work / f"{self.name}.log"

    def start(self) -> None:
        config_file = self.work / f"{self.name}.yaml"
        config_file.write_text(yaml.safe_dump(self.config))
        args = list(self.args)
        args[args.index("--config") + 1] = str(config_file)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webhook", *args],
            stdin=subprocess.DEVNULL,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=Path(__file__).resolve().parents[2],
        )

    async def wait_ready(self) -> None:
        """Until /readyz answers 200; fails with the log when the process exits."""
        deadline = time.monotonic() + WEBHOOK_PROCESS_START_SECONDS
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"{self.name} exited with {self.process.returncode}:\n{self.log_text()}"
                    )
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} not ready:\n{self.log_text()}")
                await asyncio.sleep(0.2)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restarted(self) -> WebhookProcess:
        return WebhookProcess(self.config, self.args, self.work, self.env, f"{self.name}-restarted")

    def replica(self, name: str) -> WebhookProcess:
        """Another Pod of the same Deployment: the same config on other ports, its
        certificate files in a volume of its own."""
        own = self.work / name
        server = {
            **self.config["server"],
            "port": free_port(),
            "healthPort": free_port(),
            "certFile": str(own / "tls.crt"),
            "keyFile": str(own / "tls.key"),
        }
        return WebhookProcess(
            {**self.config, "server": server}, self.args, self.work, self.env, name
        )


# --- one GitOps deployment of the chart ------------------------------------------------


@dataclass
class Deployed:
    kube: KubeAPIServer
    admin: k8s.ApiClient
    release: str
    system: str  # release namespace
    app: str  # covered namespace
    values: dict[str, Any]
    docs: list[dict[str, Any]]
    webhook: WebhookProcess
    processes: list[WebhookProcess] = field(default_factory=list)

    @property
    def fullname(self) -> str:
        return f"{self.release}-image-proxy-webhook"

    @property
    def secret_name(self) -> str:
        return f"{self.fullname}-certs"

    async def secret(self) -> dict[str, Any]:
        return (await read_secret(self.admin, self.system, self.secret_name)).ok()

    async def pem(self, key: str) -> bytes:
        return base64.b64decode((await self.secret())["data"][key])

    async def ca_bundles(self) -> list[str]:
        bundles = []
        for plural in CONFIGURATIONS:
            path = f"/apis/admissionregistration.k8s.io/v1/{plural}/{self.fullname}"
            stored = (await call(self.admin, "GET", path)).ok()
            bundles += [h["clientConfig"].get("caBundle", "") for h in stored["webhooks"]]
        return bundles

    async def start(self, *processes: WebhookProcess) -> None:
        for process in processes or (self.webhook,):
            self.processes.append(process)
            process.start()
        await asyncio.gather(*(p.wait_ready() for p in processes or (self.webhook,)))


def values_for(app: str, port: int, health_port: int, **tls: Any) -> dict[str, Any]:
    return {
        "appSlug": "my-app",
        "license": {"id": LICENSE},
        "namespaces": [app],
        "createNamespaces": True,
        "visibility": {"overrides": [{"match": "quay.io/my-org/*", "visibility": "private"}]},
        "server": {"port": port, "healthPort": health_port, "logFormat": "text"},
        "webhook": {"url": f"https://127.0.0.1:{port}", "failurePolicy": "Fail"},
        "validatingWebhook": {"enabled": True},
        "tls": {"mode": "selfManaged", "selfManaged": tls},
        # helm template assumes the policy/v1 API, which 1.20 does not serve.
        "podDisruptionBudget": {"enabled": False},
    }


@contextlib.asynccontextmanager
async def deployed(kube: KubeAPIServer, work: Path, **tls: Any) -> AsyncIterator[Deployed]:
    tag = uuid.uuid4().hex[:6]
    release = f"sc-{tag}"
    system = await namespace(kube, f"ipw-sc-{tag}")
    app = f"sc-app-{tag}"
    values = values_for(app, free_port(), free_port(), **tls)
    docs = documents(rendered(values, release, system))
    async with kube.api_client() as admin:
        await apply(admin, docs, system)
        await kube.ensure_default_service_account(app)  # no controller-manager here

        # The Pod's files from the applied objects, its identity from the chart.
        root = work / "pod"
        [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
        config_file = root / "etc/image-proxy-webhook/config.yaml"
        config_file.parent.mkdir(parents=True)
        config_file.write_text(configmap["data"]["config.yaml"])
        license_file = root / "etc/image-proxy-webhook/license/id"
        license_file.parent.mkdir(parents=True)
        [license_secret] = [d for d in docs if d["metadata"]["name"].endswith("-license")]
        license_file.write_bytes(base64.b64decode(license_secret["data"]["id"]))
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        token = await service_account_token(kube, system, account)
        env = {
            k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")
        }
        env["KUBECONFIG"] = str(kubeconfig_for(kube, token, work / "kubeconfig"))
        env[WEBHOOK_NAMESPACE_ENV] = system
        webhook = WebhookProcess(local_config(root, container), container["args"], work, env)
        state = Deployed(kube, admin, release, system, app, values, docs, webhook)
        try:
            yield state
        finally:
            for process in state.processes:
                process.stop()


async def wait_mutating(state: Deployed) -> None:
    """The API server picks up a caBundle change asynchronously: dry-run Pods until one
    comes back rewritten."""
    probe = pod(f"probe-{uuid.uuid4().hex[:6]}", {"app": PRIVATE})

    async def mutated() -> bool:
        answer = await create_pod(state.admin, state.app, probe, dry_run=True)
        return answer.status == 201 and answer.body["spec"]["containers"][0]["image"] == REWRITTEN

    await eventually(mutated, timeout=30, what="the webhook to mutate Pods through the API server")


async def served_certificate(port: int, ca_pem: bytes) -> x509.Certificate:
    """The certificate the webhook presents to a new connection verified against the CA."""

    def handshake() -> bytes:
        context = ssl.create_default_context(cadata=ca_pem.decode())
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
        ):
            der = wrapped.getpeercert(binary_form=True)
            assert der is not None
            return der

    return x509.load_der_x509_certificate(await asyncio.to_thread(handshake))


def certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# --- tests -------------------------------------------------------------------------------


async def test_no_secret_at_start(kube_apiserver: KubeAPIServer, tmp_path: Path) -> None:
    async with deployed(kube_apiserver, tmp_path) as state:
        assert (await read_secret(state.admin, state.system, state.secret_name)).status == 404
        assert await state.ca_bundles() == ["", ""]  # as rendered: no caBundle
        await state.start()

        secret = await state.secret()
        assert secret["type"] == "kubernetes.io/tls"
        ca_pem = await state.pem("ca.crt")
        [ca] = x509.load_pem_x509_certificates(ca_pem)
        cert = certificate(await state.pem("tls.crt"))
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        service = f"{state.fullname}.{state.system}.svc"
        assert service in names.get_values_for_type(x509.DNSName)
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert 365 * 86400 <= life.total_seconds() <= 365 * 86400 + 600
        ca_life = ca.not_valid_after_utc - ca.not_valid_before_utc
        assert 3650 * 86400 <= ca_life.total_seconds() <= 3650 * 86400 + 600

        # Both configurations trust that CA, and the process serves that certificate.
        assert await state.ca_bundles() == [base64.b64encode(ca_pem).decode()] * 2
        assert await served_certificate(state.webhook.port, ca_pem) == cert

        # A Pod created through the API server is mutated (and the pull secret written).
        await wait_mutating(state)
        created = await create_pod(state.admin, state.app, pod("api", {"api": PRIVATE}))
        assert created.status == 201, created.body
        stored = await read_pod(state.admin, state.app, "api")
        assert stored["spec"]["containers"][0]["image"] == REWRITTEN
        assert {"name": "my-app-registry"} in stored["spec"]["imagePullSecrets"]


async def test_restart_keeps_the_ca_and_the_certificate(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    async with deployed(kube_apiserver, tmp_path) as state:
        await state.start()
        before = await state.secret()
        state.webhook.stop()

        again = state.webhook.restarted()
        await state.start(again)
        after = await state.secret()
        assert after["data"] == before["data"]
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        ca_pem = await state.pem("ca.crt")
        served = await served_certificate(again.port, ca_pem)
        assert served == certificate(await state.pem("tls.crt"))
        assert await state.ca_bundles() == [before["data"]["ca.crt"]] * 2
        await wait_mutating(state)


async def test_two_replicas_started_at_once_end_with_one_ca(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    async with deployed(kube_apiserver, tmp_path) as state:
        second = state.webhook.replica("second")
        third = state.webhook.replica("third")
        await state.start(state.webhook, second, third)

        ca_pem = await state.pem("ca.crt")
        assert len(x509.load_pem_x509_certificates(ca_pem)) == 1
        cert = certificate(await state.pem("tls.crt"))
        for process in (state.webhook, second, third):
            assert await served_certificate(process.port, ca_pem) == cert, process.log_text()
        assert await state.ca_bundles() == [base64.b64encode(ca_pem).decode()] * 2
        await wait_mutating(state)


async def test_certificate_is_renewed_with_no_failed_request(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    """A 30-second certificate is renewed 20 seconds in; meanwhile Pods go through the
    API server and reviews straight to the webhook, each on a new TLS connection."""
    lifetime_days = 30 / 86400
    async with deployed(
        kube_apiserver, tmp_path, certValidityDays=lifetime_days, caValidityDays=1
    ) as state:
        await state.start()
        ca_pem = await state.pem("ca.crt")
        first = certificate(await state.pem("tls.crt"))
        await wait_mutating(state)

        context = ssl.create_default_context(cadata=ca_pem.decode())
        body = reviews.review(reviews.pod(PRIVATE, namespace=state.app))
        url = f"https://127.0.0.1:{state.webhook.port}/mutate"
        failures: list[str] = []
        served: list[x509.Certificate] = []
        sent = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sent += 1
            # Straight to the webhook, a new connection each time.
            connector = aiohttp.TCPConnector(ssl=context, force_close=True)
            try:
                async with (
                    aiohttp.ClientSession(connector=connector) as session,
                    session.post(url, json=body) as response,
                ):
                    answer = await response.json()
                    if response.status != 200 or not answer["response"]["allowed"]:
                        failures.append(f"direct: HTTP {response.status} {answer}")
            except (aiohttp.ClientError, ssl.SSLError) as exc:
                failures.append(f"direct: {exc!r}")
            # Through the API server (failurePolicy Fail: a TLS failure is a refusal).
            probe = pod(f"swap-{sent}", {"app": PRIVATE})
            answer = await create_pod(state.admin, state.app, probe, dry_run=True)
            if answer.status != 201 or answer.body["spec"]["containers"][0]["image"] != REWRITTEN:
                failures.append(f"api server: HTTP {answer.status} {answer.message}")
            served.append(await served_certificate(state.webhook.port, ca_pem))
            if served[-1] != first and len({c.serial_number for c in served[-5:]}) == 1:
                break  # renewed, and the new one served for a while
            await asyncio.sleep(0.2)

        assert failures == [], failures[:5]
        renewed = served[-1]
        assert renewed != first, "not renewed within 60 s:\n" + state.webhook.log_text()
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        # Renewed before it expired, at about two thirds of its life, by the same CA.
        swap = next(i for i, c in enumerate(served) if c != first)
        assert swap > 0
        assert renewed == certificate(await state.pem("tls.crt"))
        renewed.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
        assert await state.pem("ca.crt") == ca_pem
        print(f"renewal: {sent} rounds, swap after {swap}, no failure")


async def test_gitops_sync_keeps_the_webhook_working(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    """A sync re-renders (same bytes) and re-applies; a sync that replaces the webhook
    configurations (Argo CD's Replace=true, `kubectl replace`) drops the caBundle, and
    the webhook sets it again within checkIntervalSeconds."""
    async with deployed(kube_apiserver, tmp_path, checkIntervalSeconds=1) as state:
        await state.start()
        bundle = (await state.secret())["data"]["ca.crt"]
        await wait_mutating(state)

        again = documents(rendered(state.values, state.release, state.system))
        assert again == state.docs
        await apply(state.admin, again, state.system)
        for doc in again:
            if doc["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
                path = object_path(doc, state.system)
                stored = (await call(state.admin, "GET", path)).ok()
                replaced = {**doc, "metadata": {**doc["metadata"], **_version(stored)}}
                (await call(state.admin, "PUT", path, replaced)).ok()

        async def restored() -> bool:
            return await state.ca_bundles() == [bundle] * 2

        await eventually(restored, timeout=15, what="the webhook to set the caBundle again")
        await wait_mutating(state)


async def test_configurations_replaced_or_recreated_get_the_bundle_at_once(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    """With an hour between checks, the watch alone repairs the caBundle: of a
    configuration replaced without it (a GitOps replace), and of one deleted and
    created again after the webhook started (a chart that applies it after the
    Deployment). Until then the API server cannot call the webhook at all."""
    async with deployed(kube_apiserver, tmp_path, checkIntervalSeconds=3600) as state:
        await state.start()
        bundle = (await state.secret())["data"]["ca.crt"]
        await wait_mutating(state)
        configurations = [
            doc
            for doc in state.docs
            if doc["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        ]

        async def restored() -> bool:
            return await state.ca_bundles() == [bundle] * 2

        for doc in configurations:
            path = object_path(doc, state.system)
            stored = (await call(state.admin, "GET", path)).ok()
            replaced = {**doc, "metadata": {**doc["metadata"], **_version(stored)}}
            (await call(state.admin, "PUT", path, replaced)).ok()
        await eventually(restored, timeout=10, what="the watch to set the caBundle again")

        for doc in configurations:
            (await call(state.admin, "DELETE", object_path(doc, state.system))).ok()
        await apply(state.admin, configurations, state.system)
        await eventually(restored, timeout=10, what="the caBundle of the new configurations")
        await wait_mutating(state)
        assert "watching" not in state.webhook.log_text()


def _version(stored: dict[str, Any]) -> dict[str, str]:
    return {"resourceVersion": stored["metadata"]["resourceVersion"]}


class RacingReplica(selfcerts.SelfManagedTLS):
    """The real code against the real API server, held after its first read of the
    Secret until every replica has read it: all of them find no Secret and create one
    at the same moment, which is what replicas started together do."""

    def __init__(self, *args: Any, barrier: asyncio.Barrier) -> None:
        super().__init__(*args)
        self.barrier = barrier
        self.creates: list[int] = []
        self._held = False

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        status, answer = await super()._call(method, path, body)
        if method == "POST":
            self.creates.append(status)
        if method == "GET" and path == self._secret_path and not self._held:
            self._held = True
            await self.barrier.wait()
        return status, answer


async def test_replicas_racing_on_the_create_agree(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    async with deployed(kube_apiserver, tmp_path) as state:
        settings = config.parse(state.webhook.config).self_managed_tls
        assert settings is not None
        barrier = asyncio.Barrier(3)
        replicas = [
            RacingReplica(
                state.admin,
                settings,
                state.system,
                pki.CertPaths(tmp_path / f"r{i}" / "tls.crt", tmp_path / f"r{i}" / "tls.key"),
                barrier=barrier,
            )
            for i in range(3)
        ]
        await asyncio.gather(*(r.sync() for r in replicas))

        # One create won; the others met 409 and took the winner's Secret.
        assert sorted(s for r in replicas for s in r.creates) == [201, 409, 409]
        materials = {r.material for r in replicas}
        assert len(materials) == 1
        [material] = materials
        assert material is not None
        stored = selfcerts.Material.from_secret_data((await state.secret())["data"])
        assert stored == material
        for i in range(3):
            assert (tmp_path / f"r{i}" / "tls.crt").read_bytes() == material.cert
        assert await state.ca_bundles() == [material.ca_bundle_b64] * 2


async def test_not_ready_until_a_certificate_is_served(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    """Run as a ServiceAccount without the chart's RBAC, the webhook cannot read or
    create its certificate: it never reports ready, retries, then exits with an error
    that says why."""
    async with deployed(kube_apiserver, tmp_path) as state:
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}
        path = f"/api/v1/namespaces/{state.system}/serviceaccounts"
        (await call(state.admin, "POST", path, account)).ok()
        token = await service_account_token(kube_apiserver, state.system, "nobody")
        env = {
            **state.webhook.env,
            "KUBECONFIG": str(kubeconfig_for(kube_apiserver, token, tmp_path / "nobody")),
        }
        webhook = WebhookProcess(state.webhook.config, state.webhook.args, tmp_path, env, "nobody")
        state.processes.append(webhook)
        webhook.start()
        assert webhook.process is not None
        ready: list[int] = []
        url = f"http://127.0.0.1:{webhook.health_port}/readyz"
        deadline = time.monotonic() + WEBHOOK_PROCESS_START_SECONDS
        async with aiohttp.ClientSession() as session:
            while webhook.process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url) as response:
                        ready.append(response.status)
                await asyncio.sleep(0.2)
        assert webhook.process.returncode == 1, webhook.log_text()
        assert 200 not in ready
        log = webhook.log_text()
        assert "error: no serving certificate: cannot read Secret" in log, log
        assert "HTTP 403" in log, log
        assert (await read_secret(state.admin, state.system, state.secret_name)).status == 404
