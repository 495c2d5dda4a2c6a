"""A transcript of 1,200 admissions, to show a change leaves what the webhook says alone.

``python -m bench.answers OUT`` runs 1,200 admissions drawn from a fixed seed
(online and air gap, CREATE, UPDATE and others, /mutate and /validate, Pods and
workloads, private, public, unknown, invalid and digest-pinned images, dry runs,
pull-secret warnings) through the real Admitter and VisibilityResolver, with the
probe answered from a table (every reason it gives) and the clocks scripted. It
writes every answer as the server sends it, the log lines in both formats and the
``/metrics`` text. Run it on two commits and compare the files byte for byte::

    git archive BASE webhook | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base .venv/bin/python -m bench.answers /tmp/before
    .venv/bin/python -m bench.answers /tmp/after && cmp /tmp/before /tmp/after

It uses only the package's stable entry points (config.parse, Admitter,
VisibilityResolver, Metrics, logs.setup, review.encode), so the same file runs
against either commit.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.reviews import ONLINE_CONFIG
from webhook import config, logs, review
from webhook.admission import Admitter
from webhook.metrics import Metrics
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.visibility import VisibilityResolver

ADMISSIONS = 1200
SEED = 20261206

PRIVATE = (
    "quay.io/private-org/api:v1",
    "quay.io/my-org/worker",
    "docker.io/acme/tool:2",
    "registry.example.com:5000/app:3",
    "acme/cli@sha256:" + "a" * 64,
)
PUBLIC = ("nginx:1.25", "docker.io/library/redis", "ghcr.io/public/tool:1", "busybox")
PROBED = (  # not settled by an override: the probe table below answers
    "quay.io/probe/public:1",
    "quay.io/probe/private",
    "quay.io/probe/missing:2",
    "quay.io/probe/limited",
    "quay.io/probe/broken",
    "quay.io/probe/slowdns",
    "10.0.0.5:5000/internal/app",
    "quay.io/probe/nowhere:1",
)
ODD = (
    "quay.io/Bad:1",
    "",
    "UPPER/x",
    "quay.io/private-org/api:" + "v" * 200,
    "proxy.replicated.com/proxy/my-app/quay.io/private-org/api:v1",
    "registry.local:5000/my-app/api:v1",
    "quay.io/private-org/api@sha256:" + "b" * 64,
    "registry.replicated.com/my-app/api:1",
    "registry.vendor.example/my-app/api:1",
    'quote " backslash \\ newline \n',
)
# path → (visibility, reason, retry_after): every reason the probe gives for these
PROBE_TABLE = {
    "probe/public": ("public", "anonymous-ok", None),
    "probe/private": ("private", "auth-required", None),
    "probe/missing": ("private", "not-found-anonymously", None),
    "probe/limited": ("unknown", "rate-limited", 30.0),
    "probe/broken": ("unknown", "server-error", None),
    "probe/slowdns": ("unknown", "dns-error", None),
    "internal/app": ("internal", "blocked-address", None),
}

OVERRIDES = ONLINE_CONFIG["visibility"]["overrides"]
CONFIGS: list[dict[str, Any]] = [
    {
        "appSlug": "my-app",
        "licenseID": "lic",
        "namespaces": ["my-app", "team-b"],
        "visibility": {"overrides": OVERRIDES},
    },
    {
        "appSlug": "my-app",
        "licenseID": "lic",
        "namespaces": ["*"],
        "mutateWorkloads": True,
        "visibility": {"overrides": OVERRIDES, "onProbeFailure": "deny"},
    },
    {
        "appSlug": "other",
        "licenseID": "lic",
        "namespaces": ["my-app"],
        "proxyDomain": "images.example.com",
        "registryDomain": "registry.vendor.example",
        "visibility": {"overrides": OVERRIDES, "onProbeFailure": "direct"},
        "server": {"maxImagesPerObject": 6},
    },
    {
        "appSlug": "my-app",
        "mode": "airgap",
        "namespaces": ["my-app", "team-b"],
        "mutateWorkloads": True,
        "airgap": {"registry": "registry.local:5000", "namespace": "my-app"},
    },
]
KINDS = (
    "Pod",
    "Pod",
    "Pod",
    "Deployment",
    "CronJob",
    "Job",
    "StatefulSet",
    "EphemeralContainers",
    "Unheard",
)
OPERATIONS = ("CREATE", "CREATE", "UPDATE", "UPDATE", "DELETE", "PATCH")
NAMESPACES = ("my-app", "my-app", "team-b", "elsewhere", "kube-system")


async def probe(domain: str, path: str, reference: str) -> ProbeResult:
    visibility, reason, retry_after = PROBE_TABLE.get(path, ("unknown", "timeout", None))
    return ProbeResult(Visibility(visibility), Reason(reason), retry_after)


class Secrets:
    """A cluster where team-b's pull secret cannot be written."""

    async def ensure(self, namespace: str, timeout: float) -> str | None:
        if namespace == "team-b":
            return "pull secret my-app-registry not written in team-b: forbidden"
        return None

    async def close(self) -> None:
        pass


def _spec(rng: random.Random) -> dict[str, Any]:
    pool = PRIVATE + PUBLIC + PROBED + (ODD if rng.random() < 0.3 else ())
    spec: dict[str, Any] = {
        "containers": [
            {"name": f"c{i}", "image": rng.choice(pool)} for i in range(rng.choice((1, 2, 3, 4, 8)))
        ]
    }
    if rng.random() < 0.3:
        spec["initContainers"] = [{"name": "i0", "image": rng.choice(pool)}]
    if rng.random() < 0.15:
        spec["ephemeralContainers"] = [{"name": "e0", "image": rng.choice(pool)}]
    if rng.random() < 0.2:
        spec["imagePullSecrets"] = [{"name": rng.choice(("my-app-registry", "mine"))}]
    if rng.random() < 0.1:
        spec["volumes"] = [{"name": "v", "image": {"reference": rng.choice(pool)}}]
    return spec


def _object(rng: random.Random, kind: str, namespace: str) -> dict[str, Any]:
    name = rng.choice(("web", "web-0", "café-日本", "n" * 70, "x"))
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if rng.random() < 0.2:
        metadata["annotations"] = {"images.example/original": "{}", "other": "1"}
    spec = _spec(rng)
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": kind, "metadata": metadata, "spec": spec}
    if kind == "EphemeralContainers":  # before Kubernetes 1.22: the object is its own spec
        return {"apiVersion": "v1", "kind": kind, "metadata": metadata, **spec}
    template = {"metadata": {"labels": {"app": "w"}}, "spec": spec}
    body: dict[str, Any] = {"template": template}
    if kind == "CronJob":
        body = {"schedule": "@hourly", "jobTemplate": {"spec": {"template": template}}}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": metadata, "spec": body}


def _review(rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(KINDS)
    operation = rng.choice(OPERATIONS)
    namespace = rng.choice(NAMESPACES)
    obj = _object(rng, "Pod" if kind == "Unheard" else kind, namespace)
    old = None
    if operation == "UPDATE":
        old = json.loads(json.dumps(obj)) if rng.random() < 0.5 else _object(rng, kind, namespace)
    request: dict[str, Any] = {
        "uid": str(uuid.UUID(int=rng.getrandbits(128))),
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
        "operation": operation,
        "namespace": namespace,
        "object": obj,
        "oldObject": old,
        "dryRun": rng.random() < 0.1,
        "userInfo": {"username": "admin"},
    }
    if rng.random() < 0.05:
        request["subResource"] = "ephemeralcontainers"
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    return json.dumps(body).encode(), rng.choice(("mutate", "mutate", "validate"))


def _script_clocks() -> None:
    """Each admission lasts the next of a few durations; time.time() moves 0.25 s a read."""
    durations = itertools.cycle((0.0001234, 0.0031, 0.0, 0.75, 12.5, 0.0000499))
    ticks = itertools.chain.from_iterable((0.0, d) for d in durations)
    time.perf_counter = lambda: next(ticks)
    now = itertools.count(1_700_000_000.0, 0.25)
    time.time = lambda: next(now)


async def _run(fmt: str, out: list[str]) -> None:
    logs.setup(fmt, "INFO")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    rng = random.Random(SEED)
    for number, data in enumerate(CONFIGS):
        settings = config.parse(data)
        metrics = Metrics()
        resolver = VisibilityResolver(settings.visibility, probe, 4, jitter=0, metrics=metrics)
        admitter = Admitter(
            settings, resolver=resolver, secrets=Secrets(), metrics=metrics, webhook_namespace="wh"
        )
        for _ in range(ADMISSIONS // len(CONFIGS)):
            body, endpoint = _review(rng)
            try:
                outcome = await admitter.admit(body, endpoint)  # type: ignore[arg-type]
            except review.ReviewError as error:
                out.append(f"400 {error}\n")
            else:
                out.append(review.encode(outcome.answer).decode() + "\n")
        await resolver.close()
        out.append(f"--- config {number}, {fmt} log\n{stream.getvalue()}")
        out.append(f"--- config {number} /metrics\n{metrics.render().decode()}")
        stream.seek(0)
        stream.truncate()


def main() -> None:
    _script_clocks()
    out: list[str] = []
    for fmt in ("json", "text"):
        asyncio.run(_run(fmt, out))
    Path(sys.argv[1]).write_text("".join(out), encoding="utf-8")


if __name__ == "__main__":
    main()
