"""What a client that reaches the webhook's port can hold: connections and descriptors.

The real server (``python -m webhook serve``) with short timeouts, attacked over real
sockets: a connection that never starts its TLS handshake, an idle TLS connection,
one that sends half its headers (or drips them), more connections than
``server.maxConnections``, and a gzip bomb. Each is closed or refused as the settings
say, and the server's descriptors stay bounded.
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

from tests.reliability.harness import (
    ServerProcess,
    certificates,
    open_fds,
    rss_kib,
    sockets,
    write_config,
)
from tests.reviews import pod, review

HANDSHAKE_TIMEOUT = 1.0
HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
MAX_CONNECTIONS = 16
SLACK = 3.0  # a busy two-core machine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Any]]:
    tmp = tmp_path_factory.mktemp("hostile")
    certs = certificates(tmp / "tls")
    config = tmp / "config.yaml"
    write_config(
        config,
        certs,
        visibility={"overrides": [{"match": "*", "visibility": "public"}]},
        server={
            "tlsHandshakeTimeoutSeconds": HANDSHAKE_TIMEOUT,
            "headerTimeoutSeconds": HEADER_TIMEOUT,
            "idleTimeoutSeconds": IDLE_TIMEOUT,
            "maxConnections": MAX_CONNECTIONS,
        },
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
    server: ServerProcess, context: ssl.SSLContext
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(
        "localhost", server.port, ssl=context, server_hostname="localhost"
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def admit(server: ServerProcess, context: ssl.SSLContext) -> int:
    body = json.dumps(review(pod("nginx:1.25"))).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"https://localhost:{server.port}/mutate", data=body, ssl=context) as response,
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


async def test_an_idle_tls_connection_is_closed_after_the_idle_timeout(
    server: tuple[ServerProcess, Any],
) -> None:
    process, context = server
    async with tls_connection(process, context) as (reader, _writer):
        seconds = await closed_after(reader, IDLE_TIMEOUT + SLACK)
    print(f"\nidle TLS connection: closed after {seconds:.2f}s")
    assert seconds >= IDLE_TIMEOUT * 0.8


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


async def test_connections_past_the_cap_wait_and_are_served_once_others_close(
    server: tuple[ServerProcess, Any],
) -> None:
    process, context = server
    fds_before = open_fds(process.pid)
    async with contextlib.AsyncExitStack() as held:
        for _ in range(MAX_CONNECTIONS):
            await held.enter_async_context(tls_connection(process, context))
        assert established(process) == MAX_CONNECTIONS
        # One more: accepted by the kernel (backlog), not by the server, so not served.
        waiting = asyncio.create_task(admit(process, context))
        await asyncio.sleep(HEADER_TIMEOUT / 2)
        assert not waiting.done()
        assert established(process) == MAX_CONNECTIONS
        fds_at_cap = open_fds(process.pid)
    # the held ones close: the waiting admission is taken and answered
    async with asyncio.timeout(SLACK):
        assert await waiting == 200
    print(
        f"\ndescriptors: {fds_before} idle, {fds_at_cap} with {MAX_CONNECTIONS} connections "
        "held (the cap) and one more waiting"
    )
    assert fds_at_cap - fds_before <= MAX_CONNECTIONS


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
