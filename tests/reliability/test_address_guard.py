"""The address guard, for what tests/integration does not already cover.

Already covered there: an image naming loopback by IP or ``localhost``; a
redirect to ``https://localhost`` or to plain HTTP; a token realm on
``127.0.0.1``, ``localhost``, ``[::ffff:127.0.0.1]`` or plain HTTP; the
address table in tests/unit/test_netguard.py.

Added here, each with a listener on the loopback target that must never see a
connection:

- the other spellings of an internal address, as an image's registry (which
  is then "internal", the customer's own), as a redirect target and as a token
  realm: ``127.1``, decimal ``2130706433``, hex ``0x7f000001``, octal
  ``0177.0.0.1``, trailing dots, ``0.0.0.0`` (the local host on Linux),
  ``[::1]``, IPv4-mapped, -compatible and -translated, NAT64 and 6to4 IPv6
  forms, link-local (cloud metadata), private and CGNAT ranges, unique-local
  IPv6;
- a token realm that redirects into a blocked address;
- a redirect chain whose second hop turns inward;
- an insecure-registry entry with a port allows that port only: a redirect to
  another port of the same host is refused.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.registries import (
    BearerRegistry,
    PublicRegistry,
    RedirectingRegistry,
)
from webhook.config import ProbeSettings
from webhook.egress import Egress
from webhook.images import parse
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.registry import RegistryClient

BLOCKED = ProbeResult(Visibility.UNKNOWN, Reason.BLOCKED_ADDRESS)


class Listener:
    """Counts the TCP connections it accepts on host:port (port 0: any free one)."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int = 0) -> Listener:
        async def accept(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accept, host, port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
async def world() -> AsyncIterator[dict[str, Any]]:
    """Listeners on 127.0.0.1:P, 0.0.0.0-reachable, and [::1]:P when IPv6 is there."""
    v4 = await Listener().start("127.0.0.1")
    v6 = await Listener().start("::1") if ipv6_loopback() else None
    started: list[Any] = []

    async def fake(server: Any) -> Any:
        await server.start()
        started.append(server)
        return server

    yield {"v4": v4, "v6": v6, "fake": fake}
    for server in started:
        await server.stop()
    await v4.stop()
    if v6 is not None:
        await v6.stop()
    assert v4.connections == 0, "a blocked IPv4 loopback address was connected to"
    assert v6 is None or v6.connections == 0, "a blocked IPv6 loopback address was connected to"


async def client(insecure: list[str], timeout: float = 2.0) -> RegistryClient:
    settings = ProbeSettings(timeout_seconds=timeout, insecure_registries=frozenset(insecure))
    return RegistryClient.open(settings, Egress())  # no proxy, whatever the env says


async def probe(insecure: list[str], image: str) -> ProbeResult:
    registry_client = await client(insecure)
    try:
        ref = parse(image)
        return await registry_client.probe(ref.domain, ref.path, ref.reference)
    finally:
        await registry_client.close()


# Spellings of this machine's loopback, each refused by the guard as the address
# it means, before any connection: short, decimal, octal and hex IPv4 as
# inet_aton reads them, and the IPv6 forms embedding 127.0.0.1. A trailing-dot
# name is one the sandbox's resolver may not know ("dns-error"; where it
# resolves, the guard refuses it), and yarl refuses "127.0.0.1." outright.
SPELLINGS: list[tuple[str, set[str]]] = [
    ("127.1:{port}", {"blocked-address"}),
    ("2130706433:{port}", {"blocked-address"}),
    ("0177.0.0.1:{port}", {"blocked-address"}),
    ("0x7f000001:{port}", {"blocked-address"}),
    ("0x7f.1:{port}", {"blocked-address"}),
    ("0.0.0.0:{port}", {"blocked-address"}),
    ("[::ffff:127.0.0.1]:{port}", {"blocked-address"}),
    ("[::ffff:7f00:1]:{port}", {"blocked-address"}),
    ("[::127.0.0.1]:{port}", {"blocked-address"}),  # IPv4-compatible
    ("[::7f00:1]:{port}", {"blocked-address"}),
    ("[::ffff:0:127.0.0.1]:{port}", {"blocked-address"}),  # IPv4-translated
    ("[::ffff:0:7f00:1]:{port}", {"blocked-address"}),
    ("[64:ff9b::7f00:1]:{port}", {"blocked-address"}),  # NAT64 of 127.0.0.1
    ("[2002:7f00:1::]:{port}", {"blocked-address"}),  # 6to4 of 127.0.0.1
    ("127.0.0.1.:{port}", {"bad-response", "blocked-address"}),
    ("localhost.:{port}", {"dns-error", "blocked-address"}),
    ("[::1]:{port6}", {"blocked-address"}),
    ("[0:0:0:0:0:0:0:1]:{port6}", {"blocked-address"}),
]


def loopback_spellings(port: int, port6: int | None) -> list[tuple[str, set[str]]]:
    """(host:port, the reasons it may be refused with) for the listeners' ports."""
    return [
        (spelling.format(port=port, port6=port6), reasons)
        for spelling, reasons in SPELLINGS
        if port6 is not None or "{port6}" not in spelling
    ]


# No listener needed: refused before any connection is tried (no timeout either).
INTERNAL: list[tuple[str, set[str]]] = [
    (host, {"blocked-address"})
    for host in (
        "169.254.169.254",  # cloud metadata
        "[fd00:ec2::254]",  # AWS IMDS over IPv6 (unique-local)
        "[fe80::1]",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.0.1",
        "100.64.0.1",
        "[fc00::1]",
        "[::ffff:169.254.169.254]",
    )
]


def targets(world: dict[str, Any]) -> list[tuple[str, set[str]]]:
    v4, v6 = world["v4"], world["v6"]
    return loopback_spellings(v4.port, v6.port if v6 else None) + INTERNAL


async def test_image_registries_spelled_as_internal_addresses(world: dict[str, Any]) -> None:
    for host, reasons in targets(world):
        image = f"{host}/team/app:v1"
        try:
            parse(image)
        except ValueError:
            continue  # not a valid image reference (trailing dot): never probed at all
        result = await probe([], image)
        # a registry on an internal address is the customer's own: INTERNAL, left alone
        internal = result.reason == "blocked-address"
        expected = Visibility.INTERNAL if internal else Visibility.UNKNOWN
        assert result.visibility is expected and result.reason in reasons, (image, result)


@pytest.mark.parametrize(
    "host", ["127.1", "0177.0.0.1", "2130706433", "[::127.0.0.1]", "[::ffff:0:127.0.0.1]"]
)
async def test_a_registry_on_loopback_in_any_spelling_is_internal(
    world: dict[str, Any], host: str
) -> None:
    """The address it means, not "unknown": so onProbeFailure never sends it to the proxy."""
    registry_client = await client([])
    try:
        # the registry domain as an image would carry it (the grammar may refuse the
        # dotted IPv6 forms in an image; they still arrive as redirects and realms)
        result = await registry_client.probe(f"{host}:{world['v4'].port}", "team/app", "v1")
    finally:
        await registry_client.close()
    assert result == ProbeResult(Visibility.INTERNAL, Reason.BLOCKED_ADDRESS)


async def test_redirects_to_internal_addresses(world: dict[str, Any]) -> None:
    for host, reasons in targets(world):
        registry = await world["fake"](
            RedirectingRegistry(f"https://{host}/v2/team/app/manifests/v1")
        )
        # only the registry itself, port included, is listed
        result = await probe([registry.domain], registry.image())
        assert result.visibility is Visibility.UNKNOWN and result.reason in reasons, (host, result)


async def test_token_realms_on_internal_addresses(world: dict[str, Any]) -> None:
    for host, reasons in targets(world):
        registry = await world["fake"](BearerRegistry(f"https://{host}/token"))
        result = await probe([registry.domain], registry.image())
        assert result.visibility is Visibility.UNKNOWN and result.reason in reasons, (host, result)


async def test_token_realm_that_redirects_inward(world: dict[str, Any]) -> None:
    v4 = world["v4"]
    realm = await world["fake"](RedirectingRegistry(f"https://localhost:{v4.port}/token"))
    registry = await world["fake"](BearerRegistry(f"http://{realm.domain}/token"))
    # registry and realm are listed (plain HTTP, loopback allowed); the target is not
    assert await probe([registry.domain, realm.domain], registry.image()) == BLOCKED
    assert len(realm.requests) == 1


async def test_redirect_chain_turning_inward_on_the_second_hop(world: dict[str, Any]) -> None:
    v4 = world["v4"]
    inner = await world["fake"](
        RedirectingRegistry(f"https://[::ffff:127.0.0.1]:{v4.port}/v2/team/app/manifests/v1")
    )
    outer = await world["fake"](
        RedirectingRegistry(f"http://{inner.domain}/v2/team/app/manifests/v1")
    )
    assert await probe([outer.domain, inner.domain], outer.image()) == BLOCKED
    assert len(outer.requests) == 1 and len(inner.requests) == 1


async def test_insecure_entry_with_a_port_covers_that_port_only(world: dict[str, Any]) -> None:
    elsewhere = await world["fake"](PublicRegistry())
    registry = await world["fake"](
        RedirectingRegistry(f"http://127.0.0.1:{elsewhere.port}/v2/team/app/manifests/v1")
    )
    assert await probe([registry.domain], registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.PLAIN_HTTP_REFUSED
    )
    https = await world["fake"](
        RedirectingRegistry(f"https://127.0.0.1:{elsewhere.port}/v2/team/app/manifests/v1")
    )
    assert await probe([https.domain], https.image()) == BLOCKED
    assert elsewhere.requests == []
    # listing the host without a port is the operator saying "any port": then it goes
    assert (await probe(["127.0.0.1"], registry.image())).visibility is Visibility.PUBLIC


async def test_token_realm_answering_with_a_redirect_loop_is_bounded(
    world: dict[str, Any],
) -> None:
    realm = await world["fake"](RedirectingRegistry("{self.url}/token"))
    registry = await world["fake"](BearerRegistry(f"http://{realm.domain}/token"))
    result = await probe([registry.domain, realm.domain], registry.image())
    assert result == ProbeResult(Visibility.UNKNOWN, Reason.BAD_RESPONSE)
    assert len(realm.requests) == 4  # the request and three redirects


async def test_control_the_listeners_do_count(world: dict[str, Any]) -> None:
    """Without the guard's refusal (the host listed), the loopback listener is reached."""
    v4 = world["v4"]
    result = await probe(["127.0.0.1"], f"127.0.0.1:{v4.port}/team/app:v1")
    assert result.visibility is Visibility.UNKNOWN  # the listener closes at once
    assert v4.connections >= 1
    v4.connections = 0  # the fixture's teardown checks the others
