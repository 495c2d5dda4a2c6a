"""Overload as the API server meets it: a 503 with ``Retry-After`` is retried.

When ``server.maxAdmissionsInFlight`` admissions are in flight, the webhook refuses
the next one at once with HTTP 503 and ``Retry-After: 1`` rather than queueing it.
The contract that makes this the right answer is the API server's: its webhook
client (client-go) waits the ``Retry-After`` and sends the review again, within the
webhook's ``timeoutSeconds``. Checked here against a real kube-apiserver with
``failurePolicy: Fail``, so that a refusal the API server did not retry would fail
the Pod's creation.

The connection table as the API server meets it: how many connections it opens to
the webhook at 16 and 64 creates at once, that Pods created while another process
holds more connections than ``server.maxConnections`` (idle, sending half their
headers, or dripping their bodies) are all stored mutated under ``failurePolicy:
Ignore``, and that the API server closes its idle connections before the webhook's
idle timeout would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s

from tests.e2e.admission_harness import (
    Answer,
    RunningWebhook,
    create_pod,
    mutating_webhook,
    namespaces,
    pod,
    read_pod,
    run_webhook,
    stored_view,
    wait_until_mutating,
)
from tests.e2e.kubeapi import KubeAPIServer
from tests.reliability.harness import REPO, sockets
from tests.support import certificates
from webhook import pki

pytestmark = pytest.mark.e2e

LOCAL = "registry.local:5000"
REFUSED = "too many in flight"
ATTACKER = "127.0.0.2"  # the attacking process's own address; the API server's is 127.0.0.1


@pytest.fixture
async def api(kube_apiserver: KubeAPIServer) -> AsyncIterator[k8s.ApiClient]:
    async with kube_apiserver.api_client() as client:
        yield client


async def test_a_refusal_for_overload_is_retried_by_the_api_server(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tag = uuid.uuid4().hex[:8]
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    certs: pki.CertPaths = certificates(tmp_path / "tls")
    settings = {
        "mode": "airgap",
        "namespaces": [app],
        "airgap": {"registry": LOCAL},
        "server": {"maxAdmissionsInFlight": 1},
    }
    caplog.set_level(logging.WARNING, logger="webhook.server")
    async with (
        run_webhook(settings, certs, secrets=None) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        # Take the only place: an admission whose body is still arriving.
        assert certs.ca_file is not None
        context = ssl.create_default_context(cafile=str(certs.ca_file))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", hook.settings.server.port, ssl=context, server_hostname="127.0.0.1"
        )
        writer.write(
            b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        creation = asyncio.create_task(create_pod(api, app, pod("p", {"app": "nginx:1.25"})))
        for _ in range(100):  # until the API server's call was refused
            if REFUSED in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert REFUSED in caplog.text
        assert not creation.done()
        # The place frees (that admission is answered: its body is no review).
        writer.write(b"}" + b" " * 98)
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 400")
        writer.close()
        answer = await creation
        assert answer.status == 201, answer.body
        assert stored_view(await read_pod(api, app, "p"))["images"] == {
            "app": f"{LOCAL}/nginx:1.25"
        }


# --- connections: what the API server opens, and an attack on the table ----------------


class Sampler:
    """Samples, from a thread, the connections this process holds on ``port`` (the
    webhook in-process): the most at once, and every distinct one seen."""

    def __init__(self, port: int, every: float = 0.005) -> None:
        self.port = port
        self.every = every
        self.most = 0
        self.seen: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = [
                s.remote for s in sockets() if s.local[1] == self.port and s.state == "ESTABLISHED"
            ]
            self.most = max(self.most, len(now))
            self.seen.update(now)
            time.sleep(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def count(self, source: str | None = None) -> int:
        """Connections held now (from ``source`` only, when given)."""
        return sum(
            1
            for s in sockets()
            if s.local[1] == self.port
            and s.state == "ESTABLISHED"
            and (source is None or s.remote[0] == source)
        )


async def create_all(
    api: k8s.ApiClient, namespace: str, names: list[str], at_once: int, *, dry_run: bool
) -> list[Answer]:
    """Creates a Pod per name, ``at_once`` at a time; the answers in order."""
    places = asyncio.Semaphore(at_once)

    async def one(name: str) -> Answer:
        async with places:
            return await create_pod(
                api, namespace, pod(name, {"app": "nginx:1.25"}), dry_run=dry_run
            )

    return await asyncio.gather(*(one(name) for name in names))


@contextlib.asynccontextmanager
async def airgap_webhook(
    kube: KubeAPIServer, api: k8s.ApiClient, tmp_path: Path, failure_policy: str = "Fail"
) -> AsyncIterator[tuple[RunningWebhook, str, Path]]:
    """The webhook in air-gap mode, mutating a new namespace: (webhook, namespace, CA)."""
    tag = uuid.uuid4().hex[:8]
    app = f"app-{tag}"
    await namespaces(kube, tag, app)
    certs = certificates(tmp_path / "tls")
    assert certs.ca_file is not None
    settings = {"mode": "airgap", "namespaces": [app], "airgap": {"registry": LOCAL}}
    async with (
        run_webhook(settings, certs, secrets=None) as hook,
        mutating_webhook(
            api,
            url=hook.url,
            ca_bundle=hook.ca_bundle,
            selector=tag,
            failure_policy=failure_policy,
        ),
    ):
        await wait_until_mutating(api, app)
        yield hook, app, certs.ca_file


def rewritten(answer: Answer) -> bool:
    return bool(answer.body["spec"]["containers"][0]["image"] == f"{LOCAL}/nginx:1.25")


@pytest.mark.parametrize("at_once", [16, 64])
async def test_connections_the_api_server_opens_to_the_webhook(
    kube_apiserver: KubeAPIServer, api: k8s.ApiClient, tmp_path: Path, at_once: int
) -> None:
    """Dry-run creates, ``at_once`` at a time: the API server holds about one connection
    to the webhook per call in flight (so its pool is the size of its concurrency, far
    below half of server.maxConnections at these rates)."""
    async with airgap_webhook(kube_apiserver, api, tmp_path) as (hook, app, _ca):
        names = [f"p{i}" for i in range(8 * at_once)]
        with Sampler(hook.settings.server.port) as sampler:
            answers = await create_all(api, app, names, at_once, dry_run=True)
            await asyncio.sleep(0.05)
        kept = sampler.count()
    assert [a.status for a in answers] == [201] * len(names)
    assert all(rewritten(a) for a in answers)
    print(
        f"\n{at_once} creates at once ({len(names)} dry runs): the API server held at most "
        f"{sampler.most} connections to the webhook at once, opened {len(sampler.seen)} in "
        f"all, kept {kept} idle after"
    )
    # (a connection dialled for a call that an idle one then took may add a few)
    assert 1 <= sampler.most <= 2 * at_once


@pytest.mark.parametrize("kind", ["idle", "half-headers", "slow-body"])
async def test_pods_created_while_one_client_holds_the_connection_table(
    kube_apiserver: KubeAPIServer, api: k8s.ApiClient, tmp_path: Path, kind: str
) -> None:
    """Another process holds 600 connections to the webhook from its own address (more
    than server.maxConnections, each reopened as soon as the webhook closes it) while
    Pods are created through the API server, failurePolicy Ignore: every create
    succeeds and every Pod is stored mutated."""
    async with airgap_webhook(kube_apiserver, api, tmp_path, "Ignore") as (hook, app, ca_file):
        port = hook.settings.server.port
        table = hook.settings.server.max_connections
        sampler = Sampler(port)
        started = time.monotonic()
        before = await create_all(api, app, [f"calm-{i}" for i in range(64)], 16, dry_run=False)
        calm = time.monotonic() - started
        attacker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.attacks",
            kind,
            "--port",
            str(port),
            "--ca",
            str(ca_file),
            "--source",
            ATTACKER,
            "--connections",
            "600",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            held = 0
            for _ in range(2400):  # until the attack holds the table (a loaded machine: slow)
                held = sampler.count(ATTACKER)
                if held >= table - 16:
                    break
                await asyncio.sleep(0.05)
            started = time.monotonic()
            names = [f"p{i}" for i in range(256)]
            answers = await create_all(api, app, names, 16, dry_run=False)
            attacked = time.monotonic() - started
            held_after = sampler.count(ATTACKER)
        finally:
            attacker.terminate()
            out, _ = await asyncio.wait_for(attacker.communicate(), 30)
        stored = [await read_pod(api, app, name) for name in names]
    unmutated = [
        s["metadata"]["name"]
        for s in stored
        if stored_view(s)["images"] != {"app": f"{LOCAL}/nginx:1.25"}
    ]
    print(
        f"\n{kind}: the attacker held {held} then {held_after} connections "
        f"(table {table}); tally {out.decode().strip().splitlines()[-1]}\n"
        f"64 creates before the attack in {calm:.2f}s ({calm / 64 * 16 * 1000:.0f} ms each), "
        f"256 during it in {attacked:.2f}s ({attacked / 256 * 16 * 1000:.0f} ms each), "
        f"16 at once; failed: {sum(a.status != 201 for a in answers)}, "
        f"stored unmutated: {len(unmutated)}"
    )
    assert all(a.status == 201 for a in before)
    assert held >= table - 16
    assert [a.status for a in answers] == [201] * len(names)
    assert unmutated == []


async def test_the_api_server_closes_its_idle_connections_before_the_idle_timeout(
    kube_apiserver: KubeAPIServer, api: k8s.ApiClient, tmp_path: Path
) -> None:
    """The API server (client-go, Go's http.Transport) closes a kept-alive connection
    it left idle for 90 s; server.idleTimeoutSeconds is longer, so the webhook never
    closes one under a request the API server is writing (which it would not resend:
    the Pod would go to failurePolicy)."""
    async with airgap_webhook(kube_apiserver, api, tmp_path) as (hook, app, _ca):
        idle_timeout = hook.settings.server.idle_timeout_seconds
        assert all(
            a.status == 201
            for a in await create_all(api, app, [f"p{i}" for i in range(8)], 8, dry_run=True)
        )
        sampler = Sampler(hook.settings.server.port)
        kept, started = sampler.count(), time.monotonic()
        for _ in range(int(idle_timeout + 10) * 2):
            if not sampler.count():
                break
            await asyncio.sleep(0.5)
        closed_after = time.monotonic() - started
    print(f"\nthe API server closed its {kept} idle connections after {closed_after:.1f}s")
    assert kept > 0
    assert 80 <= closed_after < idle_timeout
