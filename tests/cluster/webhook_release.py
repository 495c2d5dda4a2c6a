"""The chart installed, upgraded and rolled by the Helm CLI, and its rollout settled.

:class:`WebhookRelease` runs ``helm install`` and ``helm upgrade`` (:func:`tests.cluster.helm.helm`)
and, unlike ``helm --wait``, waits until a rollout has settled for the Service's
callers: every replica of the current template Ready, no other webhook Pod left
(not even a terminating one), and the Service's endpoints exactly those Pods'
addresses. :func:`post_review` sends a review straight to one webhook Pod.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.cluster.helm import helm
from tests.cluster.node import Cluster
from tests.e2e.admission_harness import call
from tests.e2e.chart_release import CHART

SETTLE_TIMEOUT = 180.0
WEBHOOK_PORT = 8443  # the chart's server.port


@dataclass(frozen=True)
class Rollout:
    """The release's webhook Pods as they stand once a rollout has settled."""

    pods: dict[str, dict[str, Any]]  # name -> stored Pod
    addresses: frozenset[str]  # the Service's ready endpoint addresses

    def container_id(self, pod_name: str) -> str:
        """The webhook container's ID in containerd (without the ``containerd://``)."""
        (status,) = self.pods[pod_name]["status"]["containerStatuses"]
        return str(status["containerID"]).split("://", 1)[1]

    def ip(self, pod_name: str) -> str:
        return str(self.pods[pod_name]["status"]["podIP"])


@dataclass
class WebhookRelease:
    """One Helm release of the chart in ``namespace`` (which must exist)."""

    cluster: Cluster
    name: str
    namespace: str
    values: dict[str, Any]
    work: Path

    @property
    def fullname(self) -> str:
        chart = "image-proxy-webhook"
        return self.name if chart in self.name else f"{self.name}-{chart}"

    def _helm(self, action: str) -> None:
        values = self.work / f"values-{self.name}.json"
        values.write_text(json.dumps(self.values, indent=2))
        helm(self.cluster, action, self.name, str(CHART), "-n", self.namespace, "-f", str(values))

    async def install(self) -> None:
        await asyncio.to_thread(self._helm, "install")

    async def upgrade(self, **changes: Any) -> None:
        """``helm upgrade`` with ``changes`` merged into the top level of the values."""
        self.values = {**self.values, **changes}
        await asyncio.to_thread(self._helm, "upgrade")

    async def uninstall(self) -> None:
        await asyncio.to_thread(
            helm, self.cluster, "uninstall", self.name, "-n", self.namespace, "--wait"
        )

    # --- what runs -----------------------------------------------------------------------

    def _path(self, kind: str) -> str:
        group = "/apis/apps/v1" if kind == "deployments" else "/api/v1"
        return f"{group}/namespaces/{self.namespace}/{kind}"

    async def deployment(self, api: k8s.ApiClient) -> dict[str, Any]:
        return (await call(api, "GET", f"{self._path('deployments')}/{self.fullname}")).ok()

    async def pods(self, api: k8s.ApiClient) -> list[dict[str, Any]]:
        """Every webhook Pod of the release, terminating ones included."""
        selector = (await self.deployment(api))["spec"]["selector"]["matchLabels"]
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())}
        answer = await call(api, "GET", self._path("pods"), query=query)
        items: list[dict[str, Any]] = answer.ok()["items"]
        return items

    async def endpoints(self, api: k8s.ApiClient) -> tuple[frozenset[str], frozenset[str]]:
        """The Service's (ready, not ready) endpoint addresses."""
        answer = await call(api, "GET", f"{self._path('endpoints')}/{self.fullname}")
        ready: set[str] = set()
        not_ready: set[str] = set()
        for subset in answer.ok().get("subsets") or []:
            ready.update(a["ip"] for a in subset.get("addresses") or [])
            not_ready.update(a["ip"] for a in subset.get("notReadyAddresses") or [])
        return frozenset(ready), frozenset(not_ready)

    async def settled(self, api: k8s.ApiClient) -> Rollout | None:
        """The rollout once settled, else None."""
        deployment = await self.deployment(api)
        replicas = deployment["spec"]["replicas"]
        status = deployment.get("status", {})
        if status.get("observedGeneration", 0) < deployment["metadata"]["generation"] or any(
            status.get(key, 0) != replicas
            for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
        ):
            return None
        pods = await self.pods(api)
        if len(pods) != replicas or any(
            p["metadata"].get("deletionTimestamp")
            or p["status"].get("phase") != "Running"
            or not all(s.get("ready") for s in p["status"].get("containerStatuses", []))
            for p in pods
        ):
            return None
        ready, not_ready = await self.endpoints(api)
        ips = frozenset(p["status"]["podIP"] for p in pods)
        if ready != ips or not_ready:
            return None
        return Rollout({p["metadata"]["name"]: p for p in pods}, ready)

    async def wait_settled(self, api: k8s.ApiClient, timeout: float = SETTLE_TIMEOUT) -> Rollout:
        deadline = time.monotonic() + timeout
        while True:
            rollout = await self.settled(api)
            if rollout is not None:
                return rollout
            if time.monotonic() > deadline:
                pods = [
                    (
                        p["metadata"]["name"],
                        p["status"].get("phase"),
                        p["metadata"].get("deletionTimestamp"),
                    )
                    for p in await self.pods(api)
                ]
                raise AssertionError(
                    f"the release's rollout did not settle within {timeout:.0f} s: "
                    f"deployment status {(await self.deployment(api)).get('status')}, "
                    f"pods {pods}, endpoints {await self.endpoints(api)}"
                )
            await asyncio.sleep(0.2)


def post_review(address: str, body: bytes, path: str = "/mutate") -> tuple[int, Any]:
    """POST a review straight to one webhook Pod's port, from a thread inside the node's
    network namespace; (HTTP status, decoded answer or None)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the self-managed CA is the webhook's own
    request = urllib.request.Request(
        f"https://{address}:{WEBHOOK_PORT}{path}",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), urllib.request.ProxyHandler({})
    )
    try:
        with opener.open(request, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
