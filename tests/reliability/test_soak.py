"""Load soak: the real server (``python -m webhook serve``) under concurrent admissions.

Runs for ``SOAK_SECONDS`` (default 10, as in CI; the full soak is 60:
``SOAK_SECONDS=60 python -m pytest tests/reliability/test_soak.py -s``), with
``SOAK_CONCURRENCY`` clients (default 16) looping over keep-alive TLS connections.
The config answers every image from its overrides, so no registry is needed and
the figure is the webhook's own: every answer is checked (status, uid, outcome,
patch), the failure count must be zero, and the server's RSS and open file
descriptors at the end are compared with the start (after a warm-up) and
reported. The bounds are generous on purpose (a busy 2-core machine): they catch
a leak of a few KiB per request over tens of thousands of requests, not noise.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.reliability.harness import ServerProcess, open_fds, rss_kib, write_config
from tests.reviews import pod, review
from tests.support import certificates

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "10"))
CONCURRENCY = int(os.environ.get("SOAK_CONCURRENCY", "16"))
WARMUP_SECONDS = 3.0
RSS_GROWTH_BOUND_KIB = 24 * 1024  # over the warmed-up start
PROXY = "proxy.replicated.com/proxy/my-app"


def cases() -> list[tuple[str, bytes, str, Any]]:
    """(endpoint, body, expected outcome, the images the patch writes)."""
    private = "quay.io/my-org/api:v1.0.1"
    public = "docker.io/library/nginx:1.25"
    out: list[tuple[str, bytes, str, Any]] = []

    def add(endpoint: str, body: dict[str, Any], outcome: str, images: Any = None) -> None:
        out.append((endpoint, json.dumps(body).encode(), outcome, images))

    add("mutate", review(pod(private, public)), "mutated", [f"{PROXY}/{private}"])
    add("mutate", review(pod(public, "nginx")), "allowed")
    add("mutate", review(pod(f"{PROXY}/{private}", pull_secrets=[{"name": "my-app-registry"}])),
        "allowed")  # fmt: skip
    add("mutate", review(pod("Not/A:Valid@Image")), "allowed")  # with a warning
    # UPDATE decides only the images it changes (docs/design.md §1)
    add("mutate", review(pod(private), operation="UPDATE", old=pod(public)), "mutated",
        [f"{PROXY}/{private}"])  # fmt: skip
    add("mutate", review(pod(private), operation="UPDATE", old=pod(private)), "allowed")
    add("mutate", review(pod(private, namespace="elsewhere")), "allowed")
    add("validate", review(pod(private)), "denied")
    add("validate", review(pod(public)), "allowed")
    return out


def outcome_of(response: dict[str, Any]) -> str:
    if not response["allowed"]:
        return "denied"
    return "mutated" if "patch" in response else "allowed"


async def client(
    session: aiohttp.ClientSession,
    base: str,
    context: ssl.SSLContext,
    stop_at: float,
    tally: Counter[str],
    failures: list[str],
    index: int,
) -> None:
    table = cases()
    i = index
    while time.monotonic() < stop_at:
        endpoint, body, expected, images = table[i % len(table)]
        i += 1
        uid = str(uuid.uuid4())
        data = json.loads(body)
        data["request"]["uid"] = uid
        try:
            async with session.post(
                f"{base}/{endpoint}", data=json.dumps(data).encode(), ssl=context
            ) as response:
                text = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures.append(f"{endpoint}: {type(exc).__name__}: {exc}")
            continue
        tally["requests"] += 1
        if status != 200:
            failures.append(f"{endpoint}: HTTP {status}: {text[:200]!r}")
            continue
        answer = json.loads(text)["response"]
        if answer["uid"] != uid or outcome_of(answer) != expected:
            failures.append(f"{endpoint}: expected {expected}, got {answer}")
            continue
        if images is not None:
            ops = json.loads(base64.b64decode(answer["patch"]))
            got = [op["value"] for op in ops if op["path"].endswith("/image")]
            if got != images:
                failures.append(f"{endpoint}: rewrote to {got}, expected {images}")
                continue
        tally[expected] += 1


@pytest.mark.slow
async def test_soak(tmp_path: Path) -> None:
    certs = certificates(tmp_path / "tls")
    config = tmp_path / "config.yaml"
    write_config(
        config,
        certs,
        namespaces=["my-app"],
        visibility={
            "overrides": [
                {"match": "quay.io/my-org/*", "visibility": "private"},
                {"match": "docker.io/library/*", "visibility": "public"},
            ]
        },
    )
    server = ServerProcess(config, tmp_path / "server.log", log_format="json").start()
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    base = f"https://localhost:{server.port}"
    try:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            warm: Counter[str] = Counter()
            warm_failures: list[str] = []
            # warm-up: caches, the connection pool, the allocator's arenas
            stop = time.monotonic() + WARMUP_SECONDS
            await asyncio.gather(
                *(
                    client(session, base, context, stop, warm, warm_failures, i)
                    for i in range(CONCURRENCY)
                )
            )
            assert not warm_failures, warm_failures[:5]
            rss_start, fds_start = rss_kib(server.pid), open_fds(server.pid)

            tally: Counter[str] = Counter()
            failures: list[str] = []
            started = time.monotonic()
            stop_at = started + SOAK_SECONDS
            await asyncio.gather(
                *(
                    client(session, base, context, stop_at, tally, failures, i)
                    for i in range(CONCURRENCY)
                )
            )
            elapsed = time.monotonic() - started
        rss_end, fds_end = rss_kib(server.pid), open_fds(server.pid)
    finally:
        server.signal()
        code = server.wait(30)
    rate = tally["requests"] / elapsed
    print(
        f"\nsoak: {SOAK_SECONDS:g}s x {CONCURRENCY} clients: {tally['requests']} admissions "
        f"({rate:.0f}/s), {len(failures)} failures; outcomes "
        f"{ {k: v for k, v in tally.items() if k != 'requests'} }; "
        f"RSS {rss_start} KiB -> {rss_end} KiB ({rss_end - rss_start:+d}); "
        f"fds {fds_start} -> {fds_end}"
    )
    assert code == 0, server.log_text()[-2000:]
    assert tally["requests"] > 0
    assert not failures, f"{len(failures)} failures, e.g. {failures[:5]}"
    assert rss_end - rss_start < RSS_GROWTH_BOUND_KIB, (rss_start, rss_end)
    assert fds_end <= fds_start + CONCURRENCY, (fds_start, fds_end)
    errors = [r for r in server.log_records() if r.get("level") in ("error", "critical")]
    assert not errors, errors[:3]
