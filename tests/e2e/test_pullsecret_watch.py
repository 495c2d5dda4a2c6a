"""The pull secrets of 2,000 namespaces kept current by list + watch (docs/design.md §3).

A kube-apiserver of this module's own holds 2,000 namespaces and writes an audit log of
the requests of the two webhook replicas (``webhook-a``, ``webhook-b``), each a
``PullSecrets`` manager with its ``run`` loop and ``namespaces: ["*"]``, as the chart
runs them. The audit log is the record of what each replica asked, one entry per
request. The tests run in order on that one cluster:

- start-up: each covered namespace gets the secret with one create, and nothing else is
  written; then an idle stretch costs no request but the open watches;
- a secret deleted, and one edited, by hand are written back within 2 s;
- a second replica joins without a write; a license change with both running reaches
  every namespace with one update each, the other replica's attempts refused as
  conflicts (409) and counted;
- an API server restart: both replicas resume their watches (listing again where the
  API server cannot resume) and write nothing; a deletion after it is repaired.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from kubernetes_asyncio import client as k8s

from tests.e2e.admission_harness import call, dockerconfig_of, license_dockerconfig, read_secret
from tests.e2e.kubeapi import KubeAPIServer, require_binaries
from tests.support import eventually
from webhook import pullsecrets
from webhook.config import Settings
from webhook.metrics import Metrics

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TENANTS = 2000
SECRET = "my-app-registry"
HOME = "webhook-home"
REPLICAS = {"webhook-a": "token-a", "webhook-b": "token-b"}
REPAIR_SECONDS = 2.0
QUIET_SECONDS = 20.0
REGISTRIES = ("proxy.replicated.com", "registry.replicated.com")


def replica_settings(license_file: Path) -> Settings:
    return Settings(app_slug="my-app", license_id_file=str(license_file), namespaces=("*",))


@dataclass
class Audit:
    log: Path

    def requests(self, user: str, since: float = 0.0) -> list[dict[str, Any]]:
        """``user``'s requests received after ``since`` (Unix time), one entry each."""
        by_id: dict[str, dict[str, Any]] = {}
        for line in self.log.read_text().splitlines():
            event = json.loads(line)
            if event["user"]["username"] == user:
                by_id[event["auditID"]] = event
        return [e for e in by_id.values() if received(e) >= since]


def received(entry: dict[str, Any]) -> float:
    stamp = entry["requestReceivedTimestamp"].replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp).timestamp()


def tally(entries: list[dict[str, Any]]) -> collections.Counter[str]:
    """``verb resource code`` of each request, counted."""
    return collections.Counter(
        f"{e['verb']} {(e.get('objectRef') or {}).get('resource')} "
        f"{e.get('responseStatus', {}).get('code')}"
        for e in entries
    )


@dataclass
class Replica:
    """One webhook replica's pull-secret manager, as its own user."""

    user: str
    manager: pullsecrets.PullSecrets
    metrics: Metrics
    task: asyncio.Task[None] | None = None

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@dataclass
class Cluster:
    kube: KubeAPIServer
    audit: Audit
    license_file: Path
    covered: list[str]
    replicas: dict[str, Replica] = field(default_factory=dict)
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def start(self, user: str) -> Replica:
        configuration = self.kube.client_configuration()
        configuration.api_key = {"BearerToken": REPLICAS[user]}
        api = await self.stack.enter_async_context(k8s.ApiClient(configuration))
        settings = replica_settings(self.license_file)
        metrics = Metrics()
        manager = pullsecrets.PullSecrets(
            api,
            settings,
            lambda: pullsecrets.read_credentials(settings),
            metrics=metrics,
            webhook_namespace=HOME,
        )
        replica = Replica(user, manager, metrics)
        replica.task = asyncio.create_task(manager.run(), name=user)
        self.replicas[user] = replica
        return replica

    async def holding(self, license_id: str) -> list[str]:
        """The covered namespaces whose secret does not carry ``license_id``."""
        async with self.kube.api_client() as api:
            path = f"/api/v1/secrets?fieldSelector=metadata.name%3D{SECRET}"
            items = (await call(api, "GET", path)).ok()["items"]
        wanted = license_dockerconfig(license_id, *REGISTRIES)
        good = {s["metadata"]["namespace"] for s in items if dockerconfig_of(s) == wanted}
        return [ns for ns in self.covered if ns not in good]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeAPIServer, Audit]]:
    apiserver, etcd = require_binaries()
    work = tmp_path_factory.mktemp("watch-audit")
    policy = work / "audit-policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "audit.k8s.io/v1",
                "kind": "Policy",
                "omitStages": ["RequestReceived"],
                "rules": [
                    {"level": "Metadata", "users": list(REPLICAS)},
                    {"level": "None"},
                ],
            }
        )
    )
    log = work / "audit.log"
    kube = KubeAPIServer(
        binary=apiserver,
        etcd_binary=etcd,
        tokens={token: (user, "system:masters") for user, token in REPLICAS.items()},
        extra_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ],
    )
    kube.start()
    try:
        yield kube, Audit(log)
    finally:
        kube.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    audited: tuple[KubeAPIServer, Audit], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    kube, audit = audited
    names = [f"tenant-{i:04d}" for i in range(TENANTS)]
    async with kube.api_client() as api:
        core = k8s.CoreV1Api(api)
        pending = [*names, HOME]

        async def create() -> None:
            while pending:
                name = pending.pop()
                await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))

        await asyncio.gather(*(create() for _ in range(16)))
        listed = await core.list_namespace()
    covered = sorted(
        n.metadata.name
        for n in listed.items
        if replica_settings(Path()).covers(n.metadata.name, HOME)
    )
    license_file = tmp_path_factory.mktemp("license") / "id"
    license_file.write_text("license-one\n")
    state = Cluster(kube, audit, license_file, covered)
    try:
        yield state
    finally:
        for replica in state.replicas.values():
            if replica.task is not None:
                replica.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replica.task
            await replica.manager.close()
        await state.stack.aclose()


async def test_start_up_writes_each_missing_secret_once_then_only_watches(
    cluster: Cluster,
) -> None:
    began = time.time()
    a = await cluster.start("webhook-a")

    async def all_present() -> bool:
        return not await cluster.holding("license-one")

    await eventually(
        all_present, timeout=300, what=f"the secret in {len(cluster.covered)} namespaces"
    )
    made = tally(cluster.audit.requests(a.user, began))
    print(f"start-up requests of one replica at {TENANTS} namespaces: {dict(made)}")
    assert made["create secrets 201"] == len(cluster.covered), made
    writes = {k: v for k, v in made.items() if not k.startswith(("list ", "watch ", "create "))}
    assert writes == {}, made  # nothing but the lists, the watches and one create each
    assert a.sample("image_proxy_webhook_pull_secrets_present") == len(cluster.covered)

    quiet = time.time()
    await asyncio.sleep(QUIET_SECONDS)
    idle = tally(cluster.audit.requests(a.user, quiet))
    print(f"requests over {QUIET_SECONDS:.0f} idle seconds: {dict(idle)}")
    assert set(idle) <= {"watch namespaces 200", "watch secrets 200"}, idle


async def test_a_deleted_or_edited_secret_is_back_within_two_seconds(cluster: Cluster) -> None:
    a = cluster.replicas["webhook-a"]
    wanted = license_dockerconfig("license-one", *REGISTRIES)
    async with cluster.kube.api_client() as admin:
        for namespace, how in (("tenant-0007", "deleted"), ("tenant-1234", "edited")):
            path = f"/api/v1/namespaces/{namespace}/secrets/{SECRET}"
            if how == "deleted":
                assert (await call(admin, "DELETE", path)).status == 200
            else:
                edited = (await read_secret(admin, namespace, SECRET)).ok()
                edited["data"] = {".dockerconfigjson": "eyJhdXRocyI6e319"}  # {"auths":{}}
                (await call(admin, "PUT", path, edited)).ok()
            changed = time.monotonic()

            async def restored(namespace: str = namespace) -> bool:
                answer = await read_secret(admin, namespace, SECRET)
                return answer.status == 200 and dockerconfig_of(answer.body) == wanted

            await eventually(restored, timeout=REPAIR_SECONDS, what=f"the {how} secret back")
            print(f"{how} secret back after {time.monotonic() - changed:.3f} s")
    # counted once the write's answer is in, a moment after the API server stored it
    await eventually(
        lambda: a.sample("image_proxy_webhook_pull_secret_restores_total") == 2,
        timeout=5,
        what=lambda: a.metrics.render().decode(),
    )


async def test_a_license_change_with_two_replicas_updates_each_secret_once(
    cluster: Cluster,
) -> None:
    joined = time.time()
    b = await cluster.start("webhook-b")

    async def b_synced() -> bool:
        return b.sample("image_proxy_webhook_pull_secrets_present") == len(cluster.covered)

    await eventually(b_synced, timeout=60, what="the second replica's lists")
    # The second replica finds every secret current: it writes nothing.
    joined_with = tally(cluster.audit.requests(b.user, joined))
    assert {k for k in joined_with if not k.startswith(("list ", "watch "))} == set(), joined_with

    rotated = time.time()
    cluster.license_file.write_text("license-two\n")

    async def all_current() -> bool:
        return not await cluster.holding("license-two")

    await eventually(all_current, timeout=300, what="license-two everywhere", interval=1.0)
    seconds = time.time() - rotated
    by_replica = {user: tally(cluster.audit.requests(user, rotated)) for user in cluster.replicas}
    updated = sum(made["update secrets 200"] for made in by_replica.values())
    conflicts = sum(made["update secrets 409"] for made in by_replica.values())
    print(
        f"license change at {TENANTS} namespaces, two replicas: every secret current after "
        f"{seconds:.1f} s; {updated} updates, {conflicts} conflicting (409); {by_replica}"
    )
    # One update per namespace in all: the replicas never undid each other's writes.
    assert updated == len(cluster.covered), by_replica
    for made in by_replica.values():
        assert {k for k in made if k.split()[0] in ("create", "delete")} == set(), made


async def test_an_api_server_restart_is_resumed_without_writes(cluster: Cluster) -> None:
    before = time.time()
    await asyncio.to_thread(cluster.kube.restart_apiserver, 2.0)

    async def resumed() -> bool:
        return all(
            replica.sample(
                "image_proxy_webhook_pull_secret_watch_restarts_total",
                resource="secrets",
                reason=reason,
            )
            > 0
            for replica in cluster.replicas.values()
            for reason in ("error",)
        )

    await eventually(resumed, timeout=60, what="both replicas' watches restarted")
    await asyncio.sleep(10)
    for replica in cluster.replicas.values():
        made = tally(cluster.audit.requests(replica.user, before))
        print(f"{replica.user} across the restart: {dict(made)}")
        assert {k for k in made if k.split()[0] not in ("list", "watch")} == set(), made
    # Following the cluster again: a deletion is repaired.
    async with cluster.kube.api_client() as admin:
        path = f"/api/v1/namespaces/tenant-0042/secrets/{SECRET}"
        assert (await call(admin, "DELETE", path)).status == 200

        async def repaired() -> bool:
            return (await read_secret(admin, "tenant-0042", SECRET)).status == 200

        await eventually(repaired, timeout=REPAIR_SECONDS, what="the secret after the restart")
