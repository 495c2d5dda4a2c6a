"""Helpers for the admission end-to-end tests: the webhook in-process, its registration, raw calls.

- :func:`webhook_settings`: Settings from a camelCase dict, the same parser as the config file.
- :class:`RunningWebhook` / :func:`run_webhook`: ``service.running`` over TLS on a free
  port of 127.0.0.1, with a certificate from ``webhook.pki.generate``.
- :func:`mutating_webhook`: a MutatingWebhookConfiguration pointing at a URL with a
  caBundle, limited to namespaces carrying one test's label, deleted afterwards.
- :func:`call`: one API request through kubernetes-asyncio returning the JSON body,
  the status and the ``Warning`` headers (the admission warnings).
- :class:`UnresponsiveKubeAPIServer`: fakes an API server that accepts TCP
  connections and never answers (not even the TLS handshake).
- :func:`restricted_client`: a kubernetes-asyncio client acting as a real
  ServiceAccount with only the RBAC rules given (token from the TokenRequest API).
- :func:`kubelet_credentials`: the ``auth`` of a ``.dockerconfigjson`` that the
  kubelet's credential keyring picks for an image.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from tests.e2e.kubeapi import KubeAPIServer
from tests.support import eventually, free_port
from webhook import config, pki, service
from webhook.admission import Admitter, SecretEnsurer
from webhook.review import ORIGINAL_IMAGES_ANNOTATION

SELECTOR_LABEL = "e2e.image-proxy-webhook.io/test"
PROBE_OVERRIDE = {"match": "quay.io/e2e-ready/*", "visibility": "private"}
PROBE_IMAGE = "quay.io/e2e-ready/probe:v1"


# --- settings and the webhook ---------------------------------------------------


def webhook_settings(
    overrides: Mapping[str, Any], *, port: int | None = None, health_port: int | None = None
) -> config.Settings:
    """Settings through ``config.parse`` (as from the YAML file), on free loopback ports."""
    data: dict[str, Any] = {"appSlug": "my-app", **overrides}
    server = dict(data.get("server") or {})
    server.setdefault("host", "127.0.0.1")
    server.setdefault("port", port or free_port())
    server.setdefault("healthPort", health_port or free_port())
    data["server"] = server
    return config.parse(data)


@dataclass
class RunningWebhook:
    settings: config.Settings
    admitter: Admitter
    ca_file: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.settings.server.port}/mutate"

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca_file.read_bytes()).decode()


@contextlib.asynccontextmanager
async def run_webhook(
    settings_overrides: Mapping[str, Any],
    certs: pki.CertPaths,
    *,
    secrets: Callable[[config.Settings], SecretEnsurer] | None = None,
) -> AsyncIterator[RunningWebhook]:
    """The whole service in-process (``service.running``) with these settings.

    ``secrets`` builds the pull-secret manager from the final settings; None lets
    the service build its own PullSecrets from the environment (KUBECONFIG) and
    run its background loop, as ``serve`` does.
    """
    server = {
        "certFile": str(certs.cert_file),
        "keyFile": str(certs.key_file),
        **dict(settings_overrides.get("server") or {}),
    }
    settings = webhook_settings({**settings_overrides, "server": server})
    assert certs.ca_file is not None
    ensurer = secrets(settings) if secrets is not None else None
    async with service.running(settings, secrets=ensurer) as (admitter, _health):
        yield RunningWebhook(settings, admitter, certs.ca_file)


# --- raw API calls ----------------------------------------------------------------

_WARNING = re.compile(r'^\d{3} \S+ "(?P<text>(?:[^"\\]|\\.)*)"')


def parse_warnings(values: Sequence[str]) -> list[str]:
    """The texts of ``Warning: 299 - "text"`` headers (RFC 7234 quoted strings)."""
    texts = []
    for value in values:
        match = _WARNING.match(value)
        assert match, f"unexpected Warning header {value!r}"
        texts.append(re.sub(r"\\(.)", r"\1", match["text"]))
    return texts


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))

    def ok(self) -> dict[str, Any]:
        assert 200 <= self.status < 300, f"HTTP {self.status}: {self.body}"
        return self.body


async def call(
    api: k8s.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    query: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> Answer:
    """One request through kubernetes-asyncio's ApiClient; never raises on an HTTP status."""
    started = time.monotonic()
    response = await api.call_api(
        path,
        method,
        query_params=list((query or {}).items()),
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=60,
    )
    async with response:
        data = await response.read()
        seconds = time.monotonic() - started
        warnings = parse_warnings(response.headers.getall("Warning", []))
        status = response.status
    return Answer(status, json.loads(data) if data else {}, warnings, seconds)


def pod(
    name: str,
    containers: Mapping[str, str],
    *,
    init: Mapping[str, str] | None = None,
    pull_secrets: Sequence[str] = (),
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod manifest: container name → image."""
    spec: dict[str, Any] = {
        "containers": [{"name": n, "image": i} for n, i in containers.items()],
    }
    if init:
        spec["initContainers"] = [{"name": n, "image": i} for n, i in init.items()]
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    metadata: dict[str, Any] = {"name": name}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


async def create_pod(
    api: k8s.ApiClient, namespace: str, manifest: Mapping[str, Any], *, dry_run: bool = False
) -> Answer:
    return await call(
        api,
        "POST",
        f"/api/v1/namespaces/{namespace}/pods",
        dict(manifest),
        query={"dryRun": "All"} if dry_run else None,
    )


async def read_pod(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return (await call(api, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")).ok()


def images_of(stored: Mapping[str, Any]) -> dict[str, str]:
    """Container name → image over init, regular and ephemeral containers."""
    spec = stored["spec"]
    return {
        c["name"]: c["image"]
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    }


# --- the MutatingWebhookConfiguration ----------------------------------------------


def stored_view(stored: Mapping[str, Any]) -> dict[str, Any]:
    """What the webhook may change in a stored Pod: images, pull secrets, its annotation."""
    annotations = stored["metadata"].get("annotations") or {}
    return {
        "images": images_of(stored),
        "imagePullSecrets": stored["spec"].get("imagePullSecrets"),
        "original-images": json.loads(annotations[ORIGINAL_IMAGES_ANNOTATION])
        if ORIGINAL_IMAGES_ANNOTATION in annotations
        else None,
    }


def webhook_configuration(
    name: str,
    *,
    url: str,
    ca_bundle: str,
    selector: str,
    failure_policy: str = "Fail",
    timeout_seconds: int = 10,
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{name}.image-proxy-webhook.io",
                "clientConfig": {"url": url, "caBundle": ca_bundle},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pods", "pods/ephemeralcontainers"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {SELECTOR_LABEL: selector}},
                "failurePolicy": failure_policy,
                "sideEffects": "NoneOnDryRun",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": timeout_seconds,
                "reinvocationPolicy": "Never",
            }
        ],
    }


@contextlib.asynccontextmanager
async def mutating_webhook(
    api: k8s.ApiClient,
    *,
    url: str,
    ca_bundle: str,
    selector: str,
    failure_policy: str = "Fail",
    timeout_seconds: int = 10,
) -> AsyncIterator[str]:
    """Register the webhook for namespaces labelled ``SELECTOR_LABEL=selector``; its name."""
    name = f"ipw-e2e-{uuid.uuid4().hex[:10]}"
    body = webhook_configuration(
        name,
        url=url,
        ca_bundle=ca_bundle,
        selector=selector,
        failure_policy=failure_policy,
        timeout_seconds=timeout_seconds,
    )
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    (await call(api, "POST", path, body)).ok()
    try:
        yield f"{name}.image-proxy-webhook.io"
    finally:
        await call(api, "DELETE", f"{path}/{name}")


async def wait_until_mutating(api: k8s.ApiClient, namespace: str) -> None:
    """Until a dry-run Pod in ``namespace`` comes back with its image changed.

    The API server picks up a new webhook configuration asynchronously. A
    dry run has no side effects (the webhook creates no secret for it).
    """
    probe = pod(f"ready-{uuid.uuid4().hex[:6]}", {"probe": PROBE_IMAGE})

    async def mutated() -> bool:
        answer = await create_pod(api, namespace, probe, dry_run=True)
        return answer.status == 201 and answer.body["spec"]["containers"][0]["image"] != (
            PROBE_IMAGE
        )

    await eventually(mutated, what=f"the webhook to mutate Pods in {namespace}")


# --- namespaces and secrets ----------------------------------------------------------


async def namespaces(kube: KubeAPIServer, selector: str, *names: str) -> None:
    """Create the namespaces, labelled so that only this test's webhook sees them."""
    for name in names:
        await kube.create_namespace(
            name, labels={SELECTOR_LABEL: selector, "kubernetes.io/metadata.name": name}
        )


async def read_secret(api: k8s.ApiClient, namespace: str, name: str) -> Answer:
    return await call(api, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")


def dockerconfig_of(secret: Mapping[str, Any]) -> Any:
    """The decoded ``.dockerconfigjson`` of a stored secret."""
    return json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))


def kubelet_credentials(image: str, dockerconfig: Mapping[str, Any]) -> str | None:
    """The Basic credentials the kubelet sends for ``image``, from a ``.dockerconfigjson``.

    As its credential keyring does: each ``auths`` key is read as a URL (``https://``
    when it has no scheme); an entry applies when its host and port are the image's
    and its path, if any, starts the image's repository path; the longest key wins.
    The entry's ``auth`` is decoded into user and password (split at the first
    ``:``), which the runtime sends as ``Basic base64(user:password)``.
    """
    name = image.partition("@")[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    target = urllib.parse.urlsplit(f"https://{name}")
    for key in sorted(dockerconfig["auths"], key=len, reverse=True):
        entry = urllib.parse.urlsplit(key if "://" in key else f"https://{key}")
        if (entry.hostname, entry.port) == (target.hostname, target.port) and (
            target.path.startswith(entry.path.rstrip("/") + "/") or not entry.path.strip("/")
        ):
            user, _, password = (
                base64.b64decode(dockerconfig["auths"][key]["auth"]).decode().partition(":")
            )
            return base64.b64encode(f"{user}:{password}".encode()).decode()
    return None


def expected_dockerconfig(auths: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """docs/design.md §3 literally: registry → {"auth": b64("user:password")}."""
    return {
        "auths": {
            registry: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
            for registry, (user, password) in auths.items()
        }
    }


def license_dockerconfig(license_id: str, *registries: str) -> dict[str, Any]:
    """docs/design.md §3, online: the user ``LICENSE_ID``, the license ID as password."""
    return expected_dockerconfig({registry: ("LICENSE_ID", license_id) for registry in registries})


# --- faulty Kubernetes APIs ------------------------------------------------------------


class UnresponsiveKubeAPIServer:
    """Fakes a Kubernetes API server that accepts connections and never answers.

    Every connection is held open in silence (the client's TLS ClientHello goes
    unanswered) until the fake is closed.
    """

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass  # swallow whatever the client sends; answer nothing

    async def __aenter__(self) -> UnresponsiveKubeAPIServer:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


def client_for(url: str, *, token: str = "unused", ca_file: Path | None = None) -> k8s.ApiClient:
    """A kubernetes-asyncio client for an API server at ``url`` with a bearer token."""
    cfg = k8s.Configuration(
        host=url, api_key={"BearerToken": token}, api_key_prefix={"BearerToken": "Bearer"}
    )
    if ca_file is not None:
        cfg.ssl_ca_cert = str(ca_file)
    return k8s.ApiClient(cfg)


async def restricted_client(
    kube: KubeAPIServer,
    namespace: str,
    account: str,
    rules: Sequence[Mapping[str, Any]],
) -> k8s.ApiClient:
    """A client acting as ServiceAccount ``namespace/account`` with only ``rules`` there.

    There is no controller-manager to mint token Secrets; the TokenRequest API of
    the API server itself issues a real, signed ServiceAccount token.
    """
    async with kube.api_client() as api:
        sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}}
        answer = await call(api, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", sa)
        assert answer.status in (201, 409), answer.body
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": account},
            "rules": [dict(r) for r in rules],
        }
        (await call(api, "POST", f"{rbac}/roles", role)).ok()
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        }
        (await call(api, "POST", f"{rbac}/rolebindings", binding)).ok()
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
        token = (
            await call(
                api,
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                request,
            )
        ).ok()["status"]["token"]
    restricted = client_for(kube.url, token=token, ca_file=kube.ca_file)

    async def authorised() -> bool:
        # RBAC reaches the authorizer through an informer: wait until the role applies.
        try:
            await k8s.CoreV1Api(restricted).list_namespaced_secret(namespace)
        except ApiException as exc:
            if exc.status == 403:
                return False
            raise
        return True

    if any("list" in r.get("verbs", ()) for r in rules):
        await eventually(authorised, what=f"RBAC for {namespace}/{account}")
    return restricted
