"""netguard: which addresses the probe may reach, checked where it connects."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from webhook.config import ProbeSettings
from webhook.netguard import (
    BlockedAddressError,
    DNSLookupError,
    GuardedConnector,
    NetGuard,
    address_blocked,
    blocked_cause,
)


@pytest.mark.parametrize(
    ("address", "blocked", "blocked_even_if_allowed"),
    [
        ("8.8.8.8", False, False),
        ("1.1.1.1", False, False),
        ("2606:4700:4700::1111", False, False),
        ("127.0.0.1", True, False),
        ("127.200.3.4", True, False),
        ("::1", True, False),
        ("169.254.169.254", True, False),  # cloud metadata
        ("fe80::1", True, False),
        ("fe80::1%eth0", True, False),
        ("10.0.0.1", True, False),
        ("172.16.0.1", True, False),
        ("172.31.255.255", True, False),
        ("172.32.0.1", False, False),
        ("192.168.1.1", True, False),
        ("fd12:3456::1", True, False),  # unique-local
        ("fc00::1", True, False),
        ("100.64.0.1", True, False),  # CGNAT
        ("100.127.255.255", True, False),
        ("100.128.0.1", False, False),
        ("::ffff:127.0.0.1", True, False),  # IPv4-mapped
        ("::ffff:10.1.2.3", True, False),
        ("::ffff:8.8.8.8", False, False),
        ("64:ff9b::a9fe:a9fe", True, False),  # NAT64 of 169.254.169.254
        ("2002:a00:1::", True, False),  # 6to4 of 10.0.0.1
        ("0.0.0.0", True, True),  # unspecified
        ("::", True, True),
        ("224.0.0.1", True, True),  # multicast
        ("ff02::1", True, True),
        ("255.255.255.255", True, True),
        ("not-an-address", True, True),
    ],
)
def test_address_table(address: str, blocked: bool, blocked_even_if_allowed: bool) -> None:
    assert address_blocked(address) is blocked
    assert address_blocked(address, allow_private_networks=True) is blocked_even_if_allowed


def test_insecure_registries_match_host_or_host_and_port() -> None:
    guard = NetGuard(frozenset({"127.0.0.3", "registry.local:5000", "[::1]:5000"}))
    assert guard.is_insecure("127.0.0.3", 80)
    assert guard.is_insecure("127.0.0.3", 5001)  # a bare host covers every port
    assert guard.is_insecure("registry.local", 5000)
    assert guard.is_insecure("REGISTRY.LOCAL.", 5000)
    assert not guard.is_insecure("registry.local", 5001)
    assert not guard.is_insecure("registry.local", None)
    assert guard.is_insecure("::1", 5000)
    assert not guard.is_insecure("127.0.0.4", 80)


def test_a_listed_host_may_be_private_but_not_multicast() -> None:
    guard = NetGuard(frozenset({"registry.internal"}))
    guard.check("registry.internal", 443, ["10.1.2.3"])
    with pytest.raises(BlockedAddressError):
        guard.check("registry.internal", 443, ["224.0.0.5"])
    with pytest.raises(BlockedAddressError):
        guard.check("other.internal", 443, ["10.1.2.3"])


def test_one_blocked_address_refuses_the_host() -> None:
    guard = NetGuard()
    guard.check("registry.example.com", 443, ["93.184.216.34", "2606:2800:220:1::1"])
    with pytest.raises(BlockedAddressError) as caught:
        guard.check("registry.example.com", 443, ["93.184.216.34", "10.0.0.1"])
    assert caught.value.address == "10.0.0.1"
    assert caught.value.reason == "blocked-address"


def test_from_settings() -> None:
    guard = NetGuard.from_settings(
        ProbeSettings(
            timeout_seconds=2.0,
            insecure_registries=frozenset({"Registry.Local:5000"}),
            allow_private_networks=True,
        )
    )
    assert guard.is_insecure("registry.local", 5000)
    assert guard.allow_private_networks
    assert 0 < guard.dns_timeout < 2.0


async def test_resolve_checks_names_and_literals() -> None:
    guard = NetGuard()
    with pytest.raises(BlockedAddressError):
        await guard.resolve("localhost", 80)
    with pytest.raises(BlockedAddressError):
        await guard.resolve("127.0.0.1", 80)
    with pytest.raises(DNSLookupError):
        await guard.resolve("registry.does-not-exist.invalid", 443)
    allowed = NetGuard(allow_private_networks=True)
    results = await allowed.resolve("localhost", 8080)
    assert results and all(r["port"] == 8080 for r in results)


class RebindingResolver(AbstractResolver):
    """Says a public-looking name lives on loopback: what a rebinding attacker's DNS does."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls += 1
        return [
            {
                "hostname": host,
                "host": self.address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


class CountingListener:
    def __init__(self) -> None:
        self.connections = 0

    async def __aenter__(self) -> int:
        async def accept(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_connector_checks_the_address_it_connects_to() -> None:
    # Even with a resolver that is not the guard's own, the connector refuses the
    # loopback address it was handed, and nothing reaches the listener.
    listener = CountingListener()
    async with listener as port:
        resolver = RebindingResolver("127.0.0.1")
        connector = GuardedConnector(NetGuard(), resolver=resolver, use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            for url in (f"http://registry.example.com:{port}/v2/", f"http://127.0.0.1:{port}/v2/"):
                with pytest.raises(aiohttp.ClientError) as caught:
                    await session.get(url)
                assert blocked_cause(caught.value) is not None
        assert resolver.calls == 1
    assert listener.connections == 0


async def test_connector_lets_allowed_addresses_through() -> None:
    listener = CountingListener()
    async with listener as port:
        connector = GuardedConnector(NetGuard(frozenset({f"127.0.0.1:{port}"})))
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(aiohttp.ClientError) as caught:  # the listener hangs up
                await session.get(f"http://127.0.0.1:{port}/v2/")
            assert blocked_cause(caught.value) is None
    assert listener.connections >= 1  # aiohttp retries a GET once on a dropped connection
