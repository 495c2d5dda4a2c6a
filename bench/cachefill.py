"""Memory with many distinct repositories: the visibility cache stays within ``cacheSize``.

Runs in a process of its own so its RSS is its own. Admits Pods of 100 distinct
repositories each through the real Admitter and VisibilityResolver (only the
registry probe is a fake that answers "private" at once) until ``--entries``
distinct repositories have been seen, and prints one JSON line per checkpoint:
repositories seen, entries in the cache, the process's RSS.

    python -m bench.cachefill --cache-size 10000 --entries 100000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import uuid

from bench.harness import rss_kib
from webhook import config
from webhook.admission import Admitter
from webhook.metrics import Metrics
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.visibility import VisibilityResolver

PER_POD = 100


def settings(cache_size: int) -> config.Settings:
    return config.parse(
        {
            "appSlug": "bench",
            "licenseID": "bench-license",
            "namespaces": ["bench"],
            "visibility": {"cacheSize": cache_size},
        }
    )


def pod_body(first: int) -> bytes:
    containers = [
        {"name": f"c{i}", "image": f"registry.example.com/fill/r{first + i:07d}:v1"}
        for i in range(PER_POD)
    ]
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "bench",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"fill-{first}", "namespace": "bench"},
                "spec": {"containers": containers},
            },
        },
    }
    return json.dumps(review, separators=(",", ":")).encode()


async def private(domain: str, path: str, reference: str) -> ProbeResult:
    return ProbeResult(Visibility.PRIVATE, Reason.AUTH_REQUIRED)


def _rss_mib() -> float:
    gc.collect()
    return rss_kib_self()[0] / 1024


def rss_kib_self() -> tuple[int, int]:
    import os

    return rss_kib(os.getpid())


async def fill(cache_size: int, entries: int, checkpoints: list[int]) -> list[dict[str, float]]:
    metrics = Metrics()
    resolver = VisibilityResolver(
        settings(cache_size).visibility, private, max_concurrent=32, metrics=metrics
    )
    admitter = Admitter(settings(cache_size), resolver=resolver, metrics=metrics)
    points: list[dict[str, float]] = [
        {"repositories": 0, "cache_entries": 0, "rss_mib": round(_rss_mib(), 1)}
    ]
    wanted = sorted(set(checkpoints) | {entries})
    seen = 0
    while seen < entries:
        outcome = await admitter.admit(pod_body(seen), "mutate")
        if outcome.label != "mutated":
            raise RuntimeError(f"expected a mutation, got {outcome.label}")
        seen += PER_POD
        if wanted and seen >= wanted[0]:
            wanted.pop(0)
            points.append(
                {
                    "repositories": seen,
                    "cache_entries": resolver.size,
                    "rss_mib": round(_rss_mib(), 1),
                }
            )
    await resolver.close()
    return points


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cachefill", description=__doc__)
    parser.add_argument("--cache-size", type=int, default=10000)
    parser.add_argument("--entries", type=int, default=100000)
    parser.add_argument(
        "--checkpoints", default="", help="comma-separated repository counts to report at"
    )
    args = parser.parse_args(argv)
    checkpoints = [int(c) for c in args.checkpoints.split(",") if c]
    points = asyncio.run(fill(args.cache_size, args.entries, checkpoints))
    current, peak = rss_kib_self()
    result = {
        "cache_size": args.cache_size,
        "entries": args.entries,
        "points": points,
        "rss_mib": round(current / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
