"""Which probe requests go through the customer's egress proxy (docs/design.md §2).

Enterprise clusters often reach the internet only through an HTTP(S) proxy, named
by the standard environment variables. They are read once, at start:

- ``https_proxy`` / ``HTTPS_PROXY`` for ``https://`` URLs, ``http_proxy`` /
  ``HTTP_PROXY`` for ``http://`` URLs. No fallback from one to the other and no
  ``ALL_PROXY``, as in Go's ``net/http`` (which the kubelet and containerd use).
  When both spellings are set the lower-case one wins, as in curl and Python
  (Go prefers the upper-case one); an empty value counts as unset.
- A proxy is ``http://host[:port]`` or ``https://host[:port]`` (TLS to the
  proxy); without a scheme it is ``http://``; without a port, 80 or 443 by
  scheme. ``user:password@`` is sent as ``Proxy-Authorization: Basic`` and never
  logged. Any other scheme (``socks5://``) stops the webhook at start.
- ``no_proxy`` / ``NO_PROXY``: a comma-separated list, case-insensitive, blanks
  ignored, of hosts reached directly:

  ==========================  =============================================
  ``*`` (anywhere in it)      every host
  ``example.com``             that name and every name under it
  ``.example.com``,           names under it only (not ``example.com``)
  ``*.example.com``
  ``name:port``               the same, on that port only
  ``10.1.2.3``, ``fd00::1``,  that IP address written as the host
  ``[fd00::1]:443``           (on that port only, with a port)
  ``10.0.0.0/8``, ``fd00::/8``  any IP address in that network written as the
                              host
  ==========================  =============================================

  As in Go and curl, an entry matches the host as written in the URL: a name is
  never resolved to match an address or network entry. A trailing dot is
  ignored on both sides. Loopback hosts are not exempt by themselves (Go exempts
  them, curl does not): the address guard refuses them anyway unless the operator
  listed them in ``probe.insecureRegistries``, and then ``NO_PROXY`` decides.

The Kubernetes API client does not use this module: it reads the same variables
itself (Python's rules, which know no networks), so ``NO_PROXY`` must name the
API server's address; the chart adds it.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from yarl import URL

from webhook.config import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Proxy:
    """One egress proxy: where it is and, if it needs them, its credentials."""

    url: URL  # scheme://host:port, no credentials
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) the webhook connects to when it uses this proxy."""
        assert self.url.raw_host is not None and self.url.port is not None
        return self.url.raw_host, self.url.port


@dataclass(frozen=True, slots=True)
class _Domain:
    suffix: str  # ".example.com"
    itself: bool  # whether "example.com" matches too
    port: int | None


@dataclass(frozen=True, slots=True)
class NoProxy:
    """A parsed NO_PROXY list."""

    everything: bool = False
    networks: tuple[tuple[IPNetwork, int | None], ...] = ()
    domains: tuple[_Domain, ...] = ()

    @classmethod
    def parse(cls, value: str) -> NoProxy:
        networks: list[tuple[IPNetwork, int | None]] = []
        domains: list[_Domain] = []
        for raw in value.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            split = _split_entry(entry)
            if split is None:
                continue
            host, port = split
            network = _network(host)
            if network is not None:
                networks.append((network, port))
                continue
            host = host.rstrip(".")
            if host.startswith("*."):
                host = host[1:]
            if host.strip("."):
                itself = not host.startswith(".")
                domains.append(_Domain("." + host.lstrip("."), itself, port))
        return cls(networks=tuple(networks), domains=tuple(domains))

    def matches(self, host: str, port: int) -> bool:
        """Whether ``host`` (as written in the URL) on ``port`` is reached directly."""
        if self.everything:
            return True
        host = host.lower().strip("[]").rstrip(".")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            return any(ip in net and p in (None, port) for net, p in self.networks)
        return any(
            (host.endswith(d.suffix) or (d.itself and host == d.suffix[1:]))
            and d.port in (None, port)
            for d in self.domains
        )


def _split_entry(entry: str) -> tuple[str, int | None] | None:
    """``host[:port]`` of a NO_PROXY entry (an IPv6 address needs brackets for a port)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if not rest:
            return host, None
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        return entry, None  # a name, or an IPv6 address or network without brackets
    if not host or (port and not (port.isdigit() and int(port) <= 65535)):
        return None  # ":80", "host:http": malformed, ignored as Go does
    return host, int(port) if port else None


def _network(host: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(host, strict=False)
    except ValueError:
        return None


def _proxy(name: str, value: str) -> Proxy:
    """A proxy from its variable's value; a ConfigError names the variable, not the secret."""
    try:
        url = URL(value if "://" in value else f"http://{value}")
    except ValueError:  # yarl's complaint may quote the value, credentials and all
        raise ConfigError(f"{name}: not a proxy URL") from None
    if url.scheme not in _DEFAULT_PORTS:
        raise ConfigError(
            f"{name}: proxy scheme {url.scheme!r} is not supported (use http:// or https://)"
        )
    if not url.host:
        raise ConfigError(f"{name}: the proxy URL has no host")
    headers: dict[str, str] = {}
    if url.raw_user is not None:
        credentials = f"{unquote(url.raw_user)}:{unquote(url.raw_password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(
            credentials.encode("utf-8")
        ).decode("ascii")
    port = url.explicit_port or _DEFAULT_PORTS[url.scheme]
    return Proxy(URL.build(scheme=url.scheme, host=url.host, port=port), headers)


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(the spelling that is set, its value): lower case first, empty counts as unset."""
    for spelling in (name.lower(), name.upper()):
        value = environ.get(spelling, "").strip()
        if value:
            return spelling, value
    return None


@dataclass(frozen=True, slots=True)
class Egress:
    """The proxy (if any) for each scheme, and the hosts that bypass it."""

    https_proxy: Proxy | None = None
    http_proxy: Proxy | None = None
    no_proxy: NoProxy = NoProxy()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Egress:
        """From the process environment (or ``environ``); ConfigError on a bad proxy URL."""
        environ = os.environ if environ is None else environ
        proxies: dict[str, Proxy | None] = {}
        for scheme in ("https", "http"):
            found = _variable(environ, f"{scheme}_proxy")
            proxies[scheme] = _proxy(*found) if found else None
        no_proxy = _variable(environ, "no_proxy")
        return cls(
            https_proxy=proxies["https"],
            http_proxy=proxies["http"],
            no_proxy=NoProxy.parse(no_proxy[1]) if no_proxy else NoProxy(),
        )

    @property
    def proxies(self) -> tuple[Proxy, ...]:
        return tuple(p for p in (self.https_proxy, self.http_proxy) if p is not None)

    def proxy_for(self, url: URL) -> Proxy | None:
        """The proxy to send a request for ``url`` through, or None to connect directly."""
        proxy = self.https_proxy if url.scheme == "https" else self.http_proxy
        if proxy is None or url.raw_host is None or url.port is None:
            return None
        return None if self.no_proxy.matches(url.raw_host, url.port) else proxy

    def describe(self) -> str:
        """One line for the start-up log; never the credentials."""
        parts = [
            f"{scheme} via {proxy.url}" if proxy else f"{scheme} direct"
            for scheme, proxy in (("https", self.https_proxy), ("http", self.http_proxy))
        ]
        return ", ".join(parts)
