"""End to end: dry-run Pod creates through a real kube-apiserver, webhook against echo floor.

The API server (``tests/e2e/kubeapi.py``: v1.20.2 and etcd on loopback) calls the
webhook for Pods of one namespace and the echo floor (``bench.floor --echo``:
parse the review, echo its uid, return the webhook's own answer and patch: the
least any Python webhook must do) for Pods of another. wrk posts the same Pod to
``POST /api/v1/namespaces/NS/pods?dryRun=All`` for each in turns: the whole
admission chain runs, webhook included, and nothing is stored.

The figure to compare is CPU per admission: each server process's user + system
time over a run divided by the admissions it answered (its own counter). The API
server and the webhook share the CPU, as a webhook Pod shares a busy node, so
throughput moves with whatever else runs; CPU per admission hardly does. The
load comes from wrk (C, one thread), in neither process's figure.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.harness import BenchError, Process, insecure_context, log, start_floor, write_bodies
from bench.measure import Pair, Target, alternate, metric, scrape
from bench.scenarios import HOST, Profile
from tests.e2e import admission_harness as admission
from tests.e2e import kubeapi
from tests.support import free_port
from webhook import pki

CONNECTIONS = (16, 1)
ECHO_NAMESPACE = "bench-echo"
ADMISSIONS = "image_proxy_webhook_admission_duration_seconds_count"
REGISTERED_WITHIN_S = 30.0


def pod_of(review_body: bytes) -> dict[str, Any]:
    """The Pod of an AdmissionReview as a client posts it (the API server adds defaults)."""
    obj = json.loads(review_body)["request"]["object"]
    containers = [{"name": c["name"], "image": c["image"]} for c in obj["spec"]["containers"]]
    metadata = {"name": obj["metadata"]["name"], "labels": obj["metadata"].get("labels", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": containers},
    }


def webhook_admissions(webhook: Process) -> Callable[[], float]:
    """The webhook's own count of /mutate admissions, from its /metrics."""
    return lambda: metric(scrape(webhook.extra["metrics_url"]), ADMISSIONS, endpoint="mutate")


def echo_admissions(echo: Process) -> Callable[[], float]:
    """The echo floor's count of answers (``GET /answered``)."""
    context = insecure_context()

    def answered() -> float:
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), urllib.request.ProxyHandler({})
        )
        with opener.open(f"{echo.base_url}/answered", timeout=10) as response:
            return float(response.read())

    return answered


def dry_run_url(api: kubeapi.KubeAPIServer, namespace: str) -> str:
    return f"{api.url}/api/v1/namespaces/{namespace}/pods?dryRun=All"


async def register(api: kubeapi.KubeAPIServer, ca_bundle: str, urls: Mapping[str, str]) -> None:
    """Each namespace (created here) gets its own webhook configuration, pointing at its URL."""
    path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    async with api.api_client() as client:
        for namespace, url in urls.items():
            await api.create_namespace(namespace, {admission.SELECTOR_LABEL: namespace})
            body = admission.webhook_configuration(
                f"bench-{namespace}", url=url, ca_bundle=ca_bundle, selector=namespace
            )
            (await admission.call(client, "POST", path, body)).ok()


async def admitted(
    api: kubeapi.KubeAPIServer, namespace: str, pod: Mapping[str, Any], count: Callable[[], float]
) -> dict[str, Any]:
    """A dry-run create the server answered through its webhook: what it would store."""
    before = count()
    deadline = time.monotonic() + REGISTERED_WITHIN_S
    async with api.api_client() as client:
        while True:
            stored = (await admission.create_pod(client, namespace, pod, dry_run=True)).ok()
            if count() > before:
                return stored
            if time.monotonic() > deadline:  # the configuration reaches the server's cache late
                raise BenchError(f"no admission reached the webhook of namespace {namespace}")
            await asyncio.sleep(0.2)


def check_same_pod(
    api: kubeapi.KubeAPIServer,
    pod: Mapping[str, Any],
    counters: Mapping[str, Callable[[], float]],
    patched: bool,
) -> None:
    """Both webhooks turn the Pod into the same stored Pod, so both do the same work."""
    views = {
        namespace: admission.stored_view(asyncio.run(admitted(api, namespace, pod, count)))
        for namespace, count in counters.items()
    }
    first, second = views.values()
    if first != second:
        raise BenchError(f"the webhook and the echo floor admit different Pods: {views}")
    if patched and first == admission.stored_view(pod):
        raise BenchError(f"the API server applied no patch: {first}")


def run_e2e(
    webhook: Process,
    namespace: str,
    review_body: bytes,
    answer: Mapping[str, Any],
    certs: pki.CertPaths,
    work: Path,
    profile: Profile,
    *,
    loop: str = "",
    connections: Sequence[int] = CONNECTIONS,
) -> dict[str, Any]:
    """The webhook (covering ``namespace``) and an echo floor answering ``answer``."""
    found = kubeapi.find_binaries()
    if isinstance(found, str):
        raise BenchError(f"e2e: {found}")
    if certs.ca_file is None:
        raise BenchError("e2e: the API server needs the CA of the servers' certificate")
    responses = work / "echo-responses.json"
    responses.write_text(json.dumps({"/mutate": answer}))
    pod = pod_of(review_body)
    bodies = write_bodies(work / "e2e-pod.jsonl", [json.dumps(pod, separators=(",", ":")).encode()])
    with ExitStack() as stack:
        echo = start_floor(
            HOST,
            free_port(HOST),
            certs.cert_file,
            certs.key_file,
            responses,
            work / "echo.log",
            loop=loop,
            echo=True,
        )
        stack.callback(echo.stop)
        log("e2e: starting kube-apiserver and etcd")
        api = kubeapi.KubeAPIServer(binary=found[0], etcd_binary=found[1])
        api.start()
        stack.callback(api.stop)
        ca_bundle = base64.b64encode(certs.ca_file.read_bytes()).decode()
        urls = {namespace: f"{webhook.base_url}/mutate", ECHO_NAMESPACE: f"{echo.base_url}/mutate"}
        asyncio.run(register(api, ca_bundle, urls))
        counters = {ECHO_NAMESPACE: echo_admissions(echo), namespace: webhook_admissions(webhook)}
        check_same_pod(api, pod, counters, patched="patch" in answer["response"])
        floor = Target(echo, dry_run_url(api, ECHO_NAMESPACE), counters[ECHO_NAMESPACE])
        hook = Target(webhook, dry_run_url(api, namespace), counters[namespace])
        rows = []
        for conns in connections:
            pair = alternate(Pair("e2e", conns), floor, hook, bodies, profile, bearer=api.token)
            rows.append(pair.summary())
    return {"pod": pod, "namespaces": {"webhook": namespace, "echo": ECHO_NAMESPACE}, "rows": rows}
