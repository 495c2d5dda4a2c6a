"""Which hosts the visibility probe may talk to (docs/design.md §2).

Image references come from anyone who may create a Pod, so without a guard the
webhook would be a server-side request forgery tool: ``169.254.169.254/x:y``
would make it probe the cloud metadata service, ``10.0.0.5:6443/x:y`` the
cluster network. The probe therefore refuses (reason ``blocked-address``) any
host that resolves into loopback, link-local, private, unique-local, CGNAT,
unspecified or multicast space, unless ``probe.allowPrivateNetworks`` is set.

The check is made on the address that is actually connected to:
:class:`GuardedConnector` resolves the host (with a timeout), checks every
address, and hands aiohttp only checked addresses. There is no second DNS
lookup between check and connect, so DNS rebinding cannot slip an internal
address in, and because every connection of the shared session goes through the
connector, redirects and token realms are covered without any extra code at the
call sites.

A host listed in ``probe.insecureRegistries`` is an explicit operator choice:
such a host is reached over plain HTTP and allowed even when it resolves to a
private address (an in-cluster registry is the usual reason to list one). An
entry without a port covers every port of that host; ``host:port`` covers that
port only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from webhook.config import ProbeSettings

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

BLOCKED_ADDRESS = "blocked-address"

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


class BlockedAddressError(OSError):
    """The host resolves to an address the probe may not connect to.

    An ``OSError`` so that aiohttp wraps it in ``ClientConnectorError`` like any
    other resolution failure; :func:`blocked_cause` finds it again.
    """

    reason = BLOCKED_ADDRESS

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to {address}, which the probe may not reach")
        self.host = host
        self.address = address


class DNSLookupError(OSError):
    """The host name could not be resolved (no such name, or the lookup timed out)."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if any (mapped, NAT64, 6to4)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None


def parse_address(text: str) -> IPAddress | None:
    """An IP address from a literal or a getaddrinfo result (zone ids dropped)."""
    text = text.strip("[]").partition("%")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


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
    """The probe's network policy, from ``ProbeSettings``."""

    insecure_registries: frozenset[str] = frozenset()
    allow_private_networks: bool = False
    dns_timeout: float = 2.0

    @classmethod
    def from_settings(cls, settings: ProbeSettings) -> NetGuard:
        return cls(
            insecure_registries=frozenset(
                h.lower().rstrip(".") for h in settings.insecure_registries
            ),
            allow_private_networks=settings.allow_private_networks,
            # below the probe's own timeout, so a lookup that hangs reports dns-error
            dns_timeout=settings.timeout_seconds * 0.75,
        )

    def is_insecure(self, host: str, port: int | None = None) -> bool:
        """Whether the operator listed this host (any port) or this host:port."""
        host = host.lower().rstrip(".")
        if host_port(host, None) in self.insecure_registries or host in self.insecure_registries:
            return True
        return port is not None and host_port(host, port) in self.insecure_registries

    def check(self, host: str, port: int | None, addresses: Iterable[str]) -> None:
        """Raise BlockedAddressError unless every address may be connected to.

        One blocked address refuses the whole host: a public name that also
        resolves into the cluster network is not something to half-trust.
        """
        # A listed host is the operator's explicit choice: private ranges are fine
        # for it (the never-ranges are not).
        allow_private = self.allow_private_networks or self.is_insecure(host, port)
        for address in addresses:
            if address_blocked(address, allow_private_networks=allow_private):
                raise BlockedAddressError(host, address)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        """Resolve with the event loop's getaddrinfo under a timeout, then check."""
        literal = parse_address(host)
        if literal is not None:
            results = [_result(host, str(literal), port, literal.version)]
        else:
            results = await _getaddrinfo(host, port, family, self.dns_timeout)
        self.check(host, port, (r["host"] for r in results))
        return results


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
    """An aiohttp resolver that resolves with a timeout and applies the guard."""

    def __init__(self, guard: NetGuard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return await self.guard.resolve(host, port, family)

    async def close(self) -> None:
        return None


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that connects only to addresses the guard allowed.

    aiohttp sends host names through the resolver but skips it for IP literals,
    so the check sits in ``_resolve_host``, which every new connection passes
    through, for names and literals alike; what it returns is what aiohttp
    connects to. Pooled connections were checked when they were opened.
    """

    def __init__(self, guard: NetGuard, **kwargs: Any) -> None:
        kwargs.setdefault("resolver", GuardedResolver(guard))
        super().__init__(**kwargs)
        self.guard = guard

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, traces=traces)
        self.guard.check(host, port, (r["host"] for r in results))
        return results


# If aiohttp ever renames the hook, fail loudly at import instead of silently
# connecting anywhere (the integration tests would catch it as well).
if not callable(getattr(aiohttp.TCPConnector, "_resolve_host", None)):  # pragma: no cover
    raise ImportError("aiohttp.TCPConnector._resolve_host is gone: netguard needs a new hook")


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
