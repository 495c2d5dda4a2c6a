"""The chart's RBAC grants what the code uses and nothing more.

The chart is installed with real Helm into a kube-apiserver of its own that writes
an audit log of every request made by a ServiceAccount. The webhook's pull-secret
manager (``webhook.pullsecrets.PullSecrets``, with its background loop: list and
watch the pull secret by name, in each covered namespace or, for ``["*"]``, in all of
them with the namespaces) then runs as the chart's ServiceAccount, with a real token
from the TokenRequest API, on the config the release stored. Each namespace starts in
one of the states the code handles: no secret (create), a stale one (update), one of
another type (delete and create), a current one (nothing).

With the default ``tls.mode: selfManaged`` the code of ``webhook.selfcerts`` runs first
as the same identity: it creates its certificate Secret, sets the caBundle of the
webhook configuration and updates the Secret once.

Proved for ``namespaces: ["*"]`` and for a list of namespaces:
- every request the code made was allowed (no 403 in the audit log), and the secrets
  are current everywhere they should be;
- every permission the chart grants was used by at least one of those requests
  (the audit log is the record of use), so nothing is granted beyond what the code
  uses;
- permissions the code does not need are refused (SelfSubjectAccessReview, and a real
  call for some): other secrets, listing or deleting secrets in general, namespaces
  not covered, anything else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s

from tests.e2e.admission_harness import call, dockerconfig_of, read_secret
from tests.e2e.chart_release import (
    HelmRelease,
    can,
    local_config,
    materialize_pod,
    namespace,
    require_helm,
    service_account_token,
    token_client,
)
from tests.e2e.kubeapi import KubeAPIServer, require_binaries
from tests.support import eventually
from webhook import config, pki, pullsecrets, selfcerts

pytestmark = [pytest.mark.e2e, pytest.mark.chart, pytest.mark.asyncio(loop_scope="module")]

LICENSE = "rbac-e2e-license"
SECRET = "my-app-registry"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


@dataclass
class Audited:
    kube: KubeAPIServer
    log: Path

    def entries(self, username: str) -> list[dict[str, Any]]:
        """The requests of ``username``, one entry each (the last stage logged)."""
        by_id: dict[str, dict[str, Any]] = {}
        for line in self.log.read_text().splitlines():
            event = json.loads(line)
            if event["user"]["username"] == username:
                by_id[event["auditID"]] = event
        return list(by_id.values())


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    """A kube-apiserver of this module's own, logging every ServiceAccount's requests."""
    apiserver, etcd = require_binaries()
    require_helm()
    work = tmp_path_factory.mktemp("audit")
    policy = work / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    log = work / "audit.log"
    server = KubeAPIServer(
        binary=apiserver,
        etcd_binary=etcd,
        extra_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ],
    )
    server.start()
    try:
        yield Audited(server, log)
    finally:
        server.stop()


# --- the RBAC the release stored, as permissions ---------------------------------------

Permission = tuple[str, str, str, str]  # (resource, verb, resourceName or "*", namespace or "*")


def granted(release: HelmRelease) -> set[Permission]:
    """Every (resource, verb, name, namespace) the release's Roles and ClusterRoles grant
    to its ServiceAccount, through the bindings it stored."""
    account = release.one("ServiceAccount")["metadata"]["name"]
    subject = {"kind": "ServiceAccount", "name": account, "namespace": release.namespace}
    roles = {
        (doc["kind"], doc["metadata"].get("namespace", "*"), doc["metadata"]["name"]): doc
        for doc in release.all("Role") + release.all("ClusterRole")
    }
    result: set[Permission] = set()
    for binding in release.all("RoleBinding") + release.all("ClusterRoleBinding"):
        assert binding["subjects"] == [subject], binding
        where = binding["metadata"].get("namespace", "*")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], where if ref["kind"] == "Role" else "*", ref["name"])]
        for rule in role["rules"]:
            # Resource names are unique across these two groups.
            assert rule["apiGroups"] in ([""], ["admissionregistration.k8s.io"]), rule
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or ["*"]:
                        result.add((resource, verb, name, where))
    return result


def used_by(permission: Permission, entry: dict[str, Any]) -> bool:
    resource, verb, name, where = permission
    ref = entry.get("objectRef") or {}
    return (
        entry["verb"] == verb
        and ref.get("resource") == resource
        and not ref.get("subresource")
        and name in ("*", ref.get("name"))
        and where in ("*", ref.get("namespace"))
    )


def describe(entry: dict[str, Any]) -> str:
    ref = entry.get("objectRef") or {}
    return (
        f"{entry['verb']} {ref.get('resource')} {ref.get('namespace', '')}/{ref.get('name', '')}"
        f" -> {entry.get('responseStatus', {}).get('code')}"
    )


# --- running the code as the chart's identity ----------------------------------------------


def secret(name: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    key = ".dockerconfigjson" if kind == "kubernetes.io/dockerconfigjson" else "config"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": kind,
        "metadata": {"name": name},
        "data": {key: base64.b64encode(json.dumps(payload).encode()).decode()},
    }


STALE = secret(SECRET, "kubernetes.io/dockerconfigjson", {"auths": {"old": {"auth": "eA=="}}})
WRONG_TYPE = secret(SECRET, "Opaque", {"not": "a pull secret"})
UNRELATED = secret("unrelated", "Opaque", {"belongs": "to someone else"})


async def seed(admin: k8s.ApiClient, ns: str, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        (await call(admin, "POST", f"/api/v1/namespaces/{ns}/secrets", body)).ok()


async def is_current(admin: k8s.ApiClient, ns: str) -> bool:
    answer = await read_secret(admin, ns, SECRET)
    if answer.status != 200 or answer.body["type"] != "kubernetes.io/dockerconfigjson":
        return False
    auths = dockerconfig_of(answer.body)["auths"]
    return set(auths) == {"proxy.replicated.com", "registry.replicated.com"}


@dataclass
class Identity:
    """The pull-secret manager running as the chart's ServiceAccount."""

    api: k8s.ApiClient  # acting as the ServiceAccount
    manager: pullsecrets.PullSecrets
    username: str
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.manager.close()


async def self_managed_certificates(
    api: k8s.ApiClient, settings: config.Settings, namespace: str, audited: Audited, username: str
) -> None:
    """tls.mode selfManaged (the default): what webhook/selfcerts.py does at start (create
    the certificate Secret, set the caBundle), then a reissue for a changed name (an
    update of the Secret), and the watch of the webhook configurations until its first
    event has been acted on (one more read of the configuration)."""
    tls_settings = settings.self_managed_tls
    assert tls_settings is not None
    paths = pki.CertPaths(Path(settings.server.cert_file), Path(settings.server.key_file))
    certs = selfcerts.SelfManagedTLS(api, tls_settings, namespace, paths)
    await certs.sync()
    certs.settings = dataclasses.replace(
        tls_settings, dns_names=(*tls_settings.dns_names, "renamed.example")
    )
    await certs.sync()

    def reads() -> int:
        return sum(
            e["verb"] == "get"
            and e.get("objectRef", {}).get("resource") == "mutatingwebhookconfigurations"
            for e in audited.entries(username)
        )

    before = reads()
    watch = asyncio.create_task(certs.watch_configurations())

    async def acted_on() -> bool:
        return reads() > before

    try:
        await eventually(acted_on, timeout=15, what="the watch's first event")
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


@contextlib.asynccontextmanager
async def chart_identity(
    audited: Audited, tmp_path: Path, release: HelmRelease
) -> AsyncIterator[Identity]:
    """PullSecrets on the release's stored config, as its ServiceAccount, loop running;
    with the default tls.mode, the self-managed certificate first."""
    kube = audited.kube
    root = tmp_path / "pod"
    container = await materialize_pod(kube, release, root)
    settings = config.parse(local_config(root, container))
    account = release.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    token = await service_account_token(kube, release.namespace, account)
    username = f"system:serviceaccount:{release.namespace}:{account}"
    async with token_client(kube, token) as api:
        if settings.self_managed_tls is not None:
            await self_managed_certificates(
                api,
                settings,
                release.namespace,
                audited,
                f"system:serviceaccount:{release.namespace}:{account}",
            )
        manager = pullsecrets.PullSecrets(
            api,
            settings,
            lambda: pullsecrets.read_credentials(settings),
            webhook_namespace=release.namespace,  # POD_NAMESPACE
        )
        identity = Identity(
            api,
            manager,
            username,
            asyncio.create_task(manager.run(), name="pull-secrets"),
        )
        try:
            yield identity
        finally:
            await identity.stop()


def unused_grants(audited: Audited, release: HelmRelease, username: str) -> list[str]:
    """Problems with the release's RBAC against the audit log: refused requests, and
    granted rules no request used."""
    entries = audited.entries(username)
    problems = [
        f"refused: {describe(e)}" for e in entries if e.get("responseStatus", {}).get("code") == 403
    ]
    # A Role repeats the same rules in every covered namespace: a rule counts as
    # used when the code used it in one of the namespaces that grant it.
    where_granted: dict[tuple[str, str, str], set[str]] = {}
    for resource, verb, name, where in granted(release):
        where_granted.setdefault((resource, verb, name), set()).add(where)
    problems += sorted(
        f"granted but never used: {rule}"
        for rule, wheres in where_granted.items()
        if not any(used_by((*rule, where), e) for where in wheres for e in entries)
    )
    return problems


async def assert_exact(audited: Audited, release: HelmRelease, username: str) -> None:
    """Every request allowed, every grant used.

    A watch reaches the audit log when it ends, a moment after the client closed it,
    so the log is read again for a while before the verdict.
    """

    async def exact() -> bool:
        return not unused_grants(audited, release, username)

    with contextlib.suppress(AssertionError):
        await eventually(exact, timeout=15, what="the audit log")
    problems = unused_grants(audited, release, username)
    made = sorted({describe(e) for e in audited.entries(username)})
    assert problems == [], f"{problems}; requests made: {made}"


async def refused(api: k8s.ApiClient, *checks: tuple[str, str, str, str]) -> None:
    for verb, resource, ns, name in checks:
        assert not await can(api, verb, resource, ns, name), (verb, resource, ns, name)


# --- tests -------------------------------------------------------------------------------


async def wait_current(admin: k8s.ApiClient, *namespaces: str) -> None:
    for ns in namespaces:

        async def current(ns: str = ns) -> bool:
            return await is_current(admin, ns)

        await eventually(current, what=f"a current pull secret in {ns}")


async def test_all_namespaces(audited: Audited, tmp_path: Path) -> None:
    kube = audited.kube
    tag = uuid.uuid4().hex[:6]
    system = await namespace(kube, f"ipw-all-{tag}")
    fresh = await namespace(kube, f"fresh-{tag}")
    stale = await namespace(kube, f"stale-{tag}")
    wrong = await namespace(kube, f"wrong-{tag}")
    release = HelmRelease(kube, f"all-{tag}", system)
    await release.install({"appSlug": "my-app", "license": {"id": LICENSE}, "namespaces": ["*"]})
    async with kube.api_client() as admin:
        await seed(admin, stale, STALE, UNRELATED)
        await seed(admin, wrong, WRONG_TYPE)
        async with chart_identity(audited, tmp_path, release) as identity:
            await wait_current(admin, fresh, stale, wrong)
            # A namespace created later gets the secret through the watch.
            later = await namespace(kube, f"later-{tag}")
            await wait_current(admin, later)
            await identity.stop()

            await assert_exact(audited, release, identity.username)

            # Nothing beyond the pull secret, even with every namespace covered.
            await refused(
                identity.api,
                ("get", "secrets", stale, "unrelated"),
                ("update", "secrets", stale, "unrelated"),
                ("patch", "secrets", stale, SECRET),
                ("delete", "secrets", stale, "unrelated"),
                ("list", "secrets", stale, ""),
                ("watch", "secrets", "", ""),
                ("deletecollection", "secrets", stale, ""),
                ("get", "configmaps", system, ""),
                ("create", "pods", fresh, ""),
                ("get", "namespaces", "", fresh),
                ("delete", "namespaces", "", fresh),
                ("update", "namespaces", "", fresh),
            )
            answer = await call(
                identity.api, "DELETE", f"/api/v1/namespaces/{stale}/secrets/unrelated"
            )
            assert answer.status == 403, answer.body
        assert (await read_secret(admin, stale, "unrelated")).status == 200
        # The webhook's own namespace and kube-system never get the secret.
        assert (await read_secret(admin, system, SECRET)).status == 404
        assert (await read_secret(admin, "kube-system", SECRET)).status == 404
    await release.uninstall()


async def test_listed_namespaces(audited: Audited, tmp_path: Path) -> None:
    kube = audited.kube
    tag = uuid.uuid4().hex[:6]
    system = await namespace(kube, f"ipw-list-{tag}")
    stale = await namespace(kube, f"app-{tag}")
    wrong = await namespace(kube, f"extra-{tag}")
    fresh = await namespace(kube, f"more-{tag}")
    outside = await namespace(kube, f"outside-{tag}")
    release = HelmRelease(kube, f"list-{tag}", system)
    await release.install(
        {"appSlug": "my-app", "license": {"id": LICENSE}, "namespaces": [stale, wrong, fresh]}
    )
    async with kube.api_client() as admin:
        await seed(admin, stale, STALE, UNRELATED)
        await seed(admin, wrong, WRONG_TYPE)
        await seed(admin, outside, STALE)
        async with chart_identity(audited, tmp_path, release) as identity:
            await wait_current(admin, stale, wrong, fresh)
            await identity.stop()

            await assert_exact(audited, release, identity.username)

            await refused(
                identity.api,
                # not covered
                ("create", "secrets", outside, ""),
                ("get", "secrets", outside, SECRET),
                ("update", "secrets", outside, SECRET),
                ("delete", "secrets", outside, SECRET),
                # the release namespace: only the certificate Secret (create cannot be
                # limited by name, see SECURITY.md)
                ("get", "secrets", system, f"{release.name}-image-proxy-webhook-license"),
                ("update", "secrets", system, f"{release.name}-image-proxy-webhook-license"),
                ("list", "secrets", system, ""),
                # covered, but not the pull secret
                ("get", "secrets", stale, "unrelated"),
                ("delete", "secrets", stale, "unrelated"),
                ("list", "secrets", stale, ""),
                # the code lists and watches namespaces only for ["*"]
                ("list", "namespaces", "", ""),
                ("watch", "namespaces", "", ""),
                ("get", "namespaces", "", stale),
            )
            # The caBundle of its own webhook configuration only: watched by name,
            # never every configuration.
            for verb, name in (
                *((verb, "someone-else") for verb in ("get", "update", "delete", "patch")),
                *((verb, "someone-else") for verb in ("list", "watch")),
                ("list", ""),
                ("watch", ""),
            ):
                assert not await can(
                    identity.api,
                    verb,
                    "mutatingwebhookconfigurations",
                    name=name,
                    group="admissionregistration.k8s.io",
                ), (verb, name)
            # The code itself, asked about a namespace outside the list, is refused
            # and says so in the admission warning.
            warning = await identity.manager.ensure(outside, 5)
            assert warning is not None and "403" in warning, warning
        secret = (await read_secret(admin, outside, SECRET)).ok()
        assert dockerconfig_of(secret) == {"auths": {"old": {"auth": "eA=="}}}  # untouched
    await release.uninstall()
