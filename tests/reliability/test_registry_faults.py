"""Registry faults under load, through the real server (TLS, probe session, cache).

For each fault — a registry that hangs, accepts and stays silent, drips its
answer a byte at a time, resets connections, answers 5xx or 429 to everything,
presents a certificate nobody trusts, or whose name does not resolve — many
concurrent admissions name its images, in waves, and the test asserts:

- every admission is answered, within the admission deadline plus a small slack
  (the probe timeout is longer than the deadline on purpose: the deadline bounds);
- the outcome follows ``onProbeFailure``: ``proxy`` rewrites to the proxy and adds
  the pull secret, ``direct`` leaves the image with a warning, ``deny`` refuses;
- afterwards nothing has grown: no connection of the webhook is left open to the
  API-server side, no probe connection is half-closed (CLOSE_WAIT) or beyond the
  connector's per-host limit, the probe pool does not grow from wave to wave, no
  probe is still in flight and the event loop has exactly the tasks it had before.

The fakes are the ones of tests/integration/test_probe_faults.py, served on a
loopback address's port 80 (port-less image names, which the proxy path can
carry) from a thread of their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.fakes.registries import (
    ErroringRegistry,
    HangingRegistry,
    RateLimitingRegistry,
    RawRegistry,
    ResettingRegistry,
    SilentAcceptingRegistry,
)
from tests.integration.registries import TestCA
from tests.reliability.harness import (
    FakeThread,
    Sock,
    config_data,
    loopback_host,
    require_root_for_low_ports,
    sockets,
)
from tests.reviews import NoSecrets, pod, review
from tests.support import eventually
from webhook import config, service
from webhook.admission import Admitter
from webhook.visibility import VisibilityResolver

DEADLINE = 1.0  # server.admissionDeadlineSeconds
PROBE_TIMEOUT = 1.5  # probe.timeoutSeconds: longer than the deadline on purpose
SLACK = 1.5  # a shared 2-core machine doing TLS handshakes for every client
MAX_CONCURRENT = 8  # probe.maxConcurrent
CONCURRENT = 40  # admissions in flight at once, per wave
WAVES = 2
REPOSITORIES = 8  # distinct repositories on the faulty registry
PROXY = "proxy.replicated.com/proxy/my-app"


class DrippingRegistry(RawRegistry):
    """Answers a status line, then one byte of headers every 0.1 s, never finishing."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(0.1)


@dataclass
class Fault:
    name: str
    make: Any  # () -> fake, or None for "no server at all"
    reason: str  # what the probe must have reported
    tls: bool = False
    dns: bool = False


FAULTS = [
    Fault("hang", HangingRegistry, "timeout"),
    Fault("silent", SilentAcceptingRegistry, "timeout"),
    Fault("drip", DrippingRegistry, "timeout"),
    Fault("reset", ResettingRegistry, "connection-error"),
    Fault("5xx", lambda: ErroringRegistry(500), "server-error"),
    Fault("503-retry-after", lambda: ErroringRegistry(503, retry_after="1"), "server-error"),
    Fault("429", lambda: RateLimitingRegistry(None), "rate-limited"),
    Fault("untrusted-tls", lambda: ErroringRegistry(200), "tls-error", tls=True),
    Fault("dns", None, "dns-error", dns=True),
]


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeThread]:
    thread = FakeThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("untrusted-ca"))


@dataclass
class Running:
    admitter: Admitter
    resolver: VisibilityResolver
    url: str
    port: int
    client_ssl: ssl.SSLContext


async def start_fault(
    fault: Fault, fakes: FakeThread, test_ca: TestCA
) -> tuple[str, tuple[str, int] | None, list[str]]:
    """The fake for this fault: (registry domain for images, its address, insecure list)."""
    if fault.dns:
        return "registry.does-not-exist.invalid", None, []
    port = 443 if fault.tls else 80
    host = loopback_host(port)
    ssl_context = None
    if fault.tls:
        cert, key = test_ca.issue(f"fault-{host}", [host])
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(cert, key)
    fake = fault.make()
    await fakes.start(fake, host, port, ssl_context=ssl_context)
    # Plain HTTP for the listed host; the TLS one is reached over HTTPS, which
    # allowPrivateNetworks lets through to loopback, and fails on the certificate.
    return host, (host, port), [] if fault.tls else [host]


@pytest.fixture
async def serve(certs: Any) -> AsyncIterator[Any]:
    stack: list[Any] = []

    async def start(mode: str, insecure: list[str]) -> Running:
        settings = config.parse(
            config_data(
                certs,
                visibility={"onProbeFailure": mode, "failureTtlSeconds": 0.05},
                probe={
                    "timeoutSeconds": PROBE_TIMEOUT,
                    "insecureRegistries": insecure,
                    "allowPrivateNetworks": True,
                    "maxConcurrent": MAX_CONCURRENT,
                },
                server={"admissionDeadlineSeconds": DEADLINE},
            )
        )
        context = service.running(settings, secrets=NoSecrets())
        admitter, _health = await context.__aenter__()
        stack.append(context)
        resolver = admitter.resolver
        assert isinstance(resolver, VisibilityResolver)
        port = settings.server.port
        client_ssl = ssl.create_default_context(cafile=str(certs.ca_file))
        return Running(admitter, resolver, f"https://localhost:{port}", port, client_ssl)

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


async def admit(
    session: aiohttp.ClientSession, running: Running, images: list[str]
) -> tuple[float, dict[str, Any], dict[str, Any]]:
    obj = pod(*images)
    body = review(obj)
    started = time.perf_counter()
    async with session.post(f"{running.url}/mutate", json=body, ssl=running.client_ssl) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    elapsed = time.perf_counter() - started
    assert answer["response"]["uid"] == body["request"]["uid"]
    return elapsed, obj, answer["response"]


def check_outcome(mode: str, obj: dict[str, Any], response: dict[str, Any]) -> None:
    images = [c["image"] for c in obj["spec"]["containers"]]
    if mode == "deny":
        assert response["allowed"] is False
        assert "could not be checked for anonymous access" in response["status"]["message"]
        assert "patch" not in response
    elif mode == "direct":
        assert response["allowed"] is True
        assert "patch" not in response
        warnings = response["warnings"]
        assert len(warnings) == len(images)
        assert all("registry visibility unknown" in w for w in warnings)
    else:
        assert response["allowed"] is True
        ops = json.loads(base64.b64decode(response["patch"]))
        rewritten = [op["value"] for op in ops if op["path"].endswith("/image")]
        assert rewritten == [f"{PROXY}/{image}" for image in images]
        assert {
            "op": "add",
            "path": "/spec/imagePullSecrets",
            "value": [{"name": "my-app-registry"}],
        } in ops


def webhook_side(port: int) -> list[Sock]:
    """Connections accepted by the webhook's TLS listener (not the listener itself)."""
    return [s for s in sockets() if s.local[1] == port and s.state != "LISTEN"]


def probe_side(address: tuple[str, int] | None) -> list[Sock]:
    """The probe session's connections to the fake registry."""
    if address is None:
        return []
    return [s for s in sockets() if s.remote == address]


def webhook_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


@pytest.mark.parametrize(
    "mode",
    [
        "proxy",
        pytest.param("direct", marks=pytest.mark.slow),
        pytest.param("deny", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_fault_under_load(
    fault: Fault, mode: str, fakes: FakeThread, test_ca: TestCA, serve: Any
) -> None:
    if not fault.dns:
        require_root_for_low_ports()
    domain, address, insecure = await start_fault(fault, fakes, test_ca)
    running = await serve(mode, insecure)
    baseline_tasks = webhook_tasks()
    pools: list[int] = []
    slowest = 0.0
    for wave in range(WAVES):
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            results = await asyncio.gather(
                *(
                    admit(
                        session,
                        running,
                        [
                            f"{domain}/team/app{(wave * CONCURRENT + i) % REPOSITORIES}:v1",
                            f"{domain}/team/app{(wave * CONCURRENT + i + 3) % REPOSITORIES}:v2",
                        ],
                    )
                    for i in range(CONCURRENT)
                )
            )
        assert len(results) == CONCURRENT  # every admission answered
        for elapsed, obj, response in results:
            slowest = max(slowest, elapsed)
            assert elapsed < DEADLINE + SLACK, f"{fault.name}: admission took {elapsed:.2f}s"
            check_outcome(mode, obj, response)
        # Quiescence: the client is gone, probes have finished (each within its timeout).
        await eventually(
            lambda: running.resolver.in_flight == 0,
            timeout=PROBE_TIMEOUT * 4,
            what=lambda: f"no probe in flight ({running.resolver.in_flight})",
        )
        await eventually(
            lambda: not webhook_side(running.port),
            timeout=5,
            what=lambda: f"no client connection left ({webhook_side(running.port)})",
        )
        await eventually(
            lambda: not [s for s in probe_side(address) if s.state != "ESTABLISHED"],
            timeout=5,
            what=lambda: f"no half-closed probe connection ({probe_side(address)})",
        )
        pool = probe_side(address)
        assert len(pool) <= MAX_CONCURRENT, f"{len(pool)} probe connections to the registry"
        pools.append(len(pool))
    assert pools[-1] <= max(pools[0], 1), f"probe connections grew across waves: {pools}"
    # The fault was the one intended: every probe reported its reason, nothing else.
    metrics = running.admitter.metrics
    assert metrics is not None
    probes = [
        line
        for line in metrics.render().decode().splitlines()
        if line.startswith("image_proxy_webhook_registry_probes_total{")
    ]
    assert probes and all(f'reason="{fault.reason}"' in line for line in probes), probes
    await eventually(
        lambda: webhook_tasks() <= baseline_tasks,
        timeout=5,
        what=lambda: f"no task left behind ({webhook_tasks() - baseline_tasks} left)",
    )
    print(f"{fault.name}/{mode}: slowest admission {slowest:.3f}s, probe pool {pools}")
