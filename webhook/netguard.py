"""Which hosts the visibility probe may talk to (docs/design.md §2).

Image references come from anyone who may create a Pod, so without a guard the
webhook would be a server-side request forgery tool: ``169.254.169.254/x:y``
would make it probe the cloud metadata service, ``10.0.0.5:6443/x:y`` the
cluster network. The probe therefore refuses (reason ``blocked-address``) any
host that resolves into loopback, link-local, private, unique-local, CGNAT,
unspecified or multicast space, unless ``probe.allowPrivateNetworks`` is set.

An IP address counts in every spelling the C resolver accepts for it:
``127.1``, ``0177.0.0.1``, ``0x7f.1`` and ``2130706433`` are 127.0.0.1 (as
``inet_aton`` reads them), and an IPv6 address that embeds an IPv4 one (mapped
``::ffff:a.b.c.d``, compatible ``::a.b.c.d``, translated ``::ffff:0:a.b.c.d``,
NAT64 ``64:ff9b::a.b.c.d``, 6to4 ``2002:AABB:CCDD::``) is judged by the IPv4
address it stands for.

The guard sits in the probe's one session, through two public aiohttp hooks, so
that every request of that session (registry, redirect, token realm) is checked
without code at the call sites:

- :class:`GuardedResolver`, the connector's resolver, resolves host names (with a
  timeout) and checks every address before aiohttp connects to it. What it
  returns is what aiohttp connects to: no second lookup between check and
  connect, so DNS rebinding cannot slip an internal address in.
- :class:`GuardMiddleware`, a client middleware, checks each request's target
  before any connection: IP literals, which aiohttp never passes to a resolver,
  and the target of a request sent through the egress proxy, which aiohttp never
  resolves at all (the resolver then sees only the proxy's own name).

The egress proxy is the admin's choice and may be on a private address. Through
a proxy the guard still refuses a target that is an internal literal or a name
that resolves *here* to an internal address; but the proxy resolves the name
again on its own, and what it connects to cannot be seen from here. A name that
does not resolve here (a cluster whose DNS knows only internal names) is left
to the proxy.

A host listed in ``probe.insecureRegistries`` is an explicit operator choice:
such a host is reached over plain HTTP and allowed even when it resolves to a
private address (an in-cluster registry is the usual reason to list one). An
entry without a port covers every port of that host; ``host:port`` covers that
port only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from aiohttp.abc import AbstractResolver, ResolveResult

from webhook.config import ProbeSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Refused unless allowPrivateNetworks: everything a pod-creating user could aim
# at inside the cluster, the node or the cloud provider.
_PRIVATE_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT, also used for cluster networks
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking, often used inside data centres
        "240.0.0.0/4",  # reserved
        "::1/128",
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "fc00::/7",  # unique-local
        "64:ff9b:1::/48",  # local-use NAT64
    )
)
# Refused always: nothing legitimate listens there for TCP.
_NEVER_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/32",  # unspecified
        "224.0.0.0/4",  # multicast
        "255.255.255.255/32",
        "::/128",  # unspecified
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated, but still an IPv4 in IPv6
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT (RFC 2765)
# One part of an inet_aton spelling: hex, octal (leading 0) or decimal.
_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


class BlockedAddressError(OSError):
    """The host resolves to an address the probe may not connect to.

    An ``OSError`` so that aiohttp wraps it in ``ClientConnectorError`` like any
    other resolution failure; :func:`blocked_cause` finds it again.
    """

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to {address}, which the probe may not reach")
        self.host = host
        self.address = address


class DNSLookupError(OSError):
    """The host name could not be resolved (no such name, or the lookup timed out)."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if any (mapped, compatible,
    translated, NAT64, 6to4)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any spelling inet_aton (and so getaddrinfo) accepts.

    One to four parts, each decimal, octal (leading ``0``) or hex (``0x``); the
    last part fills the bytes left: ``127.1``, ``0177.0.0.1``, ``2130706433``.
    """
    parts = text.split(".")
    if len(parts) > 4 or not all(_ATON_PART.fullmatch(part) for part in parts):
        return None
    *leading, last = (_aton_value(part) for part in parts)
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _aton_value(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:], 16)
    if part.startswith("0"):
        return int(part, 8)
    # eleven decimal digits are already too many; int() refuses 4,300 outright
    return int(part) if len(part) <= 10 else 1 << 32


def parse_address(text: str) -> IPAddress | None:
    """The IP address a host means, in any spelling the resolver accepts (zone ids
    dropped, brackets allowed); None for a name."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return _inet_aton(text)


def canonical_host(host: str) -> str:
    """The host as compared with configured entries: an address in its usual
    spelling (without brackets), a name in lower case without a trailing dot."""
    address = parse_address(host)
    return str(address) if address is not None else host.lower().rstrip(".")


def address_blocked(address: IPAddress | str, *, allow_private_networks: bool = False) -> bool:
    """Whether the probe must not connect to this address."""
    ip = parse_address(address) if isinstance(address, str) else address
    if ip is None:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return address_blocked(embedded, allow_private_networks=allow_private_networks)
    if any(ip in net for net in _NEVER_NETWORKS):
        return True
    return not allow_private_networks and any(ip in net for net in _PRIVATE_NETWORKS)


def host_port(host: str, port: int | None) -> str:
    """``host:port`` as written in an image reference (IPv6 in brackets)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return shown if port is None else f"{shown}:{port}"


@dataclass(frozen=True, slots=True)
class NetGuard:
    """The probe's network policy, from ``ProbeSettings`` and the egress proxies."""

    insecure_registries: frozenset[str] = frozenset()
    allow_private_networks: bool = False
    dns_timeout: float = 2.0
    proxies: frozenset[str] = frozenset()  # host:port of each egress proxy

    @classmethod
    def from_settings(
        cls, settings: ProbeSettings, proxies: Iterable[tuple[str, int]] = ()
    ) -> NetGuard:
        return cls(
            insecure_registries=frozenset(
                _canonical_entry(entry) for entry in settings.insecure_registries
            ),
            allow_private_networks=settings.allow_private_networks,
            # below the probe's own timeout, so a lookup that hangs reports dns-error
            dns_timeout=settings.timeout_seconds * 0.75,
            proxies=frozenset(host_port(canonical_host(h), p) for h, p in proxies),
        )

    def is_insecure(self, host: str, port: int | None = None) -> bool:
        """Whether the operator listed this host (any port) or this host:port."""
        host = canonical_host(host)
        if host_port(host, None) in self.insecure_registries or host in self.insecure_registries:
            return True
        return port is not None and host_port(host, port) in self.insecure_registries

    def is_proxy(self, host: str, port: int | None) -> bool:
        return port is not None and host_port(canonical_host(host), port) in self.proxies

    def check(
        self,
        host: str,
        port: int | None,
        addresses: Iterable[IPAddress | str],
        *,
        may_be_proxy: bool = False,
    ) -> None:
        """Raise BlockedAddressError unless every address may be connected to.

        One blocked address refuses the whole host: a public name that also
        resolves into the cluster network is not something to half-trust. A
        listed host, and the egress proxy when the connection may be to it, are
        the operator's explicit choice: private ranges are fine for them (the
        never-ranges are not).
        """
        allow_private = (
            self.allow_private_networks
            or self.is_insecure(host, port)
            or (may_be_proxy and self.is_proxy(host, port))
        )
        for address in addresses:
            if address_blocked(address, allow_private_networks=allow_private):
                raise BlockedAddressError(host, str(address))

    async def resolve(
        self,
        host: str,
        port: int = 0,
        family: socket.AddressFamily = socket.AF_UNSPEC,
        *,
        may_be_proxy: bool = False,
        timeout: float | None = None,
    ) -> list[ResolveResult]:
        """Resolve with the event loop's getaddrinfo under a timeout, then check."""
        literal = parse_address(host)
        if literal is not None:
            results = [_result(host, str(literal), port, literal.version)]
        else:
            timeout = self.dns_timeout if timeout is None else timeout
            results = await _getaddrinfo(host, port, family, timeout)
        self.check(host, port, (r["host"] for r in results), may_be_proxy=may_be_proxy)
        return results

    async def check_target(self, host: str, port: int | None, *, proxied: bool) -> None:
        """Refuse a request's target before any connection is made.

        A literal is checked here. A name is left to the resolver at connect time
        (one lookup, nothing to rebind), except when the connection goes to a proxy
        instead, or the name is the proxy's own: then it is resolved here, briefly,
        and refused if it resolves internally. A name that does not resolve here is
        the proxy's to resolve.
        """
        literal = parse_address(host)
        if literal is not None:
            self.check(host, port, [literal])
        elif proxied or self.is_proxy(host, port):
            with contextlib.suppress(DNSLookupError):
                await self.resolve(host, port or 0, timeout=self.dns_timeout / 3)


def _canonical_entry(entry: str) -> str:
    """An insecureRegistries entry as is_insecure compares it."""
    host, port = _split_host_port(entry.strip())
    return host_port(canonical_host(host), port)


def _split_host_port(text: str) -> tuple[str, int | None]:
    host, colon, port = text.rpartition(":")
    if colon and port.isdigit() and (host.endswith("]") or ":" not in host):
        return host, int(port)
    return text, None


def _result(hostname: str, address: str, port: int, version: int) -> ResolveResult:
    return {
        "hostname": hostname,
        "host": address,
        "port": port,
        "family": socket.AF_INET6 if version == 6 else socket.AF_INET,
        "proto": 0,
        "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    }


async def _getaddrinfo(
    host: str, port: int, family: socket.AddressFamily, timeout: float
) -> list[ResolveResult]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
    except TimeoutError:
        raise DNSLookupError(f"resolving {host} timed out after {timeout:g}s") from None
    except socket.gaierror as exc:
        raise DNSLookupError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    results: list[ResolveResult] = []
    seen: set[tuple[str, int]] = set()
    for fam, _type, proto, _canon, sockaddr in infos:
        if fam not in (socket.AF_INET, socket.AF_INET6):
            continue
        address, result_port = str(sockaddr[0]), int(sockaddr[1])
        if (address, result_port) in seen:
            continue
        seen.add((address, result_port))
        results.append(
            {
                "hostname": host,
                "host": address,
                "port": result_port,
                "family": fam,
                "proto": proto,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
        )
    if not results:
        raise DNSLookupError(f"cannot resolve {host}: no IPv4 or IPv6 address")
    return results


class GuardedResolver(AbstractResolver):
    """The connector's resolver: resolves names with a timeout and applies the guard.

    It also resolves the egress proxy's name, which the operator chose: that may
    be private. A target that names the proxy is refused by GuardMiddleware first.
    """

    def __init__(self, guard: NetGuard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return await self.guard.resolve(host, port, family, may_be_proxy=True)

    async def close(self) -> None:
        return None


class GuardMiddleware:
    """A client middleware that checks each request's target (see check_target)."""

    def __init__(self, guard: NetGuard) -> None:
        self.guard = guard

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        url = request.url
        await self.guard.check_target(
            url.raw_host or "", url.port, proxied=request.proxy is not None
        )
        return await handler(request)


def blocked_cause(exc: BaseException) -> BlockedAddressError | None:
    """The BlockedAddressError behind an aiohttp error, if that is what it was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BlockedAddressError):
            return current
        seen.add(id(current))
        os_error = getattr(current, "os_error", None)
        if isinstance(os_error, BlockedAddressError):
            return os_error
        current = current.__cause__ or current.__context__
    return None


def dns_cause(exc: BaseException) -> DNSLookupError | socket.gaierror | None:
    """The name-resolution failure behind an aiohttp error, if that is what it was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DNSLookupError | socket.gaierror):
            return current
        seen.add(id(current))
        os_error = getattr(current, "os_error", None)
        if isinstance(os_error, DNSLookupError | socket.gaierror):
            return os_error
        current = current.__cause__ or current.__context__
    return None
