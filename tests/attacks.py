"""Hostile clients of the webhook port, over real TLS sockets.

One client (one source address) holds ``connections`` connections to the port, each
doing one of:

- ``idle``: finishes the TLS handshake and sends nothing;
- ``half-headers``: sends half a request head and stops;
- ``slow-body``: sends a complete request head for a valid review, then its body one
  byte every ``drip`` seconds.

With ``reopen`` each connection the server closes is opened again, so that the client
keeps holding as many as it can for as long as it runs. The tally says what the
server did to them.

Used in-process by the reliability tests, and as a process of its own beside the
real kube-apiserver (``python -m tests.attacks --help``), so that the attack does not
share the test's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.reviews import pod, review

KINDS = ("idle", "half-headers", "slow-body")
HANDSHAKES_AT_ONCE = 64  # keep the connects within the server's listen backlog


@dataclass
class Target:
    host: str
    port: int
    context: ssl.SSLContext
    source: str = "127.0.0.1"
    server_hostname: str = "localhost"


@dataclass
class Tally:
    opened: int = 0
    failed: int = 0  # connects or handshakes that did not succeed
    closed: int = 0  # closed by the server
    answered: int = 0  # connections on which the server wrote anything
    lifetimes: list[float] = field(default_factory=list)  # connect to close, in seconds
    answer_times: list[float] = field(default_factory=list)  # connect to the first byte

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        for name in ("lifetime", "answer_time"):
            values = sorted(data.pop(f"{name}s"))
            if values:
                data[f"{name}_min"] = round(values[0], 3)
                data[f"{name}_median"] = round(values[len(values) // 2], 3)
                data[f"{name}_max"] = round(values[-1], 3)
        return data


def body() -> bytes:
    return json.dumps(review(pod("nginx:1.25"))).encode()


def request_head(length: int) -> bytes:
    return (
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


HALF_HEAD = request_head(0)[:30]


async def connection(
    target: Target,
    kind: str,
    tally: Tally,
    stop: asyncio.Event,
    handshakes: asyncio.Semaphore,
    *,
    reopen: bool,
    drip: float = 0.5,
) -> None:
    """One connection of the attack (reopened while ``reopen`` until ``stop``)."""
    while not stop.is_set():
        try:
            async with handshakes:
                reader, writer = await asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=target.context,
                    server_hostname=target.server_hostname,
                    local_addr=(target.source, 0),
                )
        except (OSError, ssl.SSLError, TimeoutError):
            tally.failed += 1
            await asyncio.sleep(0.05)
            continue
        opened = time.monotonic()
        tally.opened += 1
        dripping = None
        if kind == "half-headers":
            writer.write(HALF_HEAD)
        elif kind == "slow-body":
            dripping = asyncio.create_task(_drip(writer, drip))
        try:
            answered = await _until_closed(reader, stop)
            if answered is not None:
                tally.answered += 1
                tally.answer_times.append(answered - opened)
            if not stop.is_set():
                tally.closed += 1
                tally.lifetimes.append(time.monotonic() - opened)
        finally:
            if dripping is not None:
                dripping.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if not reopen:
            return


async def _drip(writer: asyncio.StreamWriter, every: float) -> None:
    content = body()
    writer.write(request_head(len(content)))
    with contextlib.suppress(ConnectionError, RuntimeError):
        for byte in content:
            await asyncio.sleep(every)
            writer.write(bytes([byte]))


async def _until_closed(reader: asyncio.StreamReader, stop: asyncio.Event) -> float | None:
    """Reads until the server closes (or ``stop``); when it first wrote, if it did."""
    wrote = None
    stopping = asyncio.create_task(stop.wait())
    try:
        while True:
            reading = asyncio.create_task(reader.read(4096))
            done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                reading.cancel()
                return wrote
            try:
                data = reading.result()
            except (ConnectionError, ssl.SSLError):
                return wrote
            if not data:
                return wrote
            if wrote is None:
                wrote = time.monotonic()
    finally:
        stopping.cancel()


async def attack(
    target: Target,
    kind: str,
    connections: int,
    stop: asyncio.Event,
    *,
    reopen: bool = False,
    drip: float = 0.5,
) -> Tally:
    """Runs the attack until ``stop`` (or, without ``reopen``, until the server has
    closed every connection)."""
    tally = Tally()
    handshakes = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
    await asyncio.gather(
        *(
            connection(target, kind, tally, stop, handshakes, reopen=reopen, drip=drip)
            for _ in range(connections)
        )
    )
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Attack the webhook port until SIGTERM; print the tally as JSON."
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", type=Path, required=True, help="the CA that signed the server")
    parser.add_argument("--server-hostname", default="127.0.0.1")
    parser.add_argument("--source", default="127.0.0.2", help="the client's own address")
    parser.add_argument("--connections", type=int, default=600)
    parser.add_argument("--drip", type=float, default=0.5)
    args = parser.parse_args()

    async def run() -> Tally:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        context = ssl.create_default_context(cafile=str(args.ca))
        target = Target(args.host, args.port, context, args.source, args.server_hostname)
        print("attacking", flush=True)
        return await attack(target, args.kind, args.connections, stop, reopen=True, drip=args.drip)

    print(json.dumps(asyncio.run(run()).summary()), flush=True)


if __name__ == "__main__":
    main()
