"""Certificate rotation under a running server.

The server is the whole service (``service.running``) serving from certificate
files in a temporary directory laid out like a mounted Secret: ``tls.crt`` and
``tls.key`` are symlinks into ``..data``, itself a symlink to a timestamped
directory, and an update writes a new directory and renames a new ``..data``
over the old one (what the kubelet does; cert-manager renewing a Certificate
ends up here). Clients running concurrently open a new TLS connection for
every request and count every answer; each records the serial of the
certificate the server presented.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests import reviews
from tests.support import free_port
from webhook import config, pki, service
from webhook.config import Settings

RELOAD_INTERVAL = 0.05  # seconds between checks of the files (production: 10 s)
BURST = 60  # rapid renewals after the observed ones
NAMES = ("localhost", "127.0.0.1")
PRIVATE = "quay.io/my-org/api:v1"
PROXIED = "proxy.replicated.com/proxy/my-app/quay.io/my-org/api:v1"


# -- certificates ---------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    cert: bytes  # PEM
    key: bytes  # PEM

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert).serial_number


def issue(ca_dir: Path, names: tuple[str, ...] = NAMES) -> Pair:
    """A new serving certificate and key from the CA in ``ca_dir`` (ca.crt, ca.key)."""
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n)
                    for n in names
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Pair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class SecretMount:
    """A directory updated the way the kubelet updates a mounted Secret.

    ``tls.crt -> ..data/tls.crt``, ``..data -> ..<n>``; ``publish`` writes
    ``..<n+1>``, points ``..data_tmp`` at it and renames that over ``..data``:
    both files change in one atomic step.
    """

    def __init__(self, root: Path, pair: Pair) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)
        self.publish(pair)
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(Path("..data") / name)

    @property
    def cert_file(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.root / "tls.key"

    def publish(self, pair: Pair) -> None:
        self.generation += 1
        new = self.root / f"..{self.generation}"
        new.mkdir()
        (new / "tls.crt").write_bytes(pair.cert)
        (new / "tls.key").write_bytes(pair.key)
        (new / "tls.key").chmod(0o600)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        os.replace(tmp, self.root / "..data")
        old = self.root / f"..{self.generation - 1}"
        if old.exists():
            for child in old.iterdir():
                child.unlink()
            old.rmdir()


# -- the server and its clients ------------------------------------------------------


def settings_for(cert_file: Path, key_file: Path) -> Settings:
    return config.parse(
        {
            "appSlug": "my-app",
            "licenseID": "test-license",
            "namespaces": ["my-app"],
            # Decided by overrides: no registry is probed.
            "visibility": {"overrides": [{"match": "quay.io/my-org/*", "visibility": "private"}]},
            "server": {
                "host": "127.0.0.1",
                "port": free_port(),
                "healthPort": free_port(),
                "certFile": str(cert_file),
                "keyFile": str(key_file),
            },
        }
    )


@dataclass
class Tally:
    """Every answer the clients got, by the serial of the certificate presented."""

    answers: int = 0
    failures: list[str] = field(default_factory=list)
    serials: Counter[int] = field(default_factory=Counter)
    # per client, the serials in the order it saw them
    sequences: list[list[int]] = field(default_factory=list)
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set on every answer


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


class Connection:
    """One TLS connection speaking HTTP/1.1 keep-alive, so the test knows exactly which
    requests share a handshake and which certificate the server presented on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.serial = x509.load_der_x509_certificate(der).serial_number

    @classmethod
    async def open(cls, url: str, context: ssl.SSLContext) -> Connection:
        host, port = url.removeprefix("https://").rsplit(":", 1)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=context, server_hostname=host), 10
        )
        return cls(reader, writer)

    async def mutate(self) -> tuple[int, dict[str, Any]]:
        body = json.dumps(reviews.review(reviews.pod(PRIVATE))).encode()
        head = (
            "POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        async with asyncio.timeout(10):
            status_line, *header_lines = (
                (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            )
            headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
            data = await self.reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), json.loads(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def mutate_once(url: str, context: ssl.SSLContext) -> tuple[int, dict[str, Any], int]:
    """One request on a new connection: (status, answer, serial of the certificate)."""
    connection = await Connection.open(url, context)
    try:
        status, answer = await connection.mutate()
        return status, answer, connection.serial
    finally:
        await connection.close()


def check_answer(status: int, answer: dict[str, Any]) -> str | None:
    """None for a correct answer, else what was wrong."""
    response = answer.get("response")
    if status != 200 or not isinstance(response, dict) or not response.get("allowed"):
        return f"HTTP {status}: {answer}"
    if reviews.images_of(reviews.apply(answer, reviews.pod(PRIVATE))) != [PROXIED]:
        return f"wrong patch: {answer}"
    return None


async def client_loop(url: str, context: ssl.SSLContext, stop: asyncio.Event, tally: Tally) -> None:
    """A new connection per request: each handshake sees the current certificate."""
    seen: list[int] = []
    tally.sequences.append(seen)
    while not stop.is_set():
        serial = 0
        try:
            status, answer, serial = await mutate_once(url, context)
            problem = check_answer(status, answer)
        except Exception as exc:
            problem = repr(exc)
        if problem is None:
            tally.answers += 1
            tally.serials[serial] += 1
            if not seen or seen[-1] != serial:
                seen.append(serial)
        else:
            tally.failures.append(problem)
        tally.progress.set()


@dataclass
class Running:
    url: str
    ca_file: Path
    mount: SecretMount
    health_url: str


@pytest.fixture
async def running_server(tmp_path: Path) -> AsyncIterator[tuple[Running, Pair]]:
    ca_dir = tmp_path / "ca"
    pki.generate(ca_dir, NAMES)  # the CA (and a pair we do not use)
    first = issue(ca_dir)
    mount = SecretMount(tmp_path / "mount", first)
    settings = settings_for(mount.cert_file, mount.key_file)
    async with service.running(
        settings, secrets=reviews.NoSecrets(), reload_interval=RELOAD_INTERVAL
    ):
        yield (
            Running(
                url=f"https://127.0.0.1:{settings.server.port}",
                ca_file=ca_dir / "ca.crt",
                mount=mount,
                health_url=f"http://127.0.0.1:{settings.server.health_port}",
            ),
            first,
        )


async def wait_for_serial(url: str, context: ssl.SSLContext, serial: int, within: float) -> float:
    """Seconds until a new connection is served ``serial``."""
    start = time.monotonic()
    while True:
        _, _, seen = await mutate_once(url, context)
        if seen == serial:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"the new certificate was not served within {within} s")
        await asyncio.sleep(RELOAD_INTERVAL / 2)


async def wait_ready(health_url: str, status: int, within: float = 5.0) -> None:
    """Poll /readyz until it answers ``status`` (the reloader has run a check)."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(within):
        while True:
            async with session.get(f"{health_url}/readyz") as ready:
                if ready.status == status:
                    return
            await asyncio.sleep(RELOAD_INTERVAL / 2)


# -- tests ---------------------------------------------------------------------------


async def test_rotation_under_load_loses_no_request(
    running_server: tuple[Running, Pair], tmp_path: Path
) -> None:
    """Rotate the certificate several times while clients hammer the server.

    Every request is answered correctly; after each rotation new connections
    get the new certificate, and no client ever goes back to an older one. A
    keep-alive connection opened before the rotations keeps working. Then a
    burst of renewals, each a few polls apart, loses no request either.
    """
    server, first = running_server
    context = client_context(server.ca_file)
    pairs = [first] + [issue(tmp_path / "ca") for _ in range(5)]
    burst = [issue(tmp_path / "ca") for _ in range(BURST)]
    tally = Tally()
    stop = asyncio.Event()

    keepalive = await Connection.open(server.url, context)
    try:
        assert keepalive.serial == first.serial
        status, answer = await keepalive.mutate()
        assert check_answer(status, answer) is None

        clients = [
            asyncio.create_task(client_loop(server.url, context, stop, tally)) for _ in range(4)
        ]
        try:
            async with asyncio.timeout(10):
                while tally.serials[first.serial] < 20 and not tally.failures:
                    tally.progress.clear()
                    await tally.progress.wait()
            switch_times = []
            for pair in pairs[1:]:
                server.mount.publish(pair)
                switch_times.append(await wait_for_serial(server.url, context, pair.serial, 5.0))
                await asyncio.sleep(0.2)  # the clients run on the new certificate
            # A burst of renewals, faster than any issuer renews, so that reloads
            # overlap handshakes and the files change while they are being read.
            for pair in burst:
                server.mount.publish(pair)
                await asyncio.sleep(RELOAD_INTERVAL * 1.5)
            pairs += burst
            await wait_for_serial(server.url, context, burst[-1].serial, 5.0)
        finally:
            stop.set()
            await asyncio.gather(*clients)

        # The connection opened before the rotations still answers, on its old session.
        status, answer = await keepalive.mutate()
        assert check_answer(status, answer) is None
    finally:
        await keepalive.close()

    assert tally.failures == [], tally.failures[:5]
    order = [p.serial for p in pairs]
    for seen in tally.sequences:
        # In rotation order, with nothing older coming back.
        positions = [order.index(s) for s in seen]
        assert positions == sorted(positions), (positions, seen)
    assert tally.serials[pairs[-1].serial] > 0
    assert set(tally.serials) <= set(order)
    assert tally.answers > 50, tally
    assert max(switch_times) < 2.0, switch_times


async def test_certificate_written_before_its_key_keeps_the_old_pair(
    running_server: tuple[Running, Pair], tmp_path: Path
) -> None:
    """Files replaced one at a time (each by an atomic rename, not as one Secret update).

    Between the certificate and the key the pair does not match: the server keeps
    serving the old pair (and reports not ready), then loads the new pair once
    the key arrives. No request fails meanwhile.
    """
    server, first = running_server
    context = client_context(server.ca_file)
    second = issue(tmp_path / "ca")
    tally = Tally()
    stop = asyncio.Event()
    clients = [asyncio.create_task(client_loop(server.url, context, stop, tally)) for _ in range(3)]
    try:
        data = server.mount.root / "..data"
        current = data.resolve()
        # Rename the new certificate into the live directory, key still the old one.
        staged = current / ".tls.crt.new"
        staged.write_bytes(second.cert)
        os.replace(staged, current / "tls.crt")
        await wait_ready(server.health_url, 503)  # the mismatched pair was refused
        status, _, serial = await mutate_once(server.url, context)
        assert (status, serial) == (200, first.serial)

        staged = current / ".tls.key.new"
        staged.write_bytes(second.key)
        os.replace(staged, current / "tls.key")
        await wait_for_serial(server.url, context, second.serial, 5.0)
        await wait_ready(server.health_url, 200)
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*clients)

    assert tally.failures == [], tally.failures[:5]
    assert tally.answers > 10
    for seen in tally.sequences:
        assert seen in ([first.serial], [first.serial, second.serial], [second.serial]), seen


async def test_unreadable_files_keep_serving_the_loaded_certificate(
    running_server: tuple[Running, Pair],
) -> None:
    """A Secret deleted under the server (files gone) is not an outage: the loaded pair
    stays, readiness reports the problem, and a restored Secret is picked up."""
    server, first = running_server
    context = client_context(server.ca_file)
    data = server.mount.root / "..data"
    target = os.readlink(data)
    data.unlink()
    await wait_ready(server.health_url, 503)
    status, _, serial = await mutate_once(server.url, context)
    assert (status, serial) == (200, first.serial)
    data.symlink_to(target)  # the same pair again
    await wait_ready(server.health_url, 200)
    status, _, serial = await mutate_once(server.url, context)
    assert (status, serial) == (200, first.serial)
