"""Disruptions of the webhook's Pods under a steady Pod load, and what they cost.

:func:`measure` runs a :class:`~tests.cluster.podload.PodLoad` from a lead-in
before the event until the release's rollout has settled again (plus a tail),
while :class:`EndpointWatch` records when each address enters and leaves the
Service's ready endpoints. The events:

- :func:`helm_upgrade`: ``helm upgrade`` with a changed pod annotation, which
  rolls every webhook Pod (a new ReplicaSet, one Pod at a time);
- :func:`delete_pod`: one webhook Pod deleted with its grace period, as a drain
  or a scale-down does (preStop sleep, SIGTERM, the server's drain);
- :class:`Drain`: every webhook Pod evicted, one after the other, as a node drain
  does; the PodDisruptionBudget holds the second eviction back until a replacement
  is Ready;
- :func:`kill_container`: the webhook container of one Pod killed with SIGKILL
  through containerd, as the kernel's OOM killer would: no preStop, no drain, the
  kubelet restarts the container in the same Pod.

The Pod deleted or killed is the busiest one during the lead-in, by its cgroup's CPU
time: the API server keeps one kept-alive connection per webhook and picks an
endpoint only when it dials, so one replica may answer every admission while the
other answers none, and losing the idle one would prove nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.cluster.node import CONTAINERD_SOCKET, Cluster
from tests.cluster.podload import PodLoad, Tally
from tests.cluster.resources import ContainerCgroup
from tests.cluster.webhook_release import SETTLE_TIMEOUT, Rollout, WebhookRelease
from tests.e2e.admission_harness import call

LEAD_SECONDS = 2.0  # load before the event
TAIL_SECONDS = 2.0  # load after the rollout settled
POLL_SECONDS = 0.05


@dataclass
class EndpointWatch:
    """When each address joined and left the Service's ready endpoints (monotonic times)."""

    release: WebhookRelease
    api: k8s.ApiClient
    joined: dict[str, list[float]] = field(default_factory=dict)
    left: dict[str, list[float]] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        current: frozenset[str] = frozenset()
        first = True
        while not stop.is_set():
            ready, _ = await self.release.endpoints(self.api)
            now = time.monotonic()
            if not first:
                for ip in ready - current:
                    self.joined.setdefault(ip, []).append(now)
                for ip in current - ready:
                    self.left.setdefault(ip, []).append(now)
            current, first = ready, False
            await asyncio.sleep(POLL_SECONDS)


@dataclass
class Measurement:
    event: str
    target: str  # the Pod deleted or killed (the busiest one)
    tally: Tally
    event_at: float  # monotonic
    settled_after: float  # seconds from the event to a settled rollout
    endpoints_left_after: dict[str, float]  # address -> seconds from the event
    before: Rollout
    after: Rollout

    def summary(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "target_busiest": self.target,
            **self.tally.summary(),
            "settled_after_s": round(self.settled_after, 2),
            "endpoint_left_after_s": {
                ip: round(s, 2) for ip, s in self.endpoints_left_after.items()
            },
        }


# (release, client, rollout before, the busiest Pod's name)
Event = Callable[[WebhookRelease, k8s.ApiClient, Rollout, str], Awaitable[None]]
# (rollout before, rollout after, the busiest Pod's name): the event is over
Settled = Callable[[Rollout, Rollout, str], bool]


def cpu_seconds(cluster: Cluster, rollout: Rollout) -> dict[str, float]:
    return {
        name: ContainerCgroup.of(cluster.cgroup_root, rollout.container_id(name)).cpu_seconds
        for name in rollout.pods
    }


async def measure(
    event_name: str,
    event: Event,
    settled: Settled,
    cluster: Cluster,
    release: WebhookRelease,
    api: k8s.ApiClient,
    load: PodLoad,
) -> Measurement:
    """The load across ``event``, until the rollout settled again and ``settled`` holds."""
    before = await release.wait_settled(api)
    stop = asyncio.Event()
    watch = EndpointWatch(release, api)
    watching = asyncio.create_task(watch.run(stop))
    loading = asyncio.create_task(load.run(stop))
    try:
        cpu_before = cpu_seconds(cluster, before)
        await asyncio.sleep(LEAD_SECONDS)
        cpu_after = cpu_seconds(cluster, before)
        target = max(before.pods, key=lambda name: cpu_after[name] - cpu_before[name])
        event_at = time.monotonic()
        await event(release, api, before, target)
        await asyncio.sleep(1.0)  # let the event show in the API before looking for "settled"
        while True:
            after = await release.wait_settled(api)
            if settled(before, after, target):
                break
            if time.monotonic() - event_at > SETTLE_TIMEOUT:
                raise AssertionError(f"{event_name}: not over after {SETTLE_TIMEOUT:.0f} s")
            await asyncio.sleep(0.2)
        settled_after = time.monotonic() - event_at
        await asyncio.sleep(TAIL_SECONDS)
    finally:
        stop.set()
        tally, _ = await asyncio.gather(loading, watching)  # every create answered
    left = {
        ip: times[0] - event_at
        for ip, times in watch.left.items()
        if ip in before.addresses and times and times[0] >= event_at
    }
    return Measurement(event_name, target, tally, event_at, settled_after, left, before, after)


# --- the events ----------------------------------------------------------------------------


async def helm_upgrade(
    release: WebhookRelease, api: k8s.ApiClient, before: Rollout, _: str
) -> None:
    """``helm upgrade`` with a pod annotation changed (a new value each time): every Pod rolls."""
    annotations = {**release.values.get("podAnnotations", {}), "disruption/roll": str(time.time())}
    await release.upgrade(podAnnotations=annotations)


def rolled(before: Rollout, after: Rollout, _: str) -> bool:
    """No Pod of before is left."""
    return not set(before.pods) & set(after.pods)


async def delete_pod(
    release: WebhookRelease, api: k8s.ApiClient, before: Rollout, target: str
) -> None:
    """Delete the Pod with its grace period (preStop, SIGTERM, drain)."""
    path = f"/api/v1/namespaces/{release.namespace}/pods/{target}"
    (await call(api, "DELETE", path)).ok()


def replaced(before: Rollout, after: Rollout, target: str) -> bool:
    return target not in after.pods and len(set(before.pods) - set(after.pods)) == 1


@dataclass
class Drain:
    """Evict every webhook Pod as ``kubectl drain`` does: through the Eviction API, which
    the PodDisruptionBudget answers 429 while an eviction would leave no replica
    available; a refused eviction is tried again (each second) until it is allowed."""

    refused_by_budget: int = 0

    async def evict_all(
        self, release: WebhookRelease, api: k8s.ApiClient, before: Rollout, _: str
    ) -> None:
        for name in sorted(before.pods):
            path = f"/api/v1/namespaces/{release.namespace}/pods/{name}/eviction"
            eviction = {
                "apiVersion": "policy/v1beta1",
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": release.namespace},
            }
            while (answer := await call(api, "POST", path, eviction)).status == 429:
                self.refused_by_budget += 1
                await asyncio.sleep(1.0)
            answer.ok()


def kill_container(cluster: Cluster) -> Event:
    """SIGKILL the Pod's webhook container through containerd, as an OOM kill would."""

    async def event(
        release: WebhookRelease, api: k8s.ApiClient, before: Rollout, target: str
    ) -> None:
        argv = ["ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", "tasks", "kill"]
        argv += ["--signal", "SIGKILL", before.container_id(target)]
        await asyncio.to_thread(cluster.namespace.run, argv)

    return event


def restarted(before: Rollout, after: Rollout, target: str) -> bool:
    """The Pod's container restarted (same Pod, restart count up), and Ready again."""
    if target not in after.pods:
        return False

    def restarts(rollout: Rollout) -> int:
        (status,) = rollout.pods[target]["status"]["containerStatuses"]
        return int(status.get("restartCount", 0))

    return restarts(after) > restarts(before)
