"""Pull secrets at scale: the manager's start-up, steady state and a license rotation
against a real kube-apiserver holding N namespaces (docs/design.md §3).

The API server (``tests/e2e/kubeapi.py``: v1.20.2 and etcd on loopback) writes an
audit log of the requests of one user, ``webhook``, as which the pull-secret manager
(``webhook.pullsecrets.PullSecrets``, its ``run`` loop, ``namespaces: ["*"]``) runs in
this process, as one webhook replica does. Every figure comes from that log, one entry
per request (its last stage), so nothing the bench itself asks is counted:

- start-up: from the loop's start until the last namespace holds the secret (the time
  of the last successful create), and the requests made until then;
- settle: the requests of the 20 s after that;
- steady: the requests of a following idle window (``--steady`` seconds), by verb;
- rotation: the license file rewritten, the time until every namespace holds the new
  content (the last successful update) and the requests made until then.

Run from the repository root, one size at a time (it is heavy: the API server and
etcd with thousands of namespaces on the same cores)::

    .venv/bin/python -m bench.pullsecrets --namespaces 2000 --steady 330
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client as k8s

from bench.harness import log
from tests.e2e.kubeapi import KubeAPIServer, require_binaries
from webhook import pullsecrets
from webhook.config import Settings

USER = "webhook"
TOKEN = "bench-webhook-token"
SECRET = "bench-registry"
CREATE_CONCURRENCY = 32
SETTLE_SECONDS = 20.0


def audit_policy() -> dict[str, Any]:
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": [USER]}, {"level": "None"}],
    }


def _when(entry: dict[str, Any]) -> float:
    stamp = entry.get("stageTimestamp") or entry["requestReceivedTimestamp"]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def requests(log_file: Path) -> list[dict[str, Any]]:
    """The user's requests, one entry each (its last stage), oldest first, each with
    ``received`` and ``done`` (Unix seconds)."""
    by_id: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError), log_file.open() as lines:
        for line in lines:
            event = json.loads(line)
            by_id[event["auditID"]] = event
    entries = []
    for event in by_id.values():
        received = datetime.datetime.fromisoformat(
            event["requestReceivedTimestamp"].replace("Z", "+00:00")
        ).timestamp()
        entries.append({**event, "received": received, "done": _when(event)})
    return sorted(entries, key=lambda e: e["received"])


def summary(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    verbs: collections.Counter[str] = collections.Counter()
    for e in entries:
        ref = e.get("objectRef") or {}
        code = e.get("responseStatus", {}).get("code")
        verbs[f"{e['verb']} {ref.get('resource', '?')} {code}"] += 1
    return {"requests": len(entries), "by_verb": dict(sorted(verbs.items()))}


async def create_namespaces(kube: KubeAPIServer, count: int) -> list[str]:
    names = [f"tenant-{i:05d}" for i in range(count)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for name in names:
        queue.put_nowait(name)
    async with kube.api_client() as api:
        core = k8s.CoreV1Api(api)

        async def worker() -> None:
            while not queue.empty():
                name = queue.get_nowait()
                body = k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name))
                await core.create_namespace(body)

        await asyncio.gather(*(worker() for _ in range(CREATE_CONCURRENCY)))
    return names


def last_success(entries: Sequence[dict[str, Any]], verb: str, since: float) -> tuple[int, float]:
    """How many successful ``verb``s of secrets after ``since``, and when the last ended."""
    done = [
        e["done"]
        for e in entries
        if e["received"] >= since
        and e["verb"] == verb
        and (e.get("objectRef") or {}).get("resource") == "secrets"
        and e.get("responseStatus", {}).get("code") in (200, 201)
    ]
    return len(done), max(done, default=since)


async def wait_for(entries_of: Any, verb: str, since: float, wanted: int, limit: float) -> float:
    """When the ``wanted``-th successful ``verb`` after ``since`` ended (audit time)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        count, last = last_success(entries_of(), verb, since)
        if count >= wanted:
            return last
        await asyncio.sleep(1.0)
    count, _ = last_success(entries_of(), verb, since)
    raise RuntimeError(f"only {count} of {wanted} successful {verb}s within {limit} s")


async def measure(count: int, steady: float, work: Path) -> dict[str, Any]:
    apiserver, etcd = require_binaries()
    policy = work / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(audit_policy()))
    audit = work / "audit.log"
    kube = KubeAPIServer(
        binary=apiserver,
        etcd_binary=etcd,
        tokens={TOKEN: (USER, "system:masters")},
        extra_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit}",
            "--audit-log-format=json",
            "--audit-log-mode=batch",
            "--audit-log-batch-max-wait=1s",
        ],
    )
    await asyncio.to_thread(kube.start)
    result: dict[str, Any] = {"namespaces": count}
    try:
        began = time.monotonic()
        await create_namespaces(kube, count)
        log(f"{count} namespaces created in {time.monotonic() - began:.1f} s")
        license_file = work / "license"
        license_file.write_text("bench-license-1\n")
        settings = Settings(
            app_slug="bench",
            license_id_file=str(license_file),
            namespaces=("*",),
            pull_secret_name=SECRET,
        )
        async with kube.api_client() as api:
            listed = await k8s.CoreV1Api(api).list_namespace()
            covered = [n.metadata.name for n in listed.items if settings.covers(n.metadata.name)]
        configuration = kube.client_configuration()
        configuration.api_key = {"BearerToken": TOKEN}

        def entries() -> list[dict[str, Any]]:
            return requests(audit)

        async with k8s.ApiClient(configuration) as api:
            manager = pullsecrets.PullSecrets(
                api, settings, lambda: pullsecrets.read_credentials(settings)
            )
            start = time.time()
            loop = asyncio.create_task(manager.run(), name="pull-secrets")
            try:
                present = await wait_for(entries, "create", start, len(covered), 1800)
                ready = present - start
                log(f"every secret present {ready:.1f} s after start")
                await asyncio.sleep(SETTLE_SECONDS + 2)
                settled = present + SETTLE_SECONDS
                await asyncio.sleep(steady + 2)
                quiet_end = settled + steady
                everything = entries()
                result["startup"] = {
                    "seconds_until_present": round(ready, 2),
                    **summary([e for e in everything if e["received"] <= present]),
                }
                result["settle"] = {
                    "seconds": SETTLE_SECONDS,
                    **summary([e for e in everything if present < e["received"] <= settled]),
                }
                result["steady"] = {
                    "seconds": steady,
                    **summary([e for e in everything if settled < e["received"] <= quiet_end]),
                }
                log(f"steady state: {result['steady']}")
                rotated = time.time()
                license_file.write_text("bench-license-2\n")
                current = await wait_for(entries, "update", rotated, len(covered), 1800)
                result["rotation"] = {
                    "seconds_until_current": round(current - rotated, 2),
                    **summary([e for e in entries() if rotated <= e["received"] <= current]),
                }
                log(f"rotation: {result['rotation']}")
            finally:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
                await manager.close()
    finally:
        await asyncio.to_thread(kube.stop)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespaces", type=int, default=2000)
    parser.add_argument("--steady", type=float, default=330.0, help="idle window, seconds")
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument("--out", type=Path, help="append the JSON result to this file")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pullsecrets-") as work:
        result = asyncio.run(measure(options.namespaces, options.steady, Path(work)))
    result["label"] = options.label
    result["load1_at_end"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if options.out is not None:
        with options.out.open("a") as out:
            out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
