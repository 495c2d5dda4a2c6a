"""In a real one-node cluster: the time the webhook adds to a Pod create.

    python -m bench.cluster                 # 3 rounds of 300 creates per target
    python -m bench.cluster --creates 50 --rounds 1

The cluster of the cluster tests (``tests/cluster/node.py``: kubelet, containerd,
the whole control plane in a network namespace of its own) runs the chart,
installed by the Helm CLI with its defaults (2 replicas, the mutating webhook
only) from the image built from this tree. The same dry-run create of a Pod with
one private image goes, in turns, to three namespaces:

- ``none``: no webhook is called (the API server's own cost);
- ``echo``: the echo floor (``bench.floor --echo``, the least any Python webhook
  must do, answering the webhook's own patch) as a MutatingWebhookConfiguration
  with a URL; it runs as a process on a node address (not in a Pod);
- ``webhook``: the webhook's Pods, through its Service.

One create at a time, so each figure is a latency, not a queue. Each target's
p50/p99 over all rounds, and what the webhook and the echo floor add to the
``none`` create (the difference of the p50s and of the p99s). Before measuring, a
create through the echo floor and one through the webhook must give the same Pod.
Needs root, the Kubernetes binaries (``.ci/build-kubernetes``), Helm
(``.ci/install-helm``) and the image build's tools (``.ci/build-image``). Writes
``bench/results/cluster.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.harness import ROOT, BenchError, Process, log, start_floor
from tests.cluster.images import pause_image
from tests.cluster.node import Cluster, kube_binary, running_cluster
from tests.cluster.node_registries import push_archive, start_registry
from tests.cluster.podload import Outcome, PodLoad, fast_client
from tests.cluster.webhook_release import WebhookRelease, post_review
from tests.cluster.workloads import create_namespace
from tests.e2e import admission_harness as admission
from tests.image.build import build_webhook_image
from tests.support import eventually
from webhook import pki

RESULTS = ROOT / "bench" / "results" / "cluster.json"
NAMESPACES = {"none": "bench-none", "echo": "bench-echo", "webhook": "bench"}
RELEASE_NAMESPACE = "ipw-bench"
APP_SLUG = "bench"
LICENSE_ID = "bench-license-7d1e"
PROXY_DOMAIN = "proxy.replicated.com"  # the chart's default; dry runs pull nothing
ECHO_PORT = 8443


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def summary(seconds: dict[str, list[float]]) -> dict[str, Any]:
    """Per target p50/p99 (ms), and what each webhook adds to the create without one."""
    rows: dict[str, Any] = {
        t: {
            "creates": len(s),
            "p50_ms": round(quantile(s, 50) * 1000, 2),
            "p99_ms": round(quantile(s, 99) * 1000, 2),
        }
        for t, s in seconds.items()
    }
    for target in ("echo", "webhook"):
        rows[target]["adds_p50_ms"] = round(rows[target]["p50_ms"] - rows["none"]["p50_ms"], 2)
        rows[target]["adds_p99_ms"] = round(rows[target]["p99_ms"] - rows["none"]["p99_ms"], 2)
    return rows


async def one_at_a_time(load: PodLoad, creates: int) -> list[float]:
    seconds = []
    for _ in range(creates):
        create = await load.create()
        if create.outcome is not Outcome.MUTATED:
            raise BenchError(f"{load.namespace}: a create ended {create.outcome}: {create.detail}")
        seconds.append(create.seconds)
    return seconds


async def measure(loads: dict[str, PodLoad], creates: int, rounds: int) -> dict[str, list[float]]:
    """``rounds`` rounds, each target's ``creates`` in turn (a busy moment moves all three)."""
    seconds: dict[str, list[float]] = {t: [] for t in loads}
    for _ in range(rounds):
        for target, load in loads.items():
            await one_at_a_time(load, 10)  # warm: connections open, caches filled
            seconds[target] += await one_at_a_time(load, creates)
    return seconds


def start_echo_floor(cluster: Cluster, work: Path, answer: dict[str, Any]) -> tuple[Process, str]:
    """The echo floor on a node address of its own; (process, CA bundle)."""
    address = cluster.take_address()
    certs = pki.generate(work / "echo-tls", (address,))
    responses = work / "echo-responses.json"
    responses.write_text(json.dumps({"/mutate": answer}))
    echo = cluster.namespace.call(
        lambda: start_floor(
            address,
            ECHO_PORT,
            certs.cert_file,
            certs.key_file,
            responses,
            work / "echo.log",
            echo=True,
        )
    )
    assert certs.ca_file is not None
    return echo, base64.b64encode(certs.ca_file.read_bytes()).decode()


def webhook_answer(cluster: Cluster, address: str, pod: dict[str, Any], namespace: str) -> Any:
    """The webhook Pod's own answer to the review of ``pod`` (what the echo floor returns)."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000000",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
            "dryRun": True,
            "userInfo": {"username": "admin"},
        },
    }
    body = json.dumps(review).encode()
    status, answer = cluster.namespace.call(lambda: post_review(address, body))
    if status != 200 or not answer["response"].get("patch"):
        raise BenchError(f"the webhook answered {status} {answer} to the review of {pod}")
    return answer


async def run(cluster: Cluster, work: Path, creates: int, rounds: int) -> dict[str, Any]:
    with ExitStack() as stack:
        vendor = start_registry(cluster, "bench-vendor", users={"bench": "bench-secret"})
        stack.callback(vendor.stop)
        archive = work / "app.tar"
        pause_image(archive, name=f"{vendor.domain}/team/app:v1", pause_binary=kube_binary("pause"))
        image = push_archive(cluster, vendor, archive, "team/app", "v1")
        rewritten = f"{PROXY_DOMAIN}/proxy/{APP_SLUG}/{image}"
        log("cluster: building the webhook's image")
        webhook_image = build_webhook_image(work)
        cluster.import_image(webhook_image.archive)
        async with cluster.api_client() as api:
            await create_namespace(api, RELEASE_NAMESPACE)
            await create_namespace(api, NAMESPACES["none"])
            await create_namespace(api, NAMESPACES["webhook"])
            await create_namespace(
                api, NAMESPACES["echo"], **{admission.SELECTOR_LABEL: NAMESPACES["echo"]}
            )
        repository, tag = webhook_image.ref.rsplit(":", 1)
        release = WebhookRelease(
            cluster,
            "ipw-bench",
            RELEASE_NAMESPACE,
            {
                "appSlug": APP_SLUG,
                "license": {"id": LICENSE_ID},
                "namespaces": [NAMESPACES["webhook"]],
                "image": {"repository": repository, "tag": tag},
                "probe": {"insecureRegistries": [vendor.domain], "allowPrivateNetworks": True},
            },
            work,
        )
        log("cluster: helm install")
        await release.install()
        assert cluster.apiserver is not None
        async with fast_client(cluster.apiserver.client_configuration()) as api:
            rollout = await release.wait_settled(api)
            loads = {
                "none": PodLoad(api, NAMESPACES["none"], image, image, 1.0),
                "echo": PodLoad(api, NAMESPACES["echo"], image, rewritten, 1.0),
                "webhook": PodLoad(api, NAMESPACES["webhook"], image, rewritten, 1.0),
            }

            async def mutating() -> bool:
                return (await loads["webhook"].create()).outcome is Outcome.MUTATED

            await eventually(mutating, timeout=60, what="the webhook to mutate Pods")
            pod = loads["echo"].manifest()
            answer = webhook_answer(
                cluster, rollout.ip(sorted(rollout.pods)[0]), pod, NAMESPACES["webhook"]
            )
            echo, ca_bundle = start_echo_floor(cluster, work, answer)
            stack.callback(echo.stop)
            path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
            config = admission.webhook_configuration(
                "bench-echo",
                url=f"{echo.base_url}/mutate",
                ca_bundle=ca_bundle,
                selector=NAMESPACES["echo"],
            )
            (await admission.call(api, "POST", path, config)).ok()

            async def echoing() -> bool:
                return (await loads["echo"].create()).outcome is Outcome.MUTATED

            await eventually(echoing, timeout=60, what="the echo floor to mutate Pods")
            views = {
                target: admission.stored_view(
                    (await admission.create_pod(api, NAMESPACES[target], pod, dry_run=True)).ok()
                )
                for target in ("echo", "webhook")
            }
            if views["echo"] != views["webhook"]:
                raise BenchError(f"the webhook and the echo floor admit different Pods: {views}")
            log(f"cluster: {rounds} rounds of {creates} creates per target")
            started = time.time()
            seconds = await measure(loads, creates, rounds)
            await admission.call(api, "DELETE", f"{path}/bench-echo")
        await release.uninstall()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "creates_per_round": creates,
        "rounds": rounds,
        "targets": summary(seconds),
    }


def render(results: dict[str, Any]) -> str:
    lines = ["target   creates  p50 ms  p99 ms  adds p50 ms  adds p99 ms"]
    for target, row in results["targets"].items():
        lines.append(
            f"{target:<8} {row['creates']:>7} {row['p50_ms']:>7} {row['p99_ms']:>7} "
            f"{row.get('adds_p50_ms', '-'):>12} {row.get('adds_p99_ms', '-'):>12}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--creates", type=int, default=300, help="creates per target per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="image-proxy-webhook-bench-cluster-"))
    try:
        with running_cluster(work / "cluster") as cluster:
            results = asyncio.run(run(cluster, work, args.creates, args.rounds))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nfigures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
