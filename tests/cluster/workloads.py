"""What the cluster tests do through the API: namespaces, pull Secrets, Pods and their events.

Everything goes through kubernetes-asyncio (no kubectl). Waits are bounded and,
when they run out, say what the Pod was doing: its phase, its containers' states
and its events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.e2e.admission_harness import call, create_pod, expected_dockerconfig, pod, read_pod
from tests.support import eventually

POD_TIMEOUT = 120.0


async def create_namespace(api: k8s.ApiClient, name: str, **labels: str) -> str:
    """A namespace whose ``default`` ServiceAccount has its token (Pods are admitted then).

    Labelled ``kubernetes.io/metadata.name`` as 1.21+ does on its own (the chart's
    namespaceSelector uses it; 1.20 does not set it).
    """
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}},
    }
    (await call(api, "POST", "/api/v1/namespaces", body)).ok()

    async def account_has_token() -> bool:
        answer = await call(api, "GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
        return answer.status == 200 and bool(answer.body.get("secrets"))

    await eventually(account_has_token, timeout=60, what=f"{name}/default's token Secret")
    return name


async def delete_namespace(api: k8s.ApiClient, name: str) -> None:
    """Delete a namespace without waiting (its Pods are stopped at the node's teardown)."""
    await call(api, "DELETE", f"/api/v1/namespaces/{name}", query={"gracePeriodSeconds": "0"})


async def create_pull_secret(
    api: k8s.ApiClient, namespace: str, name: str, auths: Mapping[str, tuple[str, str]]
) -> None:
    """A ``kubernetes.io/dockerconfigjson`` Secret: registry -> (user, password)."""
    config = json.dumps(expected_dockerconfig(auths)).encode()
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name},
        "data": {".dockerconfigjson": base64.b64encode(config).decode()},
    }
    (await call(api, "POST", f"/api/v1/namespaces/{namespace}/secrets", body)).ok()


async def events_of(api: k8s.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    """The events about one object, oldest first."""
    answer = await call(
        api,
        "GET",
        f"/api/v1/namespaces/{namespace}/events",
        query={"fieldSelector": f"involvedObject.name={name}"},
    )
    items: list[dict[str, Any]] = answer.ok().get("items", [])
    return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def describe_events(events: list[dict[str, Any]]) -> str:
    return "\n".join(f"{e.get('reason')}: {e.get('message')}" for e in events)


async def _describe(api: k8s.ApiClient, namespace: str, name: str) -> str:
    stored = await read_pod(api, namespace, name)
    status = stored.get("status", {})
    states = {
        s["name"]: s.get("state")
        for s in status.get("initContainerStatuses", []) + status.get("containerStatuses", [])
    }
    events = describe_events(await events_of(api, namespace, name))
    return f"phase {status.get('phase')}, containers {states}\nevents:\n{events}"


async def wait_pod_running(
    api: k8s.ApiClient, namespace: str, name: str, *, timeout: float = POD_TIMEOUT
) -> dict[str, Any]:
    """Until the Pod is Running with every container ready; the stored Pod."""
    deadline = time.monotonic() + timeout
    while True:
        stored = await read_pod(api, namespace, name)
        status = stored.get("status", {})
        if status.get("phase") == "Running" and all(
            s.get("ready") for s in status.get("containerStatuses", [])
        ):
            return stored
        if status.get("phase") in ("Failed", "Succeeded") or time.monotonic() > deadline:
            raise AssertionError(
                f"Pod {namespace}/{name} is not Running: {await _describe(api, namespace, name)}"
            )
        await asyncio.sleep(0.25)


async def wait_until_rewritten(
    api: k8s.ApiClient, namespace: str, image: str, rewritten: str, *, timeout: float = 60
) -> None:
    """Until a dry-run Pod with ``image`` comes back with ``rewritten``.

    The webhook's Pods are Ready before the API server can call it: until the
    webhook has set its own caBundle and the API server's informer has the new
    configuration, the calls fail and (failurePolicy Ignore) Pods go through
    unchanged. A dry run has no side effects (no pull Secret is written for it).
    """
    probe = pod(f"ready-{uuid.uuid4().hex[:6]}", {"probe": image})

    async def rewrites() -> bool:
        answer = await create_pod(api, namespace, probe, dry_run=True)
        return answer.status == 201 and answer.body["spec"]["containers"][0]["image"] == rewritten

    await eventually(rewrites, timeout=timeout, what=f"the webhook to rewrite {image}")


async def wait_pods_running(
    api: k8s.ApiClient, namespace: str, selector: str, *, count: int, timeout: float = POD_TIMEOUT
) -> list[dict[str, Any]]:
    """Until ``count`` Pods match the label ``selector``, each Running and ready; those Pods."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await call(
            api, "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": selector}
        )
        names = [p["metadata"]["name"] for p in answer.ok().get("items", [])]
        if len(names) >= count:
            left = max(deadline - time.monotonic(), 1.0)
            return [await wait_pod_running(api, namespace, n, timeout=left) for n in names]
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(names)} of {count} Pods {selector} in {namespace}")
        await asyncio.sleep(0.25)


async def delete_pull_secrets(api: k8s.ApiClient, name: str) -> None:
    """Delete the webhook's pull Secret ``name`` from every namespace it wrote it to."""
    answer = await call(
        api,
        "GET",
        "/api/v1/secrets",
        query={
            "labelSelector": "app.kubernetes.io/managed-by=image-proxy-webhook",
            "fieldSelector": f"metadata.name={name}",
        },
    )
    for secret in answer.ok().get("items", []):
        namespace = secret["metadata"]["namespace"]
        await call(api, "DELETE", f"/api/v1/namespaces/{namespace}/secrets/{name}")
