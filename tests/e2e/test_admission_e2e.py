"""The webhook end to end: a real kube-apiserver calls it over TLS; Pods are read back.

Each test runs the whole service in-process (``service.running``) on a free port of
127.0.0.1, registers its own MutatingWebhookConfiguration (``clientConfig.url`` and
``caBundle``) limited to namespaces carrying the test's own label, creates Pods
through the API server with kubernetes-asyncio and reads back what was stored.
Visibility is decided by probing real registries: an htpasswd one (private) and an
anonymous one (public), each on port 80 of its own loopback address so that their
images carry no port and can be proxied (docs/design.md §1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch

from tests.e2e.admission_harness import (
    PROBE_OVERRIDE,
    Answer,
    UnresponsiveKubeAPIServer,
    call,
    client_for,
    create_pod,
    dockerconfig_of,
    expected_dockerconfig,
    images_of,
    kubelet_credentials,
    license_dockerconfig,
    mutating_webhook,
    namespaces,
    pod,
    read_pod,
    read_secret,
    restricted_client,
    run_webhook,
    stored_view,
    wait_until_mutating,
)
from tests.e2e.kubeapi import KubeAPIServer, find_binaries
from tests.integration.registries import ALL_MANIFESTS, Registry, require_registry_binary
from tests.support import (
    can_bind_low_ports,
    eventually,
    free_loopback_address,
    free_port,
    unavailable,
)
from webhook import pki, pullsecrets
from webhook.config import Settings
from webhook.images import parse as parse_image

pytestmark = pytest.mark.e2e

PROXY = "proxy.replicated.com"
VENDOR = "registry.replicated.com"
PREFIX = f"{PROXY}/proxy/my-app/"
SECRET = "my-app-registry"
LICENSE = "2ViYxYAm4hPq3cZSZYKqzr2QwQx"
ANNOTATION = "image-proxy-webhook.io/original-images"
SECRET_TYPE = "kubernetes.io/dockerconfigjson"
AIRGAP_REGISTRY = "registry.local:5000"


def online_secret(license_id: str = LICENSE) -> dict[str, Any]:
    """docs/design.md §3: the proxy and the vendor registry."""
    return license_dockerconfig(license_id, PROXY, VENDOR)


# --- fixtures --------------------------------------------------------------------


def require_low_ports() -> None:
    """Portless registry names need port 80 of a loopback address: skip (fail in CI) without."""
    if not can_bind_low_ports():
        message = "e2e: portless registry names need port 80 of a loopback address (run as root)"
        unavailable(message)


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private (htpasswd) and a public (anonymous) registry, each on <own 127.x>:80."""
    binary = require_registry_binary()
    require_low_ports()
    private = Registry(
        tmp_path_factory.mktemp("private"),
        auth="htpasswd",
        users={"pusher": "push-secret"},
        binary=binary,
    )
    public = Registry(tmp_path_factory.mktemp("public"), binary=binary)
    with private, public:
        yield {
            "private": private,
            "public": public,
            "private_digest": private.push_image("team/secret", "v1").digest,
            "public_digest": public.push_image("team/app", "v1").digest,
        }


@pytest.fixture
async def api(kube_apiserver: KubeAPIServer) -> AsyncIterator[k8s.ApiClient]:
    async with kube_apiserver.api_client() as client:
        yield client


@pytest.fixture
def tag() -> str:
    """This test's label value and namespace suffix."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def admin_secrets(
    kube_apiserver: KubeAPIServer,
) -> AsyncIterator[Any]:
    """``make(settings)``: a PullSecrets on an admin client, without its background loop.

    Only admissions write the secret then, so a test sees exactly what they do.
    """
    clients: list[k8s.ApiClient] = []

    def make(settings: Settings) -> pullsecrets.PullSecrets:
        client = k8s.ApiClient(kube_apiserver.client_configuration())
        clients.append(client)
        return pullsecrets.PullSecrets(
            client, settings, lambda: pullsecrets.read_credentials(settings)
        )

    yield make
    for client in clients:
        await client.close()


def online_settings(registries: dict[str, Any], covered: list[str], **extra: Any) -> dict[str, Any]:
    private: Registry = registries["private"]
    public: Registry = registries["public"]
    settings: dict[str, Any] = {
        "licenseID": LICENSE,
        "namespaces": covered,
        "visibility": {
            "overrides": [
                PROBE_OVERRIDE,
                {"match": "quay.io/my-org/*", "visibility": "private"},
                {"match": "docker.io/my-org/*", "visibility": "private"},
            ]
        },
        "probe": {"insecureRegistries": [private.domain, public.domain], "timeoutSeconds": 3},
        "server": {"admissionDeadlineSeconds": 6},
    }
    settings.update(extra)
    return settings


def airgap_settings(covered: list[str], namespace: str, **airgap: str) -> dict[str, Any]:
    """Air gap to AIRGAP_REGISTRY under ``namespace`` (``airgap`` adds credentials)."""
    return {
        "mode": "airgap",
        "namespaces": covered,
        "airgap": {"registry": AIRGAP_REGISTRY, "namespace": namespace, **airgap},
    }


# --- online ------------------------------------------------------------------------


async def test_online_pods_stored_with_exact_images_secrets_and_annotation(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
) -> None:
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    priv, pub = registries["private"].domain, registries["public"].domain
    digest, pub_digest = registries["private_digest"], registries["public_digest"]
    assert ":" not in priv and ":" not in pub  # port 80: the names carry no port

    async with (
        run_webhook(online_settings(registries, [app]), certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        assert (await read_secret(api, app, SECRET)).status == 404  # dry runs wrote nothing

        pods = {
            # private (htpasswd registry), by tag, by digest in an init container, and
            # next to a public image that stays as written
            "private": pod(
                "private",
                {"app": f"{priv}/team/secret:v1", "sidecar": f"{pub}/team/app:v1"},
                init={"migrate": f"{priv}/team/secret@{digest}"},
            ),
            # public (anonymous registry), by tag and pinned by digest
            "public": pod(
                "public", {"web": f"{pub}/team/app:v1", "pinned": f"{pub}/team/app@{pub_digest}"}
            ),
            # the vendor registry and an image already proxied: unchanged, secret appended
            "vendor": pod(
                "vendor",
                {"api": f"{VENDOR}/my-app/api:1.0", "proxied": f"{PREFIX}quay.io/my-org/api:v1"},
                pull_secrets=["existing"],
            ),
            # tag and digest together; private by override (no probe); Docker Hub short name
            "pinned": pod(
                "pinned",
                {
                    "app": f"{priv}/team/secret:v1@{digest}",
                    "api": "quay.io/my-org/api:v1.0.1",
                    "tool": "my-org/tool",
                },
                annotations={"team": "payments"},
            ),
        }
        for name, manifest in pods.items():
            answer = await create_pod(api, app, manifest)
            assert answer.status == 201, (name, answer.body)
            assert answer.warnings == [], (name, answer.warnings)

        stored = {name: stored_view(await read_pod(api, app, name)) for name in pods}
        assert stored["private"] == {
            "images": {
                "migrate": f"{PREFIX}{priv}/team/secret@{digest}",
                "app": f"{PREFIX}{priv}/team/secret:v1",
                "sidecar": f"{pub}/team/app:v1",
            },
            "imagePullSecrets": [{"name": SECRET}],
            "original-images": {
                "app": f"{priv}/team/secret:v1",
                "migrate": f"{priv}/team/secret@{digest}",
            },
        }
        assert stored["public"] == {
            "images": {"web": f"{pub}/team/app:v1", "pinned": f"{pub}/team/app@{pub_digest}"},
            "imagePullSecrets": None,
            "original-images": None,
        }
        assert stored["vendor"] == {
            "images": {
                "api": f"{VENDOR}/my-app/api:1.0",
                "proxied": f"{PREFIX}quay.io/my-org/api:v1",
            },
            "imagePullSecrets": [{"name": "existing"}, {"name": SECRET}],
            "original-images": None,
        }
        assert stored["pinned"] == {
            "images": {
                "app": f"{PREFIX}{priv}/team/secret:v1@{digest}",
                "api": f"{PREFIX}quay.io/my-org/api:v1.0.1",
                "tool": f"{PREFIX}docker.io/my-org/tool",
            },
            "imagePullSecrets": [{"name": SECRET}],
            "original-images": {
                "app": f"{priv}/team/secret:v1@{digest}",
                "api": "quay.io/my-org/api:v1.0.1",
                "tool": "my-org/tool",
            },
        }
        pinned = await read_pod(api, app, "pinned")
        assert pinned["metadata"]["annotations"]["team"] == "payments"

        secret = (await read_secret(api, app, SECRET)).ok()
        assert secret["type"] == SECRET_TYPE
        assert list(secret["data"]) == [".dockerconfigjson"]
        assert dockerconfig_of(secret) == online_secret()

    # Visibility came from anonymous probes of the real registries.
    private_heads = [
        e for e in registries["private"].manifest_requests("team/secret") if e.method == "HEAD"
    ]
    public_heads = [
        e for e in registries["public"].manifest_requests("team/app") if e.method == "HEAD"
    ]
    assert private_heads and {e.status for e in private_heads} == {401}
    assert public_heads and {e.status for e in public_heads} == {200}


async def test_server_side_dry_run_mutates_but_creates_no_secret(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
) -> None:
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    priv = registries["private"].domain
    manifest = pod("dry", {"app": f"{priv}/team/secret:v1"})

    async with (
        run_webhook(online_settings(registries, [app]), certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        answer = await create_pod(api, app, manifest, dry_run=True)
        assert answer.status == 201, answer.body
        # The dry-run answer shows the mutation ...
        assert answer.body["spec"]["containers"][0]["image"] == f"{PREFIX}{priv}/team/secret:v1"
        assert answer.body["spec"]["imagePullSecrets"] == [{"name": SECRET}]
        # ... and nothing was written: neither the Pod nor the pull secret.
        assert (await call(api, "GET", f"/api/v1/namespaces/{app}/pods/dry")).status == 404
        assert (await read_secret(api, app, SECRET)).status == 404

        # The same Pod for real writes the secret before the Pod is admitted.
        assert (await create_pod(api, app, manifest)).status == 201
        secret = (await read_secret(api, app, SECRET)).ok()
        assert secret["type"] == SECRET_TYPE
        assert dockerconfig_of(secret) == online_secret()


async def test_update_of_a_pod_image_is_rewritten_without_adding_the_secret(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
) -> None:
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    priv, pub = registries["private"].domain, registries["public"].domain

    async with (
        run_webhook(online_settings(registries, [app]), certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        for name, secrets in (("bare", ()), ("listed", (SECRET,))):
            manifest = pod(name, {"app": f"{pub}/team/app:v1"}, pull_secrets=secrets)
            assert (await create_pod(api, app, manifest)).status == 201
            assert images_of(await read_pod(api, app, name)) == {"app": f"{pub}/team/app:v1"}
        assert (await read_secret(api, app, SECRET)).status == 404  # no Pod needed it yet

        # UPDATE: only spec.containers[*].image may change on 1.20.
        patch = [{"op": "replace", "path": "/spec/containers/0/image", "value": ""}]
        results = {}
        for name in ("bare", "listed"):
            patch[0]["value"] = f"{priv}/team/secret:v2"
            results[name] = await call(
                api,
                "PATCH",
                f"/api/v1/namespaces/{app}/pods/{name}",
                patch,
                content_type="application/json-patch+json",
            )
            assert results[name].status == 200, results[name].body

        bare = stored_view(await read_pod(api, app, "bare"))
        listed = stored_view(await read_pod(api, app, "listed"))
        assert bare == {
            "images": {"app": f"{PREFIX}{priv}/team/secret:v2"},
            "imagePullSecrets": None,  # adding it would make the API server refuse the update
            "original-images": {"app": f"{priv}/team/secret:v2"},
        }
        assert listed == {
            "images": {"app": f"{PREFIX}{priv}/team/secret:v2"},
            "imagePullSecrets": [{"name": SECRET}],
            "original-images": {"app": f"{priv}/team/secret:v2"},
        }
        assert results["bare"].warnings == [
            f"pod needs imagePullSecret {SECRET!r}, which cannot be added on UPDATE; "
            "recreate the pod so it can pull its private images"
        ]
        assert results["listed"].warnings == []
        # The update needed the secret, so it was written in the namespace.
        assert dockerconfig_of((await read_secret(api, app, SECRET)).ok()) == online_secret()


async def test_ephemeral_container_through_the_subresource_is_rewritten(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
) -> None:
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    priv, pub = registries["private"].domain, registries["public"].domain
    debugger = {
        "name": "debugger",
        "image": f"{priv}/team/secret:v1",
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePolicy": "File",
        "stdin": True,
        "tty": True,
    }

    async with (
        run_webhook(online_settings(registries, [app]), certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        # "public" got no pull secret at CREATE; "private" got it (its image is private).
        created = {
            "public": {"app": f"{pub}/team/app:v1"},
            "private": {"app": f"{PREFIX}{priv}/team/secret:v1"},
        }
        for name in created:
            image = f"{pub}/team/app:v1" if name == "public" else f"{priv}/team/secret:v1"
            assert (await create_pod(api, app, pod(name, {"app": image}))).ok()

        for name, images in created.items():
            path = f"/api/v1/namespaces/{app}/pods/{name}/ephemeralcontainers"
            current = (await call(api, "GET", path)).ok()
            assert current["kind"] == "EphemeralContainers"  # 1.20: not a Pod
            current["ephemeralContainers"] = [*(current.get("ephemeralContainers") or []), debugger]
            answer = await call(api, "PUT", path, current)
            assert answer.status == 200, answer.body

            stored = await read_pod(api, app, name)
            assert images_of(stored) == {**images, "debugger": f"{PREFIX}{priv}/team/secret:v1"}
            # Never added on the subresource; what CREATE wrote stays.
            expected_secrets = None if name == "public" else [{"name": SECRET}]
            assert stored["spec"].get("imagePullSecrets") == expected_secrets
            annotations = stored["metadata"].get("annotations") or {}
            if name == "public":
                assert ANNOTATION not in annotations
            else:  # the subresource leaves the record of CREATE as it was
                assert json.loads(annotations[ANNOTATION]) == {"app": f"{priv}/team/secret:v1"}
            # The 1.20 object does not show the pod's imagePullSecrets: the warning says so
            # rather than claiming the pod lacks the secret.
            assert answer.warnings == [
                f"pod needs imagePullSecret {SECRET!r} for these images; UPDATE of "
                "ephemeralcontainers can neither add it nor show whether the pod lists it: "
                "if not, recreate the pod"
            ]
        assert dockerconfig_of((await read_secret(api, app, SECRET)).ok()) == online_secret()


async def test_namespace_outside_namespaces_is_left_untouched(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
) -> None:
    app, other = f"app-{tag}", f"other-{tag}"
    # Both namespaces are sent to the webhook; only `app` is in `namespaces`.
    await namespaces(kube_apiserver, tag, app, other)
    priv = registries["private"].domain
    image = f"{priv}/team/secret:v1"

    async with (
        run_webhook(online_settings(registries, [app]), certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        before = pod_admissions_answered(hook, "CREATE", "allowed")

        answer = await create_pod(api, other, pod("outside", {"app": image}, init={"i": image}))
        assert answer.status == 201, answer.body
        # the webhook answered, and allowed it as is
        assert pod_admissions_answered(hook, "CREATE", "allowed") == before + 1

        stored = await read_pod(api, other, "outside")
        assert stored_view(stored) == {
            "images": {"i": image, "app": image},
            "imagePullSecrets": None,
            "original-images": None,
        }
        assert (await read_secret(api, other, SECRET)).status == 404

        # The covered namespace next door is mutated by the same webhook.
        assert (await create_pod(api, app, pod("inside", {"app": image}))).status == 201
        assert images_of(await read_pod(api, app, "inside")) == {"app": f"{PREFIX}{image}"}


# --- the secret's credentials pull through a license-checking proxy ----------------


def mirror(upstream: Registry, repository: str, tag: str, to: Registry, as_: str) -> str:
    """Copy an image, manifest bytes and blobs, as a pull-through proxy serves it.

    The manifest keeps its digest, so a pinned reference pulls through the copy too.
    """
    status, _, body = upstream.http(
        "GET", f"/v2/{repository}/manifests/{tag}", headers={"Accept": ALL_MANIFESTS}
    )
    assert status == 200, (status, body[:200])
    manifest = json.loads(body)
    for blob in [manifest["config"], *manifest["layers"]]:
        status, _, data = upstream.http("GET", f"/v2/{repository}/blobs/{blob['digest']}")
        assert status == 200
        assert to.push_blob(as_, data) == blob["digest"]
    return to.push_manifest(as_, tag, manifest)


def kubelet_pull(registries: dict[str, Registry], image: str, auth: str) -> tuple[int, str]:
    """GET the image's manifest as the runtime does: anonymously, then answer the challenge.

    The status and the ``Docker-Content-Digest`` of the authenticated request.
    """
    ref = parse_image(image)
    registry = registries[ref.domain]
    path = f"/v2/{ref.path}/manifests/{ref.reference}"
    accept = {"Accept": ALL_MANIFESTS}
    status, headers, _ = registry.http("GET", path, headers=accept, authenticate=False)
    assert status == 401, status
    assert headers["www-authenticate"].startswith("Basic "), headers
    status, headers, _ = registry.http(
        "GET", path, headers={**accept, "Authorization": f"Basic {auth}"}, authenticate=False
    )
    return status, headers.get("docker-content-digest", "")


@pytest.fixture(scope="module")
def license_registries(
    registries: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Stand-ins for the vendor's proxy and registry: each checks the license as they do.

    The proxy checks the password: it must be the license ID. The user may be
    ``LICENSE_ID`` (docs/design.md §3) or, for installs from before KOTS changed
    it, the license ID itself. A distribution registry whose htpasswd holds both
    users, each with the license ID as password, accepts exactly that. Each is on
    port 80 of its own loopback address, so that its host is a proxy domain with no
    port, and logs at debug level, where every authorized request names its user.
    The proxy holds the private upstream image at ``proxy/my-app/<upstream>/<path>``;
    the vendor registry an image of its own (both pushed as ``LICENSE_ID``).
    """
    private: Registry = registries["private"]
    users = {"LICENSE_ID": LICENSE, LICENSE: LICENSE}
    proxy, vendor = (
        Registry(tmp_path_factory.mktemp(name), auth="htpasswd", users=users, log_level="debug")
        for name in ("proxy", "vendor")
    )
    with proxy, vendor:
        proxied = f"proxy/my-app/{private.domain}/team/secret"
        yield {
            "proxy": proxy,
            "vendor": vendor,
            "proxied_digest": mirror(private, "team/secret", "v1", proxy, proxied),
            "vendor_digest": vendor.push_image("my-app/api", "1.0").digest,
        }


async def test_the_secret_the_webhook_writes_pulls_from_a_license_checking_proxy(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    license_registries: dict[str, Any],
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
) -> None:
    """A private image rewritten through the real API server pulls with the Secret written.

    The stored images and the stored Secret are all the kubelet has: it picks the
    credentials for each image's host from the ``.dockerconfigjson`` and sends them.
    """
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    private: Registry = registries["private"]
    proxy: Registry = license_registries["proxy"]
    vendor: Registry = license_registries["vendor"]
    digest = registries["private_digest"]
    assert license_registries["proxied_digest"] == digest
    settings = online_settings(
        registries, [app], proxyDomain=proxy.domain, registryDomain=vendor.domain
    )

    async with (
        run_webhook(settings, certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        manifest = pod(
            "pulls",
            {"app": f"{private.domain}/team/secret:v1", "api": f"{vendor.domain}/my-app/api:1.0"},
            init={"migrate": f"{private.domain}/team/secret@{digest}"},
        )
        answer = await create_pod(api, app, manifest)
        assert answer.status == 201 and answer.warnings == [], answer.body
        stored = await read_pod(api, app, "pulls")
        secret = (await read_secret(api, app, SECRET)).ok()

    proxied = f"{proxy.domain}/proxy/my-app/{private.domain}/team/secret"
    assert stored_view(stored)["images"] == {
        "migrate": f"{proxied}@{digest}",
        "app": f"{proxied}:v1",
        "api": f"{vendor.domain}/my-app/api:1.0",
    }
    assert stored["spec"]["imagePullSecrets"] == [{"name": SECRET}]
    dockerconfig = dockerconfig_of(secret)
    hosts = {proxy.domain: proxy, vendor.domain: vendor}
    expected = {
        "migrate": digest,
        "app": digest,
        "api": license_registries["vendor_digest"],
    }
    # The user is LICENSE_ID and the license ID the password, for both hosts.
    assert {
        host: base64.b64decode(entry["auth"]).decode()
        for host, entry in dockerconfig["auths"].items()
    } == {proxy.domain: f"LICENSE_ID:{LICENSE}", vendor.domain: f"LICENSE_ID:{LICENSE}"}
    for container, image in images_of(stored).items():
        auth = kubelet_credentials(image, dockerconfig)
        assert auth is not None, (image, sorted(dockerconfig["auths"]))
        assert kubelet_pull(hosts, image, auth) == (200, expected[container]), image
        # Another license as the password is refused, as the vendor's proxy refuses it.
        wrong = _b64(b"LICENSE_ID:2ViYxYAm4hPq3cZSZYKqzr2QwQy")
        assert kubelet_pull(hosts, image, wrong) == (401, ""), image

    # No request the webhook made (its probes) and none made with what it wrote
    # (the pulls) named the license ID as a user; the logs do name users.
    public: Registry = registries["public"]
    logged = [registry.user_names() for registry in (proxy, vendor, private, public)]
    assert all(LICENSE not in names for names in logged), logged
    assert "LICENSE_ID" in logged[0] and "LICENSE_ID" in logged[1], logged
    # The stand-ins accept what the proxy accepts from installs before the change.
    old_style = _b64(f"{LICENSE}:{LICENSE}".encode())
    assert kubelet_pull(hosts, f"{proxied}:v1", old_style) == (200, digest)
    assert LICENSE in proxy.user_names()  # which the search above would have found


# --- air gap --------------------------------------------------------------------


async def test_airgap_rewrites_to_the_local_registry_and_refuses_digests(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
    tmp_path: Path,
) -> None:
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    priv, pub = registries["private"].domain, registries["public"].domain
    digest = registries["private_digest"]
    password = tmp_path / "password"
    password.write_text("s3cret-airgap\n")
    settings = {
        **airgap_settings([app], "my-app", username="airgap-user", passwordFile=str(password)),
        "probe": {"insecureRegistries": [priv, pub]},
        "server": {"admissionDeadlineSeconds": 6},
    }
    local = f"{AIRGAP_REGISTRY}/my-app/"
    probes_before = len(registries["private"].requests()) + len(registries["public"].requests())

    async with (
        run_webhook(settings, certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag) as name,
    ):
        await wait_until_mutating(api, app)
        originals = {
            "web": f"{pub}/team/app:v1",
            "api": f"{VENDOR}/my-app/api:1.0",
            "proxied": f"{PREFIX}quay.io/my-org/api:v1.0.1",
            "hub": "nginx:1.25",
            "local": f"{local}tool:2",
        }
        manifest = pod("mixed", originals, init={"migrate": f"{priv}/team/secret:v1"})
        answer = await create_pod(api, app, manifest)
        assert answer.status == 201, answer.body
        assert stored_view(await read_pod(api, app, "mixed")) == {
            "images": {
                "migrate": f"{local}secret:v1",
                "web": f"{local}app:v1",
                "api": f"{local}api:1.0",
                "proxied": f"{local}api:v1.0.1",
                "hub": f"{local}nginx:1.25",
                "local": f"{local}tool:2",
            },
            "imagePullSecrets": [{"name": SECRET}],
            "original-images": {
                "migrate": f"{priv}/team/secret:v1",
                **{k: v for k, v in originals.items() if k != "local"},
            },
        }
        secret = (await read_secret(api, app, SECRET)).ok()
        assert secret["type"] == SECRET_TYPE
        assert dockerconfig_of(secret) == expected_dockerconfig(
            {AIRGAP_REGISTRY: ("airgap-user", "s3cret-airgap")}
        )

        for pinned in (f"{priv}/team/secret@{digest}", f"{pub}/team/app:v1@{digest}"):
            refused = await create_pod(api, app, pod("pinned", {"app": pinned}))
            assert refused.status == 403, refused.body
            assert refused.message == (
                f"admission webhook \"{name}\" denied the request: container 'app' image "
                f"'{pinned}' is pinned by digest, which air-gap mode cannot serve from the "
                f"local registry {AIRGAP_REGISTRY}: use a tag instead"
            )
            assert (await call(api, "GET", f"/api/v1/namespaces/{app}/pods/pinned")).status == 404

    # No registry is probed in air-gap mode.
    probes_after = len(registries["private"].requests()) + len(registries["public"].requests())
    assert probes_after == probes_before


async def test_airgap_without_registry_credentials_adds_no_pull_secret(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
) -> None:
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    settings = airgap_settings([app], "")
    async with (
        run_webhook(settings, certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        answer = await create_pod(api, app, pod("p", {"api": f"{VENDOR}/my-app/api:1.0"}))
        assert answer.status == 201 and answer.warnings == [], answer.body
        assert stored_view(await read_pod(api, app, "p")) == {
            "images": {"api": f"{AIRGAP_REGISTRY}/api:1.0"},  # empty airgap.namespace
            "imagePullSecrets": None,
            "original-images": {"api": f"{VENDOR}/my-app/api:1.0"},
        }
        assert (await read_secret(api, app, SECRET)).status == 404


# --- the pull secret: stale content, license change --------------------------------


def license_as_user_dockerconfig() -> dict[str, Any]:
    """What earlier versions wrote: the license ID as user name as well as password."""
    return expected_dockerconfig({PROXY: (LICENSE, LICENSE), VENDOR: (LICENSE, LICENSE)})


@pytest.mark.parametrize("stale", ["old-license", "license-as-user", "opaque"])
async def test_stale_pull_secret_is_replaced_before_the_pod_is_admitted(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
    stale: str,
) -> None:
    """A stale secret of that name is brought current.

    Stale: another license, the license ID as user (what earlier versions wrote),
    or another type.
    """
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    if stale == "old-license":
        old_content = json.dumps(online_secret("old-license")).encode()
        existing = {"type": SECRET_TYPE, "data": {".dockerconfigjson": _b64(old_content)}}
    elif stale == "license-as-user":
        old_content = json.dumps(license_as_user_dockerconfig()).encode()
        existing = {"type": SECRET_TYPE, "data": {".dockerconfigjson": _b64(old_content)}}
    else:  # `type` is immutable: this one cannot simply be replaced
        existing = {"type": "Opaque", "data": {"token": _b64(b"left over")}}
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, **existing}
    before = (await call(api, "POST", f"/api/v1/namespaces/{app}/secrets", manifest)).ok()

    async with (
        run_webhook(online_settings(registries, [app]), certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        answer = await create_pod(api, app, pod("p", {"api": "quay.io/my-org/api:v1"}))
        assert answer.status == 201, answer.body
        assert answer.warnings == []
        secret = (await read_secret(api, app, SECRET)).ok()
        assert secret["type"] == SECRET_TYPE
        assert list(secret["data"]) == [".dockerconfigjson"]
        assert dockerconfig_of(secret) == online_secret()
        same_object = secret["metadata"]["uid"] == before["metadata"]["uid"]
        assert same_object is (stale != "opaque")  # updated in place, else recreated


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _mount_license(directory: Path, license_id: str, generation: int) -> None:
    """Write the license the way the kubelet updates a mounted Secret: a symlink swap."""
    data = directory / f"..2024_01_01_00_00_0{generation}"
    data.mkdir()
    (data / "id").write_text(license_id)
    staging = directory / "..data_tmp"
    staging.symlink_to(data.name)
    staging.replace(directory / "..data")
    if not (directory / "id").is_symlink():
        (directory / "id").symlink_to("..data/id")


async def test_service_keeps_the_secret_current_across_a_license_change(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    tag: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """secrets=None: the service builds PullSecrets from KUBECONFIG and runs its loop."""
    caplog.set_level(logging.DEBUG, logger="webhook")
    app, extra = f"app-{tag}", f"extra-{tag}"
    await namespaces(kube_apiserver, tag, app, extra)
    # A secret left from an earlier license in the additional namespace.
    stale = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": SECRET_TYPE,
        "data": {".dockerconfigjson": "eyJhdXRocyI6e319"},  # {"auths":{}}
    }
    (await call(api, "POST", f"/api/v1/namespaces/{extra}/secrets", stale)).ok()

    license_dir = tmp_path / "license"
    license_dir.mkdir()
    _mount_license(license_dir, "license-one", 1)
    monkeypatch.setenv("KUBECONFIG", str(kube_apiserver.kubeconfig_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(pullsecrets, "CREDENTIALS_POLL_SECONDS", 0.2)
    settings = online_settings(registries, [app, extra])
    del settings["licenseID"]
    settings["licenseIDFile"] = str(license_dir / "id")

    async def holds(license_id: str) -> bool:
        for namespace in (app, extra):
            answer = await read_secret(api, namespace, SECRET)
            if answer.status != 200 or dockerconfig_of(answer.body) != online_secret(license_id):
                return False
        return True

    async with (
        run_webhook(settings, certs) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        assert isinstance(hook.admitter.secrets, pullsecrets.PullSecrets)
        # Written in every listed namespace at start, the stale one replaced, no Pod needed.
        await eventually(lambda: holds("license-one"), what="secrets with license-one")

        await wait_until_mutating(api, app)
        assert (await create_pod(api, app, pod("before", {"a": "quay.io/my-org/a:1"}))).ok()

        _mount_license(license_dir, "license-two", 2)
        await eventually(lambda: holds("license-two"), what="secrets with license-two")
        for namespace in (app, extra):
            secret = (await read_secret(api, namespace, SECRET)).ok()
            assert secret["type"] == SECRET_TYPE

        answer = await create_pod(api, app, pod("after", {"a": "quay.io/my-org/a:1"}))
        assert answer.status == 201 and answer.warnings == [], answer.body
        assert (await read_pod(api, app, "after"))["spec"]["imagePullSecrets"] == [{"name": SECRET}]

    # The license ID is never logged (docs/design.md §3), in any form the secret holds.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("webhook"))
    # Logged instead: the stale secret replaced at start, then both after the change.
    assert logged.count(f"updated pull secret {SECRET} in ") == 3, logged
    for license_id in ("license-one", "license-two"):
        auth = _b64(f"LICENSE_ID:{license_id}".encode())
        assert license_id not in logged and auth not in logged


async def secret_events(
    api: k8s.ApiClient, namespace: str, since: str, until: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """(type, uid, decoded .dockerconfigjson) of each change to the pull secret.

    From the API server's own history: a watch from resourceVersion ``since``,
    read up to the event at ``until``.
    """
    events = []
    core = k8s.CoreV1Api(api)
    async with asyncio.timeout(30), watch.Watch() as w:
        async for event in w.stream(
            core.list_namespaced_secret,
            namespace,
            field_selector=f"metadata.name={SECRET}",
            resource_version=since,
            timeout_seconds=25,
        ):
            secret = event["raw_object"]
            events.append((event["type"], secret["metadata"]["uid"], dockerconfig_of(secret)))
            if secret["metadata"]["resourceVersion"] == until:
                break
    return events


async def test_upgrade_rewrites_an_earlier_versions_secret_in_place(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    tag: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cluster holding the secret an earlier version wrote (the license ID as user).

    The new version, started as ``serve`` starts it, rewrites that secret in every
    covered namespace without a Pod being created: the same object, updated in
    place, so the namespace holds a secret at every moment.
    """
    app, extra = f"app-{tag}", f"extra-{tag}"
    await namespaces(kube_apiserver, tag, app, extra)
    earlier = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SECRET,
            "labels": {"app.kubernetes.io/managed-by": "image-proxy-webhook"},
        },
        "type": SECRET_TYPE,
        "data": {".dockerconfigjson": _b64(json.dumps(license_as_user_dockerconfig()).encode())},
    }
    before = {
        namespace: (
            await call(api, "POST", f"/api/v1/namespaces/{namespace}/secrets", earlier)
        ).ok()
        for namespace in (app, extra)
    }
    monkeypatch.setenv("KUBECONFIG", str(kube_apiserver.kubeconfig_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def rewritten() -> bool:
        for namespace in (app, extra):
            answer = await read_secret(api, namespace, SECRET)
            if dockerconfig_of(answer.ok()) != online_secret():
                return False
        return True

    async with (
        run_webhook(online_settings(registries, [app, extra]), certs) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await eventually(rewritten, what="the earlier version's secrets rewritten")
        await wait_until_mutating(api, app)
        answer = await create_pod(api, app, pod("after", {"a": "quay.io/my-org/a:1"}))
        assert answer.status == 201 and answer.warnings == [], answer.body
        assert (await read_pod(api, app, "after"))["spec"]["imagePullSecrets"] == [{"name": SECRET}]

    for namespace in (app, extra):
        old = before[namespace]["metadata"]
        now = (await read_secret(api, namespace, SECRET)).ok()
        assert now["metadata"]["uid"] == old["uid"]
        assert int(now["metadata"]["resourceVersion"]) > int(old["resourceVersion"])
        assert now["type"] == SECRET_TYPE and list(now["data"]) == [".dockerconfigjson"]
        # Every change since: a modification of that object to the new content.
        # A delete, or a create of another object, would be a moment without one.
        events = await secret_events(
            api, namespace, old["resourceVersion"], now["metadata"]["resourceVersion"]
        )
        assert events == [("MODIFIED", old["uid"], online_secret())], events


async def test_reconcile_after_license_change_rewrites_every_namespace(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    tag: str,
    tmp_path: Path,
) -> None:
    """The refresh/reconcile path itself, against the real API server."""
    app, extra, outside = f"app-{tag}", f"extra-{tag}", f"outside-{tag}"
    await namespaces(kube_apiserver, tag, app, extra, outside)
    license_file = tmp_path / "id"
    license_file.write_text("first-license\n")
    settings = Settings(
        app_slug="my-app", license_id_file=str(license_file), namespaces=(app, extra)
    )
    async with kube_apiserver.api_client() as client:
        manager = pullsecrets.PullSecrets(
            client, settings, lambda: pullsecrets.read_credentials(settings)
        )
        try:
            assert await manager.reconcile() == 0
            for namespace in (app, extra):
                secret = (await read_secret(api, namespace, SECRET)).ok()
                assert dockerconfig_of(secret) == online_secret("first-license")
            assert (await read_secret(api, outside, SECRET)).status == 404

            assert manager.refresh() is False  # unchanged file: nothing to do
            license_file.write_text("second-license\n")
            assert manager.refresh() is True
            assert await manager.reconcile() == 0
            for namespace in (app, extra):
                secret = (await read_secret(api, namespace, SECRET)).ok()
                assert secret["type"] == SECRET_TYPE
                assert dockerconfig_of(secret) == online_secret("second-license")
            assert manager.healthy
        finally:
            await manager.close()


async def test_reconcile_restores_a_secret_deleted_or_changed_in_the_cluster(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    tag: str,
) -> None:
    """A reconcile lists the cluster, not what it remembers writing."""
    app, extra = f"app-{tag}", f"extra-{tag}"
    await namespaces(kube_apiserver, tag, app, extra)
    settings = Settings(app_slug="my-app", license_id=LICENSE, namespaces=(app, extra))
    async with kube_apiserver.api_client() as client:
        manager = pullsecrets.PullSecrets(
            client, settings, lambda: pullsecrets.read_credentials(settings)
        )
        try:
            assert await manager.reconcile() == 0
            # Someone deletes one secret and edits the other.
            path = f"/api/v1/namespaces/{app}/secrets/{SECRET}"
            assert (await call(api, "DELETE", path)).status == 200
            edited = (await read_secret(api, extra, SECRET)).ok()
            edited["data"] = {".dockerconfigjson": _b64(b'{"auths":{}}')}
            path = f"/api/v1/namespaces/{extra}/secrets/{SECRET}"
            (await call(api, "PUT", path, edited)).ok()

            assert await manager.reconcile() == 0
            for namespace in (app, extra):
                secret = (await read_secret(api, namespace, SECRET)).ok()
                assert dockerconfig_of(secret) == online_secret()
        finally:
            await manager.close()


# --- failurePolicy ------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["Ignore", "Fail"])
async def test_failure_policy_when_the_webhook_is_down(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
    policy: str,
) -> None:
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    image = "quay.io/my-org/api:v1.0.1"
    port = free_port()
    settings = online_settings(registries, [app])
    settings["server"]["port"] = port
    assert certs.ca_file is not None
    ca_bundle = base64.b64encode(certs.ca_file.read_bytes()).decode()
    url = f"https://127.0.0.1:{port}/mutate"

    async with mutating_webhook(
        api, url=url, ca_bundle=ca_bundle, selector=tag, failure_policy=policy
    ) as name:
        async with run_webhook(settings, certs, secrets=admin_secrets):
            # Registered and in effect while the webhook is up ...
            await wait_until_mutating(api, app)
        # ... then the webhook goes down: nothing listens on its port any more.
        answer = await create_pod(api, app, pod("while-down", {"app": image}))
        if policy == "Ignore":
            assert answer.status == 201, answer.body
            assert answer.body["spec"]["containers"][0]["image"] == image
            assert stored_view(await read_pod(api, app, "while-down")) == {
                "images": {"app": image},
                "imagePullSecrets": None,
                "original-images": None,
            }
        else:
            assert answer.status == 500, answer.body
            assert answer.message.startswith(
                f'Internal error occurred: failed calling webhook "{name}": '
            ), answer.message
            assert "connection refused" in answer.message
            path = f"/api/v1/namespaces/{app}/pods/while-down"
            assert (await call(api, "GET", path)).status == 404
    assert (await read_secret(api, app, SECRET)).status == 404


# --- Kubernetes API faults while admitting ----------------------------------------

DEADLINE = 2.0
SLACK = 1.5


@pytest.mark.parametrize("fault", ["refused", "unresponsive", "forbidden"])
async def test_pod_admitted_with_a_warning_when_the_api_server_fails_the_secret(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    registries: dict[str, Any],
    certs: pki.CertPaths,
    tag: str,
    fault: str,
) -> None:
    """PullSecrets talks to a broken API; the Pod still gets its answer within the deadline.

    The Pods themselves go through the real API server, which calls the webhook;
    only the webhook's own client for the secret meets the fault.
    """
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    async with contextlib.AsyncExitStack() as stack:
        if fault == "refused":
            secrets_api = client_for(
                f"https://127.0.0.1:{free_port()}", ca_file=kube_apiserver.ca_file
            )
            expected = (
                f"pull secret {SECRET!r} could not be written in {app}: "
                "the API server could not be reached (ClientConnectorError)"
            )
        elif fault == "unresponsive":
            silent = await stack.enter_async_context(UnresponsiveKubeAPIServer())
            secrets_api = client_for(silent.url, ca_file=kube_apiserver.ca_file)
            expected = (
                f"pull secret {SECRET!r} in {app} not confirmed before the admission deadline; "
                "the pod may fail to pull private images until it is written"
            )
        else:
            # A real identity that may read secrets but not create them.
            secrets_api = await restricted_client(
                kube_apiserver,
                app,
                "webhook",
                [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
            )
            expected = (
                f"pull secret {SECRET!r} could not be written in {app}: "
                "the API server answered 403 Forbidden"
            )
        stack.push_async_callback(secrets_api.close)

        def make(settings: Settings) -> pullsecrets.PullSecrets:
            return pullsecrets.PullSecrets(
                secrets_api, settings, lambda: pullsecrets.read_credentials(settings)
            )

        settings = online_settings(registries, [app])
        settings["server"] = {"admissionDeadlineSeconds": DEADLINE}
        hook = await stack.enter_async_context(run_webhook(settings, certs, secrets=make))
        await stack.enter_async_context(
            mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag)
        )
        await wait_until_mutating(api, app)

        for name in ("first", "second"):
            answer = await create_pod(api, app, pod(name, {"api": "quay.io/my-org/api:v1"}))
            assert answer.status == 201, answer.body
            assert answer.warnings == [expected]
            assert answer.seconds < DEADLINE + SLACK, answer.seconds
            if fault == "unresponsive":
                assert answer.seconds >= DEADLINE - 0.5, answer.seconds  # it did wait
            assert stored_view(await read_pod(api, app, name)) == {
                "images": {"api": f"{PREFIX}quay.io/my-org/api:v1"},
                "imagePullSecrets": [{"name": SECRET}],
                "original-images": {"api": "quay.io/my-org/api:v1"},
            }
        if fault == "unresponsive":
            assert silent.connections >= 1
        # Nothing reached the real API server's secrets.
        assert (await read_secret(api, app, SECRET)).status == 404


# --- namespaces: ["*"] ----------------------------------------------------------------


async def test_all_namespaces_secret_follows_new_namespaces(tmp_path: Path) -> None:
    """``namespaces: ["*"]`` writes the secret everywhere, including namespaces made later.

    It runs against an API server of its own: on the shared one it would write into
    every other test's namespaces.
    """
    found = find_binaries()
    if isinstance(found, str):
        unavailable(f"e2e: {found}")
    kube = KubeAPIServer(binary=found[0], etcd_binary=found[1])
    await asyncio.to_thread(kube.start)
    try:
        await kube.create_namespace("existing")
        await kube.create_namespace("webhook-home")
        settings = Settings(app_slug="my-app", license_id=LICENSE, namespaces=("*",))
        async with kube.api_client() as api, kube.api_client() as manager_api:
            manager = pullsecrets.PullSecrets(
                manager_api,
                settings,
                lambda: pullsecrets.read_credentials(settings),
                webhook_namespace="webhook-home",
            )
            loop = asyncio.create_task(manager.run())
            try:

                async def written(*names: str) -> bool:
                    for name in names:
                        answer = await read_secret(api, name, SECRET)
                        if answer.status != 200 or dockerconfig_of(answer.body) != online_secret():
                            return False
                    return True

                await eventually(lambda: written("existing", "default"), what="initial secrets")
                # A namespace created afterwards is picked up by the watch.
                await kube.create_namespace("created-later")
                await eventually(lambda: written("created-later"), timeout=10, what="watch")
                secret = (await read_secret(api, "created-later", SECRET)).ok()
                assert secret["type"] == SECRET_TYPE
                # Never in kube-system, nor in the webhook's own namespace.
                assert (await read_secret(api, "kube-system", SECRET)).status == 404
                assert (await read_secret(api, "webhook-home", SECRET)).status == 404
                assert manager.healthy
            finally:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
                await manager.close()
    finally:
        await asyncio.to_thread(kube.stop)


# --- UPDATE of Pods that exist: only what the request changes is decided -----------------

MERGE_PATCH = "application/merge-patch+json"
# What controllers and users send to running Pods: labels, then a finalizer on and off.
METADATA_UPDATES: list[dict[str, Any]] = [
    {"metadata": {"labels": {"touched": "yes"}}},
    {"metadata": {"finalizers": ["example.com/hold"]}},
    {"metadata": {"finalizers": None}},
]


def pod_admissions_answered(hook: Any, operation: str, outcome: str) -> float:
    """How many Pod requests of this operation the webhook answered on /mutate with this
    outcome (its Prometheus counter)."""
    metrics = hook.admitter.metrics
    assert metrics is not None
    labels = {"endpoint": "mutate", "operation": operation, "kind": "Pod", "outcome": outcome}
    value = metrics.registry.get_sample_value(
        "image_proxy_webhook_admission_requests_total", labels
    )
    return value or 0.0


async def assert_metadata_updates_pass_unchanged(
    api: k8s.ApiClient, hook: Any, namespace: str, name: str
) -> None:
    """Label and finalizer PATCHes of a Pod reach the webhook and store no other change."""
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    before = stored_view(await read_pod(api, namespace, name))
    answered = pod_admissions_answered(hook, "UPDATE", "allowed")
    for change in METADATA_UPDATES:
        answer = await call(api, "PATCH", path, change, content_type=MERGE_PATCH)
        assert answer.status == 200, (change, answer.body)
        assert answer.warnings == [], change
        assert stored_view(answer.body) == before, change
    stored = await read_pod(api, namespace, name)
    assert stored["metadata"]["labels"] == {"touched": "yes"}
    assert "finalizers" not in stored["metadata"]
    # The webhook was asked each time, and allowed each update as it was.
    assert pod_admissions_answered(hook, "UPDATE", "allowed") == answered + len(METADATA_UPDATES)


async def put_image(api: k8s.ApiClient, namespace: str, name: str, image: str) -> Answer:
    """Change the first container's image with a PUT of the whole Pod."""
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    current = (await call(api, "GET", path)).ok()
    current["spec"]["containers"][0]["image"] = image
    return await call(api, "PUT", path, current)


async def test_metadata_updates_of_existing_pods_pass_while_their_registry_cannot_be_probed(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
) -> None:
    """Online, onProbeFailure: proxy (the default). A Pod created before the webhook was
    registered is how a running workload looks to it; rewriting its unchanged image on a
    label update would restart the container without the pull secret."""
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    require_low_ports()
    dead = free_loopback_address()  # nothing listens on its port 80: every probe fails
    image, setup = f"{dead}/team/app:v1", f"{dead}/team/setup:v1"
    running = pod("running", {"app": image}, init={"setup": setup})
    assert (await create_pod(api, app, running)).status == 201  # no webhook yet
    settings = {
        "licenseID": LICENSE,
        "namespaces": [app],
        "visibility": {"overrides": [PROBE_OVERRIDE]},
        "probe": {"insecureRegistries": [dead], "timeoutSeconds": 2},
        "server": {"admissionDeadlineSeconds": 6},
    }

    async with (
        run_webhook(settings, certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        # Created now, the same Pod would be proxied: its registry cannot be probed.
        fresh = await create_pod(api, app, pod("fresh", {"app": image}), dry_run=True)
        assert fresh.body["spec"]["containers"][0]["image"] == f"{PREFIX}{image}"

        await assert_metadata_updates_pass_unchanged(api, hook, app, "running")
        assert stored_view(await read_pod(api, app, "running")) == {
            "images": {"setup": setup, "app": image},
            "imagePullSecrets": None,
            "original-images": None,
        }

        # An image the update changes is decided: proxied, without adding the secret.
        answer = await put_image(api, app, "running", f"{dead}/team/app:v2")
        assert answer.status == 200, answer.body
        assert stored_view(answer.body) == {
            "images": {"setup": setup, "app": f"{PREFIX}{dead}/team/app:v2"},
            "imagePullSecrets": None,
            "original-images": {"app": f"{dead}/team/app:v2"},
        }
        assert answer.warnings == [
            f"pod needs imagePullSecret {SECRET!r}, which cannot be added on UPDATE; "
            "recreate the pod so it can pull its private images"
        ]


async def test_metadata_updates_of_an_existing_digest_pinned_pod_pass_in_air_gap(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    certs: pki.CertPaths,
    admin_secrets: Any,
    tag: str,
) -> None:
    """Air gap refuses digest-pinned images; refusing a finalizer removal on a Pod that
    existed before the webhook would block controllers and deletion."""
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    pinned = f"quay.io/my-org/api@sha256:{'ab' * 32}"
    assert (await create_pod(api, app, pod("pinned", {"api": pinned}))).status == 201
    settings = airgap_settings([app], "my-app")

    async with (
        run_webhook(settings, certs, secrets=admin_secrets) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag) as name,
    ):
        await wait_until_mutating(api, app)
        refused = await create_pod(api, app, pod("again", {"api": pinned}), dry_run=True)
        assert refused.status == 403, refused.body  # as a new Pod it is refused

        await assert_metadata_updates_pass_unchanged(api, hook, app, "pinned")
        assert images_of(await read_pod(api, app, "pinned")) == {"api": pinned}

        answer = await put_image(api, app, "pinned", f"quay.io/my-org/api@sha256:{'cd' * 32}")
        assert answer.status == 403, answer.body
        assert answer.message.startswith(f'admission webhook "{name}" denied the request: ')
        answer = await put_image(api, app, "pinned", "quay.io/my-org/api:v2")
        assert answer.status == 200, answer.body
        assert stored_view(answer.body) == {
            "images": {"api": f"{AIRGAP_REGISTRY}/my-app/api:v2"},
            "imagePullSecrets": None,  # the local registry needs no credentials
            "original-images": {"api": "quay.io/my-org/api:v2"},
        }
        assert answer.warnings == []
