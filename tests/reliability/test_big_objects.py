"""The biggest reviews the server accepts, several at once, beside a normal admission.

The real server (``python -m webhook serve``, default limits) gets, concurrently and
in rounds, the worst bodies it still answers: an UPDATE whose object and oldObject
list ``server.maxImagesPerObject`` private images each (every one rewritten) and
fill ``server.maxRequestBytes``; a body of the same size that is the costliest JSON
to decode (as many empty arrays as accepted); and one with as many short strings as
accepted (the most memory per value). Beside them, one normal admission at a time.
What must hold: the server's peak RSS stays below the chart's memory limit, every
worst request gets a 200 or a quick 503 (in-flight bytes), nothing else, and
every normal admission is answered before the admission deadline. The figures are
printed (``-s``); speed belongs in bench/, the asserts are the contract's bounds.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.reliability.harness import ServerProcess, rss_kib, write_config
from tests.reviews import pod, review
from tests.support import certificates
from webhook.config import DEFAULT_MAX_REQUEST_BYTES, ServerSettings

CHART_MEMORY_LIMIT_KIB = 256 * 1024  # resources.limits.memory in the chart
DEADLINE = ServerSettings().admission_deadline_seconds
MAX_IMAGES = ServerSettings().max_images_per_object
MAX_JSON_VALUES = ServerSettings().max_json_values
ROUNDS = 3
WORST_AT_ONCE = 6  # two of each

pytestmark = pytest.mark.slow


def fill(data: dict[str, Any], padding: Any, size: int) -> bytes:
    """``data`` as JSON with ``padding`` repeated under ``request.object.spec.padding``
    until the body is just under ``size`` bytes."""
    empty = len(json.dumps(data, separators=(",", ":")).encode())
    one = len(json.dumps(padding).encode()) + 1
    data["request"]["object"]["spec"]["padding"] = [padding] * ((size - empty - 64) // one)
    body = json.dumps(data, separators=(",", ":")).encode()
    assert size - 1024 < len(body) <= size, len(body)
    return body


def most_images() -> bytes:
    """UPDATE, object and oldObject with the most images each, all private, rewritten."""
    images = [f"quay.io/my-org/service-{i:04d}/api:v1.{i}" for i in range(MAX_IMAGES)]
    old = pod(*images, annotations={"pad": "x" * (3 * 1024 * 1024 - 80 * MAX_IMAGES)})
    return fill(
        review(pod(*images), operation="UPDATE", old=old), "x" * 64, DEFAULT_MAX_REQUEST_BYTES
    )


def one_pod_holding(field: str, values: list[Any]) -> bytes:
    """A Pod review with ``values`` under ``spec.<field>``, then one string filling the
    body up to the size limit."""
    data = review(pod("quay.io/my-org/api:v1"))
    spec = data["request"]["object"]["spec"]
    spec[field] = values
    spec["padding"] = ""
    unpadded = len(json.dumps(data, separators=(",", ":")).encode())
    spec["padding"] = "x" * (DEFAULT_MAX_REQUEST_BYTES - unpadded - 64)
    return json.dumps(data, separators=(",", ":")).encode()


def costliest_json() -> bytes:
    """As many empty arrays (the costliest values to decode) as are accepted: each
    counts twice (its comma and its bracket), so half the cap."""
    return one_pod_holding("arrays", [[]] * (MAX_JSON_VALUES // 2 - 200))


def most_values() -> bytes:
    """As many short strings as are accepted (the most memory per value)."""
    return one_pod_holding("strings", [f"{i % 1000:03d}" for i in range(MAX_JSON_VALUES - 200)])


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, context: ssl.SSLContext
) -> tuple[int, float, Any]:
    started = time.monotonic()
    async with session.post(url, data=body, ssl=context) as response:
        answer = await response.json()
        return response.status, time.monotonic() - started, answer


async def test_the_worst_accepted_reviews_stay_within_memory_and_the_deadline(
    tmp_path: Path,
) -> None:
    certs = certificates(tmp_path / "tls")
    config = tmp_path / "config.yaml"
    write_config(
        config,
        certs,
        visibility={
            "overrides": [
                {"match": "quay.io/*", "visibility": "private"},
                {"match": "docker.io/*", "visibility": "public"},
            ]
        },
    )
    server = ServerProcess(config, tmp_path / "server.log", log_level="WARNING").start()
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    url = f"https://localhost:{server.port}/mutate"
    worst = [most_images(), costliest_json(), most_values()]
    normal = json.dumps(review(pod("nginx:1.25", "quay.io/my-org/api:v1"))).encode()
    statuses: Counter[int] = Counter()
    normal_seconds: list[float] = []
    worst_seconds: list[float] = []
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        ) as session:
            for _ in range(3):  # warm up
                assert (await post(session, url, normal, context))[0] == 200
            baseline = rss_kib(server.pid)
            for _round in range(ROUNDS):
                attack = [
                    asyncio.create_task(post(session, url, worst[i % len(worst)], context))
                    for i in range(WORST_AT_ONCE)
                ]
                while not all(task.done() for task in attack):
                    status, seconds, answer = await post(session, url, normal, context)
                    assert status == 200, answer
                    assert answer["response"]["allowed"] is True
                    normal_seconds.append(seconds)
                for status, seconds, answer in await asyncio.gather(*attack):
                    statuses[status] += 1
                    if status == 200:
                        worst_seconds.append(seconds)
                        assert answer["response"]["allowed"] is True
                    else:
                        assert status == 503, answer
                        assert answer["error"].startswith("too many admissions in flight")
            peak = rss_kib(server.pid, "VmHWM")
    finally:
        server.kill()
    normal_seconds.sort()
    print(
        f"\nbodies of {[len(body) // 1024 for body in worst]} KiB, {WORST_AT_ONCE} "
        f"at once x {ROUNDS} rounds: answers {dict(statuses)}; worst answered in "
        f"{min(worst_seconds):.2f}-{max(worst_seconds):.2f}s; RSS {baseline // 1024} MiB "
        f"after warm-up, peak {peak // 1024} MiB; {len(normal_seconds)} normal admissions "
        f"beside them: median {normal_seconds[len(normal_seconds) // 2] * 1000:.0f} ms, "
        f"max {normal_seconds[-1] * 1000:.0f} ms"
    )
    assert statuses[200] >= ROUNDS  # the worst ones are accepted, not all refused
    assert peak < CHART_MEMORY_LIMIT_KIB
    assert normal_seconds[-1] < DEADLINE
