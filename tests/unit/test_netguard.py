"""netguard: which addresses the probe may reach, checked where it connects."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.config import ProbeSettings
from webhook.egress import Egress
from webhook.netguard import (
    BlockedAddressError,
    DNSLookupError,
    NetGuard,
    address_blocked,
    blocked_cause,
    parse_address,
)
from webhook.registry import make_session


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
        ("::127.0.0.1", True, False),  # IPv4-compatible
        ("::a9fe:a9fe", True, False),
        ("::8.8.8.8", False, False),
        ("::2", True, False),  # compatible form of 0.0.0.2, "this network"
        ("::ffff:0:127.0.0.1", True, False),  # IPv4-translated (SIIT)
        ("::ffff:0:8.8.8.8", False, False),
        ("[::ffff:0:7f00:1]", True, False),
        # every spelling inet_aton (and so getaddrinfo) reads as an IPv4 address
        ("127.1", True, False),
        ("0177.0.0.1", True, False),
        ("2130706433", True, False),
        ("0x7f000001", True, False),
        ("0x7f.1", True, False),
        ("0251.0376.0251.0376", True, False),  # 169.254.169.254 in octal
        ("10.1", True, False),
        ("134744072", False, False),  # 8.8.8.8
        ("0", True, True),  # 0.0.0.0
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


# Parts of the spellings inet_aton reads: decimal, octal, hex, with the odd cases.
_PART = st.one_of(
    st.integers(0, 0xFFFFFFFF).map(str),
    st.integers(0, 0xFFFFFFFF).map(lambda n: f"0{n:o}"),
    st.integers(0, 0xFFFFFFFF).map(lambda n: f"0x{n:x}"),
    st.integers(0, 0xFFFFFFFF).map(lambda n: f"0X{n:X}"),
    st.sampled_from(["", "0", "00", "08", "0x", "09", "1e3", "x1", "-1", "+1"]),
)


def libc_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """The C library's reading: the resolver's own rules, used as the contract."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def ours(text: str) -> ipaddress.IPv4Address | None:
    address = parse_address(text)
    return address if isinstance(address, ipaddress.IPv4Address) else None


@pytest.mark.parametrize(
    "text",
    ["127.1", "0177.0.0.1", "2130706433", "0x7f000001", "0x7F.0.0.1", "127.0.1", "1.2.3.04",
     "017700000001", "0x7f.0x0.0x0.0x1", "4294967295", "4294967296", "0x100000000", "256.1.1.1",
     "1.256.1.1", "1.2.65536", "1.16777216", "08.1.1.1", "0x", "1..1", ".1", "1.", "1.2.3.4.5",
     "", "1.2.3.4 x", "0x7f 1", "١٢٧.0.0.1",
     "1" * 5000, "0" * 300 + "177.1", "0x" + "0" * 300 + "1"],
)  # fmt: skip
def test_ipv4_spellings_read_as_inet_aton_reads_them(text: str) -> None:
    expected = libc_inet_aton(text)
    if " " in text:
        expected = None  # glibc ignores what follows a space; no host name holds one
    assert ours(text) == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(_PART, min_size=1, max_size=5).map(".".join))
def test_generated_ipv4_spellings_agree_with_inet_aton(text: str) -> None:
    assert ours(text) == libc_inet_aton(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789abcdefxX.", max_size=20))
def test_any_string_of_address_characters_agrees_with_inet_aton(text: str) -> None:
    assert ours(text) == libc_inet_aton(text)


class CountingListener:
    """Counts the TCP connections it accepts on a free loopback port."""

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


def session(
    insecure: frozenset[str] = frozenset(), egress: Egress | None = None
) -> aiohttp.ClientSession:
    """A probe session whose guard lets through the proxies ``egress`` names."""
    settings = ProbeSettings(timeout_seconds=2.0, insecure_registries=insecure)
    proxies = (proxy.endpoint for proxy in (egress or Egress()).proxies)
    return make_session(settings, NetGuard.from_settings(settings, proxies))


async def blocked(client: aiohttp.ClientSession, url: str, proxy: str | None = None) -> bool:
    try:
        async with client.get(url, proxy=proxy):
            return False
    except aiohttp.ClientError as exc:
        return blocked_cause(exc) is not None


async def test_the_session_refuses_names_and_every_literal_spelling() -> None:
    # names reach the resolver, literals the middleware; nothing reaches the listener
    listener = CountingListener()
    async with listener as port, session() as client:
        for host in ("localhost", "127.0.0.1", "127.1", "2130706433", "0x7f000001",
                     "0177.0.0.1", "[::ffff:127.0.0.1]", "[::127.0.0.1]",
                     "[::ffff:0:127.0.0.1]"):  # fmt: skip
            assert await blocked(client, f"http://{host}:{port}/v2/"), host
    assert listener.connections == 0


async def test_the_session_lets_a_listed_host_through() -> None:
    listener = CountingListener()
    async with listener as port, session(frozenset({f"127.0.0.1:{port}"})) as client:
        # the listener hangs up: not the guard's refusal
        assert not await blocked(client, f"http://127.0.0.1:{port}/v2/")
    assert listener.connections >= 1


async def test_the_proxy_may_be_private_but_a_target_resolving_inward_may_not() -> None:
    proxy = CountingListener()
    async with proxy as port:
        egress = Egress.from_environ({"HTTP_PROXY": f"http://localhost:{port}"})
        async with session(egress=egress) as client:
            via = f"http://localhost:{port}"
            # refused before the proxy is even connected to
            for target in ("http://localhost/v2/", "http://10.0.0.1/v2/", "http://127.1/v2/"):
                assert await blocked(client, target, proxy=via), target
            assert proxy.connections == 0
            # a name this side cannot resolve is the proxy's to resolve: it is reached
            assert not await blocked(client, "http://registry.does-not-exist.invalid/v2/", via)
            assert proxy.connections >= 1
            # the proxy's own address as a registry, without the proxy: refused
            proxy.connections = 0
            assert await blocked(client, f"http://localhost:{port}/v2/")
    assert proxy.connections == 0
