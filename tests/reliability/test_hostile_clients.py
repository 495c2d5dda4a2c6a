"""What a client that reaches the webhook's port can hold: connections and descriptors.

The real server (``python -m webhook serve``) with short timeouts, attacked over real
sockets: a connection that never starts its TLS handshake, an idle TLS connection,
one that sends half its headers (or drips them), more connections than
``server.maxConnections``, and a gzip bomb. Each is closed or refused as the settings
say, and the server's descriptors stay bounded.

Then one client (127.0.0.1) against the default table of 512 while another client
(127.0.0.2) sends normal admissions: 600 idle TLS connections, 600 that send half
their headers, and 512 kept busy with valid requests whose bodies drip. The other
client's admissions are answered at once each time; the figures are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import resource
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import attacks
from tests.attacks import Target
from tests.reliability.harness import ServerProcess, open_fds, rss_kib, sockets, write_config
from tests.reviews import pod, review
from tests.support import certificates, eventually

HANDSHAKE_TIMEOUT = 1.0
HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
MAX_CONNECTIONS = 16
SLACK = 3.0  # a busy two-core machine

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def running(
    factory: pytest.TempPathFactory, name: str, **server: float
) -> Iterator[tuple[ServerProcess, Any]]:
    """The real server with these ``server`` settings, and a client context trusting it."""
    tmp = factory.mktemp(name)
    certs = certificates(tmp / "tls")
    config = tmp / "config.yaml"
    write_config(
        config,
        certs,
        visibility={"overrides": [{"match": "*", "visibility": "public"}]},
        server=server,
    )
    # The usual soft limit of a container; the server raises it to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        process = ServerProcess(config, tmp / "server.log").start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield process, ssl.create_default_context(cafile=str(certs.ca_file))
    finally:
        process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Any]]:
    """Short timeouts and a small table."""
    with running(
        tmp_path_factory,
        "hostile",
        tlsHandshakeTimeoutSeconds=HANDSHAKE_TIMEOUT,
        headerTimeoutSeconds=HEADER_TIMEOUT,
        idleTimeoutSeconds=IDLE_TIMEOUT,
        maxConnections=MAX_CONNECTIONS,
    ) as started:
        yield started


def established(server: ServerProcess) -> int:
    """Connections the server holds on its webhook port."""
    return sum(
        1 for s in sockets(server.pid) if s.local[1] == server.port and s.state == "ESTABLISHED"
    )


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closed the connection (EOF), failing past ``limit``."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            while await reader.read(1024):
                pass
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def tls_connection(
    server: ServerProcess, context: ssl.SSLContext, source: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=context, server_hostname="localhost", local_addr=(source, 0)
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def admit(server: ServerProcess, context: ssl.SSLContext, source: str = "127.0.0.1") -> int:
    """One admission on a new connection from ``source``; its status."""
    body = json.dumps(review(pod("nginx:1.25"))).encode()
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0))) as session,
        session.post(f"https://127.0.0.1:{server.port}/mutate", data=body, ssl=context) as response,
    ):
        answer = await response.json()
        assert answer["response"]["allowed"] is True
        return response.status


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(
    server: tuple[ServerProcess, Any],
) -> None:
    process, _context = server
    limits = Path(f"/proc/{process.pid}/limits").read_text().splitlines()
    line = next(line for line in limits if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    print(f"\nserver descriptors: soft {soft}, hard {hard} (started with a soft 1024)")
    assert soft == hard


async def test_a_connection_that_never_starts_tls_is_closed(
    server: tuple[ServerProcess, Any],
) -> None:
    process, _context = server
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
    try:
        seconds = await closed_after(reader, HANDSHAKE_TIMEOUT + SLACK)
    finally:
        writer.close()
    print(f"\nno ClientHello: closed after {seconds:.2f}s")
    assert seconds >= HANDSHAKE_TIMEOUT * 0.8


async def test_a_tls_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    server: tuple[ServerProcess, Any],
) -> None:
    """The first request's headers are due headerTimeoutSeconds after the accept: a
    connection that never sends one is not kept for the (longer) idle timeout."""
    process, context = server
    started = time.monotonic()
    async with tls_connection(process, context) as (reader, _writer):
        await closed_after(reader, HEADER_TIMEOUT + SLACK)
    seconds = time.monotonic() - started
    print(f"\nTLS connection sending nothing: closed {seconds:.2f}s after connecting")
    assert HEADER_TIMEOUT * 0.8 <= seconds < IDLE_TIMEOUT


def raw_request(method: str, path: str) -> bytes:
    body = json.dumps(review(pod("nginx:1.25"))).encode()
    return (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, status: int
) -> None:
    """One request on a kept-alive connection; its answer, which keeps it alive."""
    writer.write(request)
    assert (await reader.readline()).startswith(f"HTTP/1.1 {status} ".encode())
    headers = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    assert "connection: close" not in headers
    length = int(headers.split("content-length:")[1].split("\r\n")[0])
    await reader.readexactly(length)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/mutate", 200), ("GET", "/no-such-path", 404), ("GET", "/mutate", 405)],
)
async def test_a_keep_alive_connection_is_closed_when_idle_after_an_answer(
    server: tuple[ServerProcess, Any], method: str, path: str, status: int
) -> None:
    """After its answer (an admission's, or the router's refusal of an unknown path or
    method) the connection is idle: closed at the idle timeout, not the header one."""
    process, context = server
    async with tls_connection(process, context) as (reader, writer):
        for _ in range(2):  # the connection is reused, then left idle
            await exchange(reader, writer, raw_request(method, path), status)
        seconds = await closed_after(reader, IDLE_TIMEOUT + SLACK)
    assert seconds >= IDLE_TIMEOUT * 0.8


async def test_a_connection_in_use_outlives_the_timeouts(
    server: tuple[ServerProcess, Any],
) -> None:
    """Requests every 0.3 s for longer than both timeouts: each moves the connection's
    deadline, none is refused, and the idle timeout counts from the last answer."""
    process, context = server
    async with tls_connection(process, context) as (reader, writer):
        started = time.monotonic()
        while time.monotonic() - started < IDLE_TIMEOUT + HEADER_TIMEOUT:
            await exchange(reader, writer, raw_request("POST", "/mutate"), 200)
            await asyncio.sleep(0.3)
        seconds = await closed_after(reader, IDLE_TIMEOUT + SLACK)
    assert seconds >= IDLE_TIMEOUT * 0.8 - 0.3


@pytest.mark.parametrize("drip", [False, True])
async def test_half_sent_headers_are_closed_after_the_header_timeout(
    server: tuple[ServerProcess, Any], drip: bool
) -> None:
    """Half a request head, then nothing (or one byte every 0.2 s): closed once
    headerTimeoutSeconds have passed since its first byte, without an answer."""
    process, context = server
    async with tls_connection(process, context) as (reader, writer):
        writer.write(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-")
        started = time.monotonic()

        async def dripping() -> None:
            while drip:
                await asyncio.sleep(0.2)
                writer.write(b"X")

        dripper = asyncio.create_task(dripping())
        try:
            data = b""
            async with asyncio.timeout(HEADER_TIMEOUT + SLACK):
                with contextlib.suppress(ConnectionResetError, ssl.SSLError):
                    while chunk := await reader.read(1024):
                        data += chunk
            seconds = time.monotonic() - started
        finally:
            dripper.cancel()
    print(f"\nhalf headers (drip={drip}): closed after {seconds:.2f}s")
    assert data == b""  # no answer to a request never read
    assert seconds >= HEADER_TIMEOUT * 0.8


async def test_a_full_table_makes_room_from_the_client_holding_the_most(
    server: tuple[ServerProcess, Any],
) -> None:
    """The table full of one client's connections: another client's connection is
    served at once, and the connection closed to make room is the first client's least
    recently active one, not the other client's kept-alive one."""
    process, context = server
    other = Target("127.0.0.1", process.port, context, source="127.0.0.2")
    async with contextlib.AsyncExitStack() as held:
        # the other client: one kept-alive connection, answered once
        kept = await held.enter_async_context(tls_connection(process, context, other.source))
        await exchange(*kept, raw_request("POST", "/mutate"), 200)
        # the first client fills the rest of the table, then opens as many again
        mine = []
        for _ in range(2 * MAX_CONNECTIONS):
            mine.append(await held.enter_async_context(tls_connection(process, context)))
        assert established(process) == MAX_CONNECTIONS
        # its oldest ones made room for its newest; the other client's stayed
        assert all(await asyncio.gather(*(gone(reader) for reader, _ in mine[:MAX_CONNECTIONS])))
        assert not any(
            await asyncio.gather(*(gone(reader) for reader, _ in mine[MAX_CONNECTIONS + 1 :]))
        )
        await exchange(*kept, raw_request("POST", "/mutate"), 200)
        # a new connection of the other client takes a place at once
        started = time.monotonic()
        assert await admit(process, context, source=other.source) == 200
        print(f"\nan admission on a new connection, table full: {time.monotonic() - started:.3f}s")
        assert not await gone(kept[0])


async def gone(reader: asyncio.StreamReader, wait: float = 0.5) -> bool:
    """Whether the server closed this (otherwise silent) connection within ``wait``."""
    try:
        async with asyncio.timeout(wait):
            with contextlib.suppress(ConnectionResetError, ssl.SSLError):
                await reader.read(1)
    except TimeoutError:
        return False
    return True


async def test_a_new_connection_waits_only_while_every_connection_is_busy(
    server: tuple[ServerProcess, Any],
) -> None:
    """Every place held by a request whose body is still arriving: the next connection
    waits (in the backlog, or accepted and not served) since nothing can be closed to
    make room, and is served as soon as one of those requests is answered."""
    process, context = server
    fds_before = open_fds(process.pid)
    content = json.dumps(review(pod("nginx:1.25"))).encode()
    head = raw_request("POST", "/mutate")[: -len(content)]
    async with contextlib.AsyncExitStack() as held:
        busy = []
        for _ in range(MAX_CONNECTIONS):
            reader, writer = await held.enter_async_context(tls_connection(process, context))
            writer.write(head + content[:1])
            busy.append((reader, writer))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(admit(process, context, source="127.0.0.2"))
        await asyncio.sleep(HEADER_TIMEOUT * 2)  # past the header timeout: no deadline holds
        assert not waiting.done()
        # (the accept loop may hold the waiting one accepted but unserved)
        assert established(process) <= MAX_CONNECTIONS + 1
        fds_at_cap = open_fds(process.pid)
        # one request's body completes: it is answered, and its place goes to the waiting one
        reader, writer = busy[0]
        writer.write(content[1:])
        assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        async with asyncio.timeout(SLACK):
            assert await waiting == 200
    print(
        f"\ndescriptors: {fds_before} idle, {fds_at_cap} with {MAX_CONNECTIONS} busy "
        "connections (the cap) and one more waiting"
    )
    assert fds_at_cap - fds_before <= MAX_CONNECTIONS + 1


async def test_a_gzip_bomb_is_refused_before_it_is_read(
    server: tuple[ServerProcess, Any],
) -> None:
    """256 MiB of zeros, 256 KiB compressed: 415 from the headers, nothing inflated."""
    process, context = server
    bomb = gzip.compress(b"\0" * (256 << 20), compresslevel=9)
    rss_before = rss_kib(process.pid)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://localhost:{process.port}/mutate",
            data=bomb,
            ssl=context,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 415
        assert (await response.json())["error"].startswith("Content-Encoding 'gzip'")
    assert rss_kib(process.pid) - rss_before < 16 * 1024


# --- the default table (512) against 600 connections of one client ---------------------

TABLE = 512  # server.maxConnections's default
ATTACK = 600


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Any]]:
    """The default table; timeouts long enough that only making room can serve others."""
    with running(
        tmp_path_factory, "roomy", headerTimeoutSeconds=30, idleTimeoutSeconds=60
    ) as started:
        yield started


@pytest.fixture(scope="module")
def prompt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Any]]:
    """The default table, a 3 s header timeout, a 3 s admission deadline."""
    with running(
        tmp_path_factory, "prompt", headerTimeoutSeconds=3, admissionDeadlineSeconds=3
    ) as started:
        yield started


async def timed_admissions(
    process: ServerProcess, context: ssl.SSLContext, count: int
) -> tuple[list[int], list[float]]:
    """``count`` admissions from another client (127.0.0.2), one after another on one
    kept-alive connection as the API server sends them: statuses and seconds each."""
    body = json.dumps(review(pod("nginx:1.25"))).encode()
    statuses, seconds = [], []
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            started = time.monotonic()
            async with session.post(
                f"https://127.0.0.1:{process.port}/mutate", data=body, ssl=context
            ) as response:
                await response.read()
                statuses.append(response.status)
            seconds.append(time.monotonic() - started)
    return statuses, seconds


def milliseconds(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return (
        f"p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms over {len(ordered)}"
    )


async def test_600_idle_connections_of_one_client_do_not_keep_another_waiting(
    roomy: tuple[ServerProcess, Any],
) -> None:
    process, context = roomy
    fds_before, rss_before = open_fds(process.pid), rss_kib(process.pid)
    stop = asyncio.Event()
    target = Target("127.0.0.1", process.port, context)
    attack = asyncio.create_task(attacks.attack(target, "idle", ATTACK, stop))
    try:
        await eventually(
            lambda: established(process) >= TABLE,
            timeout=60,
            what=lambda: f"{TABLE} connections established ({established(process)})",
        )
        fds_full, rss_full = open_fds(process.pid), rss_kib(process.pid)
        statuses, seconds = await timed_admissions(process, context, 50)
        fresh = []
        for _ in range(10):  # and on a new connection each
            started = time.monotonic()
            assert await admit(process, context, source="127.0.0.2") == 200
            fresh.append(time.monotonic() - started)
        held = established(process)
    finally:
        stop.set()
        tally = await attack
    print(
        f"\nattack: {tally.summary()}\n"
        f"admissions beside it, kept-alive: {milliseconds(seconds)}; "
        f"each on a new connection: {milliseconds(fresh)}\n"
        f"server descriptors {fds_before} -> {fds_full}, RSS {rss_before // 1024} -> "
        f"{rss_full // 1024} MiB with the table full ({held} connections)"
    )
    assert statuses == [200] * 50
    assert max(seconds + fresh) < SLACK  # answered at once, not after a timeout (30 s)
    assert held <= TABLE + 1
    assert fds_full - fds_before <= TABLE + 2
    assert rss_full - rss_before < 64 * 1024  # about 65 KiB per TLS connection
    # 88 of the attack's connections made room for its last 88, then (at most) one
    # each for the other client's 11 connections
    assert tally.opened == ATTACK and tally.answered == 0
    assert ATTACK - TABLE <= tally.closed <= ATTACK - TABLE + 11


async def test_600_connections_sending_half_their_headers_are_closed_after_the_timeout(
    prompt: tuple[ServerProcess, Any],
) -> None:
    """Each closed about headerTimeoutSeconds after it connected, without an answer;
    the first 88 sooner, to make room for the last 88."""
    process, context = prompt
    fds_before = open_fds(process.pid)
    target = Target("127.0.0.1", process.port, context)
    async with asyncio.timeout(60):
        tally = await attacks.attack(target, "half-headers", ATTACK, asyncio.Event())
    print(f"\nhalf headers: {tally.summary()}")
    assert tally.opened == tally.closed == ATTACK
    assert tally.answered == 0
    assert max(tally.lifetimes) < 3 + SLACK
    # the 512 connections that nothing came after to make room for: the timeout closed them
    assert sorted(tally.lifetimes)[ATTACK - TABLE] >= 3 * 0.8
    await eventually(
        lambda: open_fds(process.pid) <= fds_before + 2,
        timeout=SLACK,
        what=lambda: f"descriptors back to {fds_before} + 2 ({open_fds(process.pid)})",
    )


async def test_512_slow_requests_of_one_client_beside_normal_admissions(
    prompt: tuple[ServerProcess, Any],
) -> None:
    """One client keeps 512 connections busy with valid requests whose bodies drip (a
    byte every 0.2 s), reopening each as it is closed: it holds at most
    maxAdmissionsInFlight places (the rest are refused with 503 at once), each for
    at most the admission deadline, and gives a place up whenever another client's
    request needs one: that client's admissions are all answered."""
    process, context = prompt
    fds_before, rss_before = open_fds(process.pid), rss_kib(process.pid)
    stop = asyncio.Event()
    target = Target("127.0.0.1", process.port, context)
    attack = asyncio.create_task(
        attacks.attack(target, "slow-body", TABLE, stop, reopen=True, drip=0.2)
    )
    try:
        await eventually(
            lambda: established(process) >= TABLE - 16,
            timeout=60,
            what=lambda: f"{TABLE - 16} connections established ({established(process)})",
        )
        fds_full, rss_full = open_fds(process.pid), rss_kib(process.pid)
        statuses, seconds = await timed_admissions(process, context, 50)
        held = established(process)
        await asyncio.sleep(3 + SLACK)  # the admission deadline passes for every slow one
    finally:
        stop.set()
        tally = await attack
    print(
        f"\nattack: {tally.summary()}\n"
        f"admissions beside it: {milliseconds(seconds)}\n"
        f"server descriptors {fds_before} -> {fds_full}, RSS {rss_before // 1024} -> "
        f"{rss_full // 1024} MiB ({held} connections)"
    )
    assert statuses == [200] * 50
    assert max(seconds) < SLACK
    assert held <= TABLE + 1
    assert fds_full - fds_before <= TABLE + 2
    assert rss_full - rss_before < 64 * 1024
    # each slow request was answered (503 at once, or 408 by the 3 s admission
    # deadline or sooner when its place went to the other client)
    assert tally.answered >= tally.opened - TABLE // 8
    assert max(tally.answer_times) < 3 + SLACK
