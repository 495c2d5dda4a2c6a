"""Rollouts, Pod loss and SIGKILL of the webhook under a steady Pod load, on a real node.

The chart is installed by the Helm CLI with its defaults where they matter here
(2 replicas, preStop sleep, readiness, PDB, RollingUpdate with maxUnavailable 0,
the mutating webhook failing open), the validating webhook on (failing closed),
and the webhook's own image built from this tree. Pods with a private image are
created (dry run, see tests/cluster/podload.py) at a fixed rate across each event;
each create is counted as mutated, unmutated, refused, unanswered, and slow
(over 2 s).

- ``helm upgrade`` rolling every Pod, one Pod deleted normally, and every Pod
  evicted as a node drain does (the PodDisruptionBudget holding the second
  eviction back): nothing but mutated creates, at both rates.
- One container SIGKILLed through containerd (an OOM kill): the API server may
  dial the dead Pod before its endpoint is removed, fail open on the mutating
  webhook, and the validating webhook then refuses the unrewritten Pod. A refused
  create is counted and allowed (controllers retry it); an unmutated Pod that was
  created is not.
- No deadlock: with every webhook Pod gone and every namespace covered, the
  webhook's own Pods and Pods in the excluded namespaces are still created.
- Resources: the webhook container's memory and CPU from its cgroup, idle, under
  the high rate, and with the largest accepted review beside it, against the
  chart's requests and limits.
- The cluster scenario of bench/cluster.py, a few creates, so that it cannot rot.

Slow creates are counted and printed, not asserted: on two shared cores they
measure the machine as much as the webhook (README "Failure behaviour" has both).
``DISRUPTION_REPEAT=N`` repeats each event N times in one test (the figures in the
README come from such a run); every run's figures are printed, and with
``DISRUPTION_FIGURES=FILE`` appended to FILE.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client as k8s

from bench import cluster as bench_cluster
from tests.cluster.conftest import PROXY_DOMAIN, NodeRegistries, PushedImage, TinyImages
from tests.cluster.disruption import (
    Drain,
    Event,
    Measurement,
    Settled,
    delete_pod,
    helm_upgrade,
    kill_container,
    measure,
    replaced,
    restarted,
    rolled,
)
from tests.cluster.node import Cluster
from tests.cluster.podload import Outcome, PodLoad, fast_client
from tests.cluster.resources import MIB, ContainerCgroup
from tests.cluster.webhook_release import WebhookRelease, post_review
from tests.cluster.workloads import create_namespace, wait_pod_running
from tests.e2e.admission_harness import call, pod
from tests.reliability.test_big_objects import costliest_json, most_images
from tests.support import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

RELEASE_NAMESPACE = "ipw-disruption"
APP_NAMESPACE = "disrupt"
UNCOVERED_NAMESPACE = "uncovered"
APP_SLUG = "app"
LOW_RATE = 5.0
HIGH_RATE = 50.0
RATES = pytest.mark.parametrize("rate", [LOW_RATE, HIGH_RATE], ids=["5-per-s", "50-per-s"])
REPEAT = int(os.environ.get("DISRUPTION_REPEAT", "1"))
CHART_MEMORY_LIMIT = 256 * 1024 * 1024


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print a figure into the session's output, passing or not; with
    ``DISRUPTION_FIGURES=FILE`` also append it to FILE (one JSON line each)."""
    with capsys.disabled():
        print(f"\ndisruption: {line}")
    figures = os.environ.get("DISRUPTION_FIGURES")
    if figures:
        with open(figures, "a") as out:
            out.write(line + "\n")


def report_measurement(capsys: pytest.CaptureFixture[str], m: Measurement) -> None:
    report(capsys, json.dumps(m.summary(), sort_keys=True))


def rewritten(image: str) -> str:
    return f"{PROXY_DOMAIN}/proxy/{APP_SLUG}/{image}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def release(
    cluster: Cluster,
    node_registries: NodeRegistries,
    tiny_images: TinyImages,
    webhook_image: PushedImage,
    helm: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[WebhookRelease]:
    """The chart, 2 replicas, validating webhook on, covering APP_NAMESPACE; mutating."""
    async with cluster.api_client() as api:
        for namespace in (RELEASE_NAMESPACE, APP_NAMESPACE, UNCOVERED_NAMESPACE):
            await create_namespace(api, namespace)
    registries = [node_registries.vendor.domain, node_registries.public.domain]
    values: dict[str, Any] = {
        "appSlug": APP_SLUG,
        "license": {"id": node_registries.license_id},
        "namespaces": [APP_NAMESPACE],
        "image": {"repository": webhook_image.repository, "tag": webhook_image.tag},
        "probe": {"insecureRegistries": registries, "allowPrivateNetworks": True},
        "validatingWebhook": {"enabled": True},
    }
    release = WebhookRelease(
        cluster, "ipw-disruption", RELEASE_NAMESPACE, values, tmp_path_factory.mktemp("release")
    )
    await release.install()
    expected = rewritten(tiny_images.private)
    async with cluster.api_client() as api:
        await release.wait_settled(api)
        load = PodLoad(api, APP_NAMESPACE, tiny_images.private, expected, LOW_RATE)

        async def mutating() -> bool:
            # the self-managed certificate's caBundle reaches the API server's cache late
            return (await load.create()).outcome is Outcome.MUTATED

        await eventually(mutating, timeout=60, what="the webhook to mutate Pods")
    try:
        yield release
    finally:
        await release.uninstall()


@pytest_asyncio.fixture(loop_scope="module")
async def api(cluster: Cluster) -> AsyncIterator[k8s.ApiClient]:
    assert cluster.apiserver is not None
    async with fast_client(cluster.apiserver.client_configuration()) as client:
        yield client


def app_load(api: k8s.ApiClient, tiny_images: TinyImages, rate: float) -> PodLoad:
    expected = rewritten(tiny_images.private)
    return PodLoad(api, APP_NAMESPACE, tiny_images.private, expected, rate)


# (name, event, when it is over, rate): every run's measurement, printed
Disrupt = Callable[[str, Event, Settled, float], Awaitable[list[Measurement]]]


@pytest.fixture
def disrupt(
    capsys: pytest.CaptureFixture[str],
    cluster: Cluster,
    release: WebhookRelease,
    api: k8s.ApiClient,
    tiny_images: TinyImages,
) -> Disrupt:
    """Measure an event under the Pod load at a rate, DISRUPTION_REPEAT times."""

    async def measured(name: str, event: Event, settled: Settled, rate: float) -> list[Measurement]:
        load = app_load(api, tiny_images, rate)
        runs = []
        for _ in range(REPEAT):
            m = await measure(name, event, settled, cluster, release, api, load)
            report_measurement(capsys, m)
            runs.append(m)
        return runs

    return measured


def assert_nothing_lost(runs: list[Measurement]) -> None:
    for m in runs:
        tally = m.tally
        assert tally.creates, m.summary()
        lost = [c for c in tally.creates if c.outcome is not Outcome.MUTATED]
        assert not lost, m.summary()


# --- the node without the webhook: which high rate it sustains ---------------------------------


async def test_the_node_sustains_the_high_rate_without_the_webhook(
    capsys: pytest.CaptureFixture[str],
    release: WebhookRelease,
    api: k8s.ApiClient,
    tiny_images: TinyImages,
) -> None:
    load = PodLoad(api, UNCOVERED_NAMESPACE, tiny_images.private, tiny_images.private, HIGH_RATE)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    await asyncio.sleep(10)
    stop.set()
    tally = await running
    report(capsys, json.dumps({"event": "none, no webhook", **tally.summary()}))
    # "mutated" here means: came back as sent (nothing is to be rewritten)
    assert tally.count(Outcome.MUTATED) == len(tally.creates), tally.summary()
    # Sent on time, and answered faster than they are sent: no queue builds up.
    assert tally.summary()["sent_per_second"] >= 0.9 * HIGH_RATE, tally.summary()
    assert tally.slow == 0, tally.summary()


# --- 1. helm upgrade -----------------------------------------------------------------------------


@RATES
async def test_a_helm_upgrade_that_rolls_every_pod_loses_no_pod(
    disrupt: Disrupt, rate: float
) -> None:
    assert_nothing_lost(await disrupt("helm-upgrade", helm_upgrade, rolled, rate))


# --- 2. one Pod deleted ---------------------------------------------------------------------------


@RATES
async def test_a_webhook_pod_deleted_normally_loses_no_pod(
    disrupt: Disrupt, release: WebhookRelease, rate: float
) -> None:
    runs = await disrupt("delete-pod", delete_pod, replaced, rate)
    assert_nothing_lost(runs)
    prestop = float(release.values.get("preStopSleepSeconds", 5))
    for m in runs:
        # the deleted Pod left the endpoints long before its preStop sleep ended
        assert m.endpoints_left_after, m.summary()
        assert max(m.endpoints_left_after.values()) < prestop, m.summary()


@RATES
async def test_a_node_drain_evicts_one_webhook_pod_at_a_time_and_loses_no_pod(
    disrupt: Disrupt, rate: float
) -> None:
    drain = Drain()
    assert_nothing_lost(await disrupt("drain", drain.evict_all, rolled, rate))
    # the PodDisruptionBudget refused the second eviction while the first Pod's
    # replacement was not yet Ready
    assert drain.refused_by_budget > 0


# --- 3. SIGKILL ----------------------------------------------------------------------------------


@RATES
async def test_a_container_killed_with_sigkill_creates_no_unmutated_pod(
    disrupt: Disrupt, cluster: Cluster, rate: float
) -> None:
    runs = await disrupt("sigkill", kill_container(cluster), restarted, rate)
    for m in runs:
        # Refused creates are the validating webhook's backstop at work: counted, allowed.
        assert m.tally.count(Outcome.UNMUTATED) == 0, m.summary()
        assert m.tally.count(Outcome.UNANSWERED) == 0, m.summary()
        refusals = [c.detail for c in m.tally.creates if c.outcome is Outcome.REFUSED]
        assert all("webhook" in detail for detail in refusals), refusals


# --- resources -----------------------------------------------------------------------------------


async def test_memory_and_cpu_stay_within_the_charts_resources(
    capsys: pytest.CaptureFixture[str],
    cluster: Cluster,
    release: WebhookRelease,
    api: k8s.ApiClient,
    tiny_images: TinyImages,
) -> None:
    rollout = await release.wait_settled(api)
    cgroups = {
        name: ContainerCgroup.of(cluster.cgroup_root, rollout.container_id(name))
        for name in rollout.pods
    }
    limits = {c.limit_bytes for c in cgroups.values()}
    assert limits == {CHART_MEMORY_LIMIT}, limits

    def sample() -> dict[str, tuple[float, int, int]]:
        return {n: (c.cpu_seconds, c.usage_bytes, c.rss_bytes) for n, c in cgroups.items()}

    figures: dict[str, Any] = {}
    idle_seconds = 10.0
    before = sample()
    await asyncio.sleep(idle_seconds)
    after = sample()
    figures["idle"] = {
        n: {
            "cpu_millicores": round((after[n][0] - before[n][0]) / idle_seconds * 1000, 1),
            "usage_mib": round(after[n][1] / MIB, 1),
            "rss_mib": round(after[n][2] / MIB, 1),
        }
        for n in cgroups
    }

    for cgroup in cgroups.values():
        cgroup.reset_peak()
    load = app_load(api, tiny_images, HIGH_RATE)
    stop = asyncio.Event()
    loading = asyncio.create_task(load.run(stop))
    load_seconds = 20.0
    before = sample()
    await asyncio.sleep(load_seconds / 2)
    # The largest accepted reviews, beside the load, to each Pod: the worst one request can cost.
    worst = [most_images(), costliest_json()]
    statuses = []
    for name in rollout.pods:
        address = rollout.ip(name)
        for body in worst:
            status, _ = await asyncio.to_thread(
                cluster.namespace.call, functools.partial(post_review, address, body)
            )
            statuses.append(status)
    await asyncio.sleep(max(0.0, load_seconds / 2))
    after = sample()
    stop.set()
    tally = await loading
    figures["load"] = {
        n: {
            "cpu_millicores": round((after[n][0] - before[n][0]) / load_seconds * 1000, 1),
            "usage_mib": round(after[n][1] / MIB, 1),
            "peak_usage_mib": round(cgroups[n].peak_bytes / MIB, 1),
        }
        for n in cgroups
    }
    figures["creates"] = tally.summary()
    figures["worst_review_statuses"] = statuses
    figures["oom_kills"] = {n: c.oom_kills for n, c in cgroups.items()}
    report(capsys, json.dumps({"event": "resources", **figures}, sort_keys=True))

    assert statuses == [200] * len(statuses), statuses
    assert all(c.peak_bytes < CHART_MEMORY_LIMIT for c in cgroups.values()), figures
    assert all(c.oom_kills == 0 for c in cgroups.values()), figures
    for stored in (await release.wait_settled(api)).pods.values():
        (status,) = stored["status"]["containerStatuses"]
        last = status.get("lastState", {}).get("terminated", {})
        assert last.get("reason") != "OOMKilled", status
    assert tally.count(Outcome.MUTATED) == len(tally.creates), tally.summary()


# --- no deadlock ---------------------------------------------------------------------------------


async def test_with_every_webhook_pod_gone_its_own_pods_and_excluded_namespaces_still_start(
    capsys: pytest.CaptureFixture[str],
    cluster: Cluster,
    release: WebhookRelease,
    api: k8s.ApiClient,
    tiny_images: TinyImages,
) -> None:
    # The widest coverage: every namespace but the release's and excludeNamespaces.
    await release.upgrade(namespaces=["*"])
    await release.wait_settled(api)
    try:
        # kube-system as Kubernetes 1.21+ labels it (the namespaceSelector reads the label).
        patch = {"metadata": {"labels": {"kubernetes.io/metadata.name": "kube-system"}}}
        (
            await call(
                api,
                "PATCH",
                "/api/v1/namespaces/kube-system",
                patch,
                content_type="application/merge-patch+json",
            )
        ).ok()
        probe = app_load(api, tiny_images, LOW_RATE)

        async def mutating() -> bool:
            return (await probe.create()).outcome is Outcome.MUTATED

        await eventually(mutating, timeout=60, what="the widened webhook to mutate Pods")
        before = await release.wait_settled(api)

        for name in before.pods:  # every webhook Pod at once, no grace: as if their node died
            path = f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{name}"
            (await call(api, "DELETE", path, query={"gracePeriodSeconds": "0"})).ok()

        # While no replica is up, the validating webhook fails closed in covered namespaces...
        async def refused() -> bool:
            return (await probe.create()).outcome is Outcome.REFUSED

        await eventually(refused, timeout=30, what="a create refused while no webhook Pod runs")
        # ...and yet a Pod of an excluded namespace is created (really: stored, then run).
        system_pod = pod(f"system-{int(time.time())}", {"tool": tiny_images.public})
        created = await call(api, "POST", "/api/v1/namespaces/kube-system/pods", system_pod)
        assert created.status == 201, created.body
        assert created.body["spec"]["containers"][0]["image"] == tiny_images.public
        await wait_pod_running(api, "kube-system", system_pod["metadata"]["name"])
        # The ReplicaSet recreates the webhook's own Pods (its namespace is never covered)...
        after = await release.wait_settled(api)
        assert not set(before.pods) & set(after.pods), (before.pods.keys(), after.pods.keys())
        # ...and Pods are mutated again.
        await eventually(mutating, timeout=60, what="the recreated webhook to mutate Pods")
        report(
            capsys,
            "no deadlock: "
            f"webhook Pods {sorted(before.pods)} -> {sorted(after.pods)}, kube-system Pod created",
        )
    finally:
        # back to the module's coverage: later releases in this cluster are not covered
        await release.upgrade(namespaces=[APP_NAMESPACE])
        await release.wait_settled(api)


# --- the bench scenario, so that it cannot rot ------------------------------------------------


async def test_the_cluster_bench_measures_the_webhook_beside_no_webhook_and_the_echo_floor(
    capsys: pytest.CaptureFixture[str],
    cluster: Cluster,
    helm: Path,
    tmp_path: Path,
) -> None:
    results = await bench_cluster.run(cluster, tmp_path, creates=20, rounds=1)
    report(capsys, json.dumps({"event": "bench", **results["targets"]}, sort_keys=True))
    assert set(results["targets"]) == {"none", "echo", "webhook"}
    assert all(row["creates"] == 20 for row in results["targets"].values())
