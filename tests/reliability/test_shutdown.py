"""Graceful shutdown of the real server process on SIGTERM.

``python -m webhook serve`` runs as a subprocess. Admissions are in flight, each
waiting about ``REGISTRY_DELAY`` seconds for a probe of a slow registry; more
clients keep sending quick admissions (answered from overrides) across the signal,
some on a connection each, some on one kept-alive connection reused request after
request as the API server does; a poller watches /readyz. Then SIGTERM, and:

- every admission in flight at the signal gets a complete, well-formed answer, and
  every answer written while draining says ``Connection: close``;
- readiness is 503 while the server drains (before the last in-flight answer);
- new connections are refused once the listener is closed, also while draining;
- every request sent across the signal is counted: it was either answered
  completely and correctly, refused at connect, or (a connection the kernel had
  queued as the listener closed) dropped without the server ever handling it,
  checked by its uid in the server's log; nothing else (no truncated answer, no
  5xx, no handled request left unanswered);
- a kept-alive connection in use across the signal loses no request: the answer to
  its next request says ``Connection: close`` and the server closes it only then
  (closing it while idle would race the client's next request, which the API
  server does not resend);
- the process exits 0 within shutdownTimeoutSeconds (plus interpreter slack).

A second test: admissions that would outlast shutdownTimeoutSeconds are cut at
that bound, and the process still exits 0 in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.registries import FakeRegistry
from tests.reliability.harness import FakeThread, ServerProcess, write_config
from tests.reviews import pod, review
from tests.support import certificates

REGISTRY_DELAY = 2.0  # seconds each in-flight admission waits for its probe
SHUTDOWN_TIMEOUT = 6.0  # server.shutdownTimeoutSeconds
EXIT_SLACK = 3.0  # interpreter teardown on a busy machine
IN_FLIGHT = 16
STREAMS = 4

pytestmark = pytest.mark.slow


class SlowPublicRegistry(FakeRegistry):
    """Answers 200 (public) after ``delay`` seconds; counts the requests it has begun."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.delay)
        return web.Response(status=200)


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeThread]:
    thread = FakeThread()
    yield thread
    thread.close()


@dataclass
class Tally:
    answered: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    first_refusal: float | None = None
    # Closed before any answer: a connection the kernel had queued (or TLS was still
    # setting up) when the listener closed. Legal only if the server never handled
    # the request, which the test checks in the server's log by uid.
    dropped: list[tuple[str, str, float]] = field(default_factory=list)  # label, uid, when
    answered_uids: list[str] = field(default_factory=list)
    # when each answer that said Connection: close arrived, by label
    closing: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def body_for(image: str) -> tuple[bytes, str]:
    data = review(pod(image))
    return json.dumps(data).encode(), data["request"]["uid"]


def check(status: int, text: bytes, uid: str) -> str | None:
    """None if this is a complete, well-formed, allowed answer for uid; else why not."""
    if status != 200:
        return f"HTTP {status}: {text[:200]!r}"
    try:
        answer = json.loads(text)
        response = answer["response"]
    except (ValueError, KeyError, TypeError):
        return f"not an AdmissionReview: {text[:200]!r}"
    if answer.get("kind") != "AdmissionReview" or response.get("uid") != uid:
        return f"wrong review: {answer}"
    if response.get("allowed") is not True:
        return f"not allowed: {response}"
    return None


async def post_once(
    url: str, image: str, context: ssl.SSLContext, tally: Tally, label: str
) -> None:
    """One admission on a connection of its own; the outcome goes into tally."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await post_on(session, url, image, context, tally, label)


async def post_on(
    session: aiohttp.ClientSession,
    url: str,
    image: str,
    context: ssl.SSLContext,
    tally: Tally,
    label: str,
) -> bool:
    """One admission on the session's connection (reused while kept alive); whether
    that connection ended (no answer, or one that said ``Connection: close``): the
    session's next request then goes on a new connection."""
    body, uid = body_for(image)
    tally.sent += 1
    try:
        async with session.post(url, data=body, ssl=context) as response:
            text = await response.read()
            problem = check(response.status, text, uid)
            closing = response.headers.get("Connection", "").lower() == "close"
            if closing:
                tally.closing[label].append(time.monotonic())
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            tally.refused += 1
            if tally.first_refusal is None:
                tally.first_refusal = time.monotonic()
            return True
        if isinstance(exc.os_error, ConnectionResetError | ssl.SSLError):
            tally.dropped.append((label, uid, time.monotonic()))
            return True
        tally.failures.append(f"{label}: {type(exc).__name__}: {exc}")
        return True
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if isinstance(exc, aiohttp.ServerDisconnectedError) or isinstance(
            exc.__cause__ or exc, ConnectionResetError
        ):
            tally.dropped.append((label, uid, time.monotonic()))
            return True
        tally.failures.append(f"{label}: {type(exc).__name__}: {exc}")
        return True
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.failures.append(f"{label}: {type(exc).__name__}: {exc}")
        return True
    if problem is None:
        tally.answered[label] += 1
        tally.answered_uids.append(uid)
    else:
        tally.failures.append(f"{label}: {problem}")
    return closing


async def readiness(port: int, stop: asyncio.Event) -> list[tuple[float, int | None]]:
    """/readyz every 20 ms until stopped: (time, status or None when nothing answered)."""
    seen: list[tuple[float, int | None]] = []
    timeout = aiohttp.ClientTimeout(total=1)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            status: int | None
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = None
            seen.append((time.monotonic(), status))
            await asyncio.sleep(0.02)
    return seen


def start_server(tmp_path: Path, registry_port: int, **server: Any) -> tuple[ServerProcess, Any]:
    certs = certificates(tmp_path / "tls")
    config = tmp_path / "config.yaml"
    write_config(
        config,
        certs,
        visibility={"overrides": [{"match": "docker.io/library/*", "visibility": "public"}]},
        probe={"insecureRegistries": ["127.0.0.1"], "timeoutSeconds": 20},
        server={"shutdownTimeoutSeconds": SHUTDOWN_TIMEOUT, **server},
    )
    process = ServerProcess(config, tmp_path / "server.log").start()
    return process, ssl.create_default_context(cafile=str(certs.ca_file))


async def wait_until(condition: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_sigterm_drains_in_flight_admissions(tmp_path: Path, fakes: FakeThread) -> None:
    registry = await fakes.start(SlowPublicRegistry(REGISTRY_DELAY))
    server, context = start_server(
        tmp_path, registry.port, admissionDeadlineSeconds=REGISTRY_DELAY * 3
    )
    url = f"https://localhost:{server.port}/mutate"
    tally = Tally()
    stop_polling = asyncio.Event()
    try:
        poller = asyncio.create_task(readiness(server.health_port, stop_polling))
        # Admissions that will be in flight at the signal: one slow repository each.
        slow = [
            asyncio.create_task(
                post_once(url, f"127.0.0.1:{registry.port}/team/app{i}:v1", context, tally, "slow")
            )
            for i in range(IN_FLIGHT)
        ]
        await wait_until(lambda: len(registry.requests) >= IN_FLIGHT, 20)

        # Quick admissions across the signal, until the listener refuses them.
        stream_stop = asyncio.Event()

        async def stream() -> None:
            while not stream_stop.is_set():
                await post_once(url, "nginx:1.25", context, tally, "quick")
                if tally.refused >= 3 * STREAMS:
                    return

        async def kept_alive() -> None:
            """One connection reused for request after request, as the API server does.
            A request on a connection that is new (the first, and the one after an
            answer said close) is labelled "quick": like those, it may meet a listener
            closing under it."""
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                label = "quick"
                while not stream_stop.is_set():
                    ended = await post_on(session, url, "nginx:1.25", context, tally, label)
                    label = "quick" if ended else "reused"
                    if tally.refused >= 3 * STREAMS:
                        return

        streams = [asyncio.create_task(stream()) for _ in range(STREAMS)]
        streams += [asyncio.create_task(kept_alive()) for _ in range(STREAMS)]
        await wait_until(lambda: tally.answered["quick"] and tally.answered["reused"], 20)
        assert not tally.failures, tally.failures[:3]

        signalled = time.monotonic()
        server.signal()
        await asyncio.gather(*slow)
        last_slow_answer = time.monotonic()
        stream_stop.set()
        await asyncio.gather(*streams)
        code = await asyncio.to_thread(server.wait, SHUTDOWN_TIMEOUT + EXIT_SLACK)
        exited = time.monotonic()
        stop_polling.set()
        states = await poller
    finally:
        stop_polling.set()
        server.kill()

    dropped = Counter(label for label, _uid, _when in tally.dropped)
    print(
        f"\nshutdown: {tally.sent} sent ({STREAMS} streams on fresh connections, "
        f"{STREAMS} on one kept-alive connection each), answered {dict(tally.answered)}, "
        f"refused {tally.refused}, dropped unhandled {dict(dropped)}, failures "
        f"{len(tally.failures)}; last in-flight answer "
        f"{last_slow_answer - signalled:.2f}s and exit {exited - signalled:.2f}s after SIGTERM"
    )
    assert not tally.failures, tally.failures[:5]
    assert tally.answered["slow"] == IN_FLIGHT  # every in-flight admission answered
    counted = sum(tally.answered.values()) + tally.refused + len(tally.dropped)
    assert counted == tally.sent  # every request counted
    # A connection closed without an answer is one the server never handled: only
    # quick ones sent across the signal, and none of their uids in the server's log
    # (which names every admission it answers, as the control shows).
    server_log = server.log_text()
    assert tally.answered_uids[0] in server_log
    for label, uid, when in tally.dropped:
        assert label == "quick" and when > signalled, (label, uid)
        assert uid not in server_log, f"request {uid} was handled, yet its connection dropped"
    # once draining, every answer says Connection: close; on a kept-alive connection
    # none did before the signal (the fresh connections ask for close themselves)
    assert len(tally.closing["slow"]) == IN_FLIGHT
    assert all(when > signalled for when in tally.closing["slow"] + tally.closing["reused"])
    assert code == 0, server.log_text()[-3000:]
    assert exited - signalled < SHUTDOWN_TIMEOUT + EXIT_SLACK
    # the in-flight admissions really were in flight: they waited for the registry
    assert last_slow_answer - signalled > 0.5
    # readiness: 200 before the signal, 503 while draining
    before = [s for t, s in states if t < signalled]
    draining = [s for t, s in states if signalled < t < last_slow_answer]
    assert before and set(before) == {200}, before
    assert 503 in draining, draining
    # new connections refused while the in-flight ones were still being answered
    assert tally.first_refusal is not None and tally.first_refusal < last_slow_answer
    log = server.log_text()
    assert "signal received" in log and "stopped" in log


async def test_admissions_outlasting_the_shutdown_timeout_are_cut_at_it(
    tmp_path: Path, fakes: FakeThread
) -> None:
    """The exit is bounded by shutdownTimeoutSeconds even if an admission is not done.

    An admission still running then gets no answer (the API server applies the
    webhook's failurePolicy); keep admissionDeadlineSeconds below
    shutdownTimeoutSeconds (the defaults are 8 and 15) so this never happens.
    """
    registry = await fakes.start(SlowPublicRegistry(60))
    server, context = start_server(
        tmp_path, registry.port, shutdownTimeoutSeconds=1.0, admissionDeadlineSeconds=20
    )
    url = f"https://localhost:{server.port}/mutate"
    tally = Tally()
    try:
        stuck = asyncio.create_task(
            post_once(url, f"127.0.0.1:{registry.port}/team/stuck:v1", context, tally, "stuck")
        )
        await wait_until(lambda: len(registry.requests) >= 1, 20)
        signalled = time.monotonic()
        server.signal()
        code = await asyncio.to_thread(server.wait, 1.0 + EXIT_SLACK)
        exited = time.monotonic()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(stuck, 5)
    finally:
        server.kill()
    assert code == 0, server.log_text()[-3000:]
    assert exited - signalled < 1.0 + EXIT_SLACK
    # its connection is closed without an answer
    assert tally.answered["stuck"] == 0 and not tally.failures, tally
    assert [label for label, _uid, _when in tally.dropped] == ["stuck"], tally
