"""The anonymous registry probe (docs/design.md §2).

``HEAD /v2/<path>/manifests/<reference>`` with the full Accept list, no
credentials. A ``Bearer`` challenge is followed anonymously (``GET
realm?service=…&scope=…``) and the HEAD retried with the token. The answer is
classified:

==========================================  ==========  =========================
registry says                               visibility  reason
==========================================  ==========  =========================
2xx                                         public      anonymous-ok
401 Basic (or any non-Bearer scheme, or     private     auth-required
no challenge), 403, token refused (401/403
from the realm), 401/403 with the token
404                                         private     not-found-anonymously
429 (from the registry or the realm)        unknown     rate-limited (retry_after)
5xx                                         unknown     server-error (retry_after
                                                        from a 503's Retry-After)
timeout / DNS / TLS / connection error      unknown     timeout / dns-error /
                                                        tls-error / connection-error
the egress proxy refuses the request or     unknown     proxy-error
cannot be reached
the registry host refused by netguard       internal    blocked-address
(its redirect or token realm refused)       unknown     blocked-address
plain-HTTP URL for a host not listed in     unknown     plain-http-refused
insecureRegistries (redirect or realm)
anything else: an unparseable or unusable   unknown     bad-response
Bearer challenge, a token body that is not
JSON or has no token, a body over the cap,
an unexpected status, a redirect loop
==========================================  ==========  =========================

Garbage in ``WWW-Authenticate`` is ``unknown``/``bad-response`` rather than
``private``: the registry is misbehaving, and ``unknown`` follows
``onProbeFailure`` and is retried after ``failureTtlSeconds`` instead of being
remembered for ``ttlSeconds``. A well-formed challenge in a scheme we do not
follow (Basic, Negotiate, …) is a plain "credentials needed", so ``private``.

:meth:`RegistryClient.probe` never raises: every failure is a ProbeResult.
Tokens are never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from cachetools import TLRUCache
from multidict import CIMultiDict
from yarl import URL

from webhook.config import ProbeSettings
from webhook.egress import Egress
from webhook.images import DOCKER_HUB_ALIASES
from webhook.netguard import (
    GuardedResolver,
    GuardMiddleware,
    NetGuard,
    blocked_cause,
    canonical_host,
    dns_cause,
    host_port,
)
from webhook.probes import ProbeResult, Reason, Visibility

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
USER_AGENT = "image-proxy-webhook (anonymous visibility probe)"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
MAX_REDIRECTS = 3
BODY_CAP = 64 * 1024  # a token response is a few KiB
DEFAULT_TOKEN_SECONDS = 60.0  # distribution's token spec: expires_in defaults to 60
TOKEN_CACHE_SIZE = 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

_SAFE_PATH = re.compile(r"[a-z0-9]+(?:[._/-]+[a-z0-9]+)*")
_SAFE_REFERENCE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+=-]{0,255}")


# --- WWW-Authenticate --------------------------------------------------------


class ChallengeError(ValueError):
    """A WWW-Authenticate header that does not follow RFC 9110's grammar."""


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case
    params: Mapping[str, str] = field(default_factory=dict)  # names lower case


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68 = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OWS = " \t"


class _Scanner:
    """A single left-to-right pass: linear in the header's length."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def token(self, chars: frozenset[str] = _TCHAR) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        # at the opening quote; a backslash escapes the next character
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                if self.pos + 1 >= len(self.text):
                    break
                out.append(self.text[self.pos + 1])
                self.pos += 2
            elif char == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(char)
                self.pos += 1
        raise ChallengeError("unterminated quoted string")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the WWW-Authenticate header values, in order.

    ``Bearer realm="https://a/token",service="x",scope="repository:p:pull"``,
    several challenges in one value (``Basic realm="r", Bearer realm="…"``),
    quoted values holding commas and escaped quotes, bare token values and a
    token68 credential are understood; anything else raises ChallengeError.
    The first occurrence of a repeated parameter wins.
    """
    challenges: list[Challenge] = []
    for value in values:
        scanner = _Scanner(value)
        while True:
            scanner.skip(_OWS + ",")
            if scanner.at_end():
                break
            scheme = scanner.token()
            if not scheme:
                raise ChallengeError(f"expected an auth scheme at offset {scanner.pos}")
            challenges.append(Challenge(scheme.lower(), _parse_params(scanner)))
    return challenges


def _parse_params(scanner: _Scanner) -> dict[str, str]:
    """The auth-params (or token68) after a scheme, up to the next challenge."""
    params: dict[str, str] = {}
    if scanner.at_end() or scanner.peek() == ",":
        return params
    if scanner.peek() not in _OWS:
        raise ChallengeError(f"unexpected {scanner.peek()!r} after the auth scheme")
    scanner.skip(_OWS)
    if scanner.at_end() or scanner.peek() == ",":
        return params
    if not _is_param_start(scanner.text, scanner.pos):
        # token68 (e.g. "Negotiate abc=="): the whole credential, nothing else
        start = scanner.pos
        if not scanner.token(_TOKEN68):
            raise ChallengeError(f"unexpected {scanner.peek()!r} after the auth scheme")
        scanner.skip("=")
        params["token68"] = scanner.text[start : scanner.pos]
        scanner.skip(_OWS)
        if not (scanner.at_end() or scanner.peek() == ","):
            raise ChallengeError(f"unexpected {scanner.peek()!r} after a token68 credential")
        return params
    while True:
        name = scanner.token()
        scanner.skip(_OWS)
        if not name or scanner.peek() != "=":
            raise ChallengeError(f"expected name=value at offset {scanner.pos}")
        scanner.pos += 1
        scanner.skip(_OWS)
        if scanner.peek() == '"':
            value = scanner.quoted()
        else:
            value = scanner.token()
            if not value:
                raise ChallengeError(f"parameter {name!r} has no value")
        params.setdefault(name.lower(), value)
        scanner.skip(_OWS)
        if scanner.at_end():
            return params
        if scanner.peek() != ",":
            raise ChallengeError(f"unexpected {scanner.peek()!r} after parameter {name!r}")
        scanner.skip(_OWS + ",")
        if scanner.at_end() or not _is_param_start(scanner.text, scanner.pos):
            return params  # the end, or the next challenge's scheme


def _is_param_start(text: str, pos: int) -> bool:
    """Whether ``name [OWS] =`` (and not ``name==``, a token68) starts at pos."""
    while pos < len(text) and text[pos] in _TCHAR:
        pos += 1
    while pos < len(text) and text[pos] in _OWS:
        pos += 1
    return pos < len(text) and text[pos] == "=" and text[pos + 1 : pos + 2] != "="


# --- helpers -----------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def registry_host(domain: str) -> str:
    """The host:port the registry API lives on (Docker Hub's API is on registry-1)."""
    return DOCKER_HUB_REGISTRY if domain.lower() in DOCKER_HUB_ALIASES else domain.lower()


def manifest_url(domain: str, path: str, reference: str, guard: NetGuard) -> URL:
    if not _SAFE_PATH.fullmatch(path) or not _SAFE_REFERENCE.fullmatch(reference):
        raise ValueError(f"not a repository path and reference: {path!r} {reference!r}")
    base = URL(f"http://{registry_host(domain)}")  # only to split host and port
    if base.host is None or base.path not in ("", "/") or base.query_string:
        raise ValueError(f"not a registry host: {domain!r}")
    # "127.1" or "2130706433:5000" is the address it means: connect to that one
    host = host_port(canonical_host(base.host), base.explicit_port)
    # a listed "host" or "host:80" makes a port-less registry plain HTTP
    scheme = "http" if guard.is_insecure(base.host, base.explicit_port or 80) else "https"
    return URL(f"{scheme}://{host}/v2/{path}/manifests/{reference}", encoded=True)


class _Refused(Exception):
    """A URL the probe will not fetch; carries the ProbeResult."""

    def __init__(self, result: ProbeResult) -> None:
        super().__init__(result.reason)
        self.result = result


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    url: URL


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    lifetime: float


def _unknown(reason: Reason, retry_after: float | None = None) -> ProbeResult:
    return ProbeResult(Visibility.UNKNOWN, reason, retry_after)


def _classify(response: _Response) -> ProbeResult:
    status = response.status
    if 200 <= status < 300:
        return ProbeResult(Visibility.PUBLIC, Reason.ANONYMOUS_OK)
    if status in (401, 403):
        return ProbeResult(Visibility.PRIVATE, Reason.AUTH_REQUIRED)
    if status == 404:
        return ProbeResult(Visibility.PRIVATE, Reason.NOT_FOUND)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        return _unknown(Reason.RATE_LIMITED, retry_after)
    if status >= 500:
        return _unknown(Reason.SERVER_ERROR, retry_after if status == 503 else None)
    return _unknown(Reason.BAD_RESPONSE)


def _classify_exception(exc: BaseException) -> ProbeResult:
    if blocked_cause(exc) is not None:
        return _unknown(Reason.BLOCKED_ADDRESS)
    if isinstance(exc, aiohttp.ClientHttpProxyError | aiohttp.ClientProxyConnectionError):
        return _unknown(Reason.PROXY_ERROR)  # the egress proxy refused, or could not be reached
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts subclass it too
        return _unknown(Reason.TIMEOUT)
    if dns_cause(exc) is not None or isinstance(exc, aiohttp.ClientConnectorDNSError):
        return _unknown(Reason.DNS_ERROR)
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return _unknown(Reason.TLS_ERROR)
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return _unknown(Reason.BAD_RESPONSE)
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return _unknown(Reason.BAD_RESPONSE)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return _unknown(Reason.CONNECTION_ERROR)
    return _unknown(Reason.INTERNAL_ERROR)


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    if response.content_length is not None and response.content_length > cap:
        raise _Refused(_unknown(Reason.BAD_RESPONSE))
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(16 * 1024):
        total += len(chunk)
        if total > cap:
            raise _Refused(_unknown(Reason.BAD_RESPONSE))
        chunks.append(chunk)
    return b"".join(chunks)


# --- the client --------------------------------------------------------------


def make_session(
    settings: ProbeSettings, guard: NetGuard, *, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """A probe session behind ``guard`` (every address it resolves or connects to), with
    explicit timeouts.

    ``ssl_context`` replaces the system trust store (tests pass one that trusts their
    CA). aiohttp's own reading of the environment stays off (``trust_env``): it would
    also send credentials from ``~/.netrc``; RegistryClient picks each request's
    proxy. No cookies are kept.
    """
    seconds = settings.timeout_seconds
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(guard),
        ssl=ssl_context if ssl_context is not None else True,
        limit=max(settings.max_concurrent * 2, 10),
        limit_per_host=max(settings.max_concurrent, 4),
        ttl_dns_cache=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        middlewares=(GuardMiddleware(guard),),
        timeout=aiohttp.ClientTimeout(
            total=seconds, connect=seconds, sock_connect=seconds, sock_read=seconds
        ),
        headers={"User-Agent": USER_AGENT},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        raise_for_status=False,
        auto_decompress=False,
    )


class RegistryClient:
    """Asks registries, anonymously, whether a repository can be pulled."""

    @classmethod
    def open(
        cls,
        settings: ProbeSettings,
        egress: Egress,
        *,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> RegistryClient:
        """A client on a session of its own (closed by :meth:`close`), the one address
        guard shared by both, letting through the proxies ``egress`` names."""
        if egress.proxies:
            log.info("registry probes go out through a proxy: %s", egress.describe())
        guard = NetGuard.from_settings(settings, (proxy.endpoint for proxy in egress.proxies))
        session = make_session(settings, guard, ssl_context=ssl_context)
        return cls(session, settings, guard, egress, clock=clock)

    async def close(self) -> None:
        await self._session.close()

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: ProbeSettings,
        guard: NetGuard,
        egress: Egress,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``guard``: the session's own; ``egress``: the proxies it may reach."""
        self._session = session
        self._settings = settings
        self._guard = guard
        self._egress = egress
        self._tokens: TLRUCache[tuple[str, str, str], _Token] = TLRUCache(
            maxsize=TOKEN_CACHE_SIZE,
            ttu=lambda _key, token, now: now + token.lifetime,
            timer=clock,
        )
        self.token_requests = 0  # anonymous token fetches made (for tests and metrics)

    async def probe(self, domain: str, path: str, reference: str) -> ProbeResult:
        """Classify one repository; never raises (cancellation aside).

        The whole probe (challenge, token, retried HEAD, redirects) gets
        ``timeoutSeconds``, and so does every single request within it.
        """
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):
                result = await self._probe(domain, path, reference)
        except _Refused as refused:
            result = refused.result
        except Exception as exc:
            result = _classify_exception(exc)
            if result.reason == Reason.INTERNAL_ERROR:
                log.exception("probe of %s/%s failed unexpectedly", domain, path)
            else:
                log.debug("probe of %s/%s: %s: %s", domain, path, type(exc).__name__, exc)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "probe host=%s path=%s reference=%s visibility=%s reason=%s%s in %.0f ms",
                registry_host(domain),
                path,
                reference,
                result.visibility,
                result.reason,
                "" if result.retry_after is None else f" retry_after={result.retry_after:g}",
                (time.monotonic() - started) * 1000,
            )
        return result

    async def _probe(self, domain: str, path: str, reference: str) -> ProbeResult:
        try:
            url = manifest_url(domain, path, reference, self._guard)
        except ValueError:
            return _unknown(Reason.INVALID_REFERENCE)
        headers = {"Accept": MANIFEST_ACCEPT}
        response = await self._request("HEAD", url, headers, registry=True)
        if response.status != 401:
            return _classify(response)
        try:
            challenges = parse_challenges(response.headers.getall("WWW-Authenticate", []))
        except ChallengeError as exc:
            log.debug("probe of %s/%s: unusable WWW-Authenticate: %s", domain, path, exc)
            return _unknown(Reason.BAD_RESPONSE)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is None:
            return ProbeResult(Visibility.PRIVATE, Reason.AUTH_REQUIRED)
        token = await self._token(bearer, path)
        if isinstance(token, ProbeResult):
            return token
        headers["Authorization"] = f"Bearer {token}"
        return _classify(await self._request("HEAD", response.url, headers))

    async def _token(self, challenge: Challenge, path: str) -> str | ProbeResult:
        realm = challenge.params.get("realm", "")
        try:
            realm_url = URL(realm)
        except ValueError:
            return _unknown(Reason.BAD_RESPONSE)
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            return _unknown(Reason.BAD_RESPONSE)
        service = challenge.params.get("service", "")
        scope = challenge.params.get("scope") or f"repository:{path}:pull"
        key = (str(realm_url), service, scope)
        cached = self._tokens.get(key)
        if cached is not None:
            return cached.value
        query = {"scope": scope} | ({"service": service} if service else {})
        self.token_requests += 1
        response = await self._request("GET", realm_url.extend_query(query), {}, read_body=True)
        if response.status in (401, 403):
            return ProbeResult(Visibility.PRIVATE, Reason.AUTH_REQUIRED)
        if not 200 <= response.status < 300:
            result = _classify(response)
            return (
                result if result.visibility is Visibility.UNKNOWN else _unknown(Reason.BAD_RESPONSE)
            )
        try:
            body = json.loads(response.body)
        except ValueError:
            return _unknown(Reason.BAD_RESPONSE)
        if not isinstance(body, dict):
            return _unknown(Reason.BAD_RESPONSE)
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            return _unknown(Reason.BAD_RESPONSE)
        expires_in = body.get("expires_in")
        lifetime = (
            float(expires_in)
            if isinstance(expires_in, int | float)
            and not isinstance(expires_in, bool)
            and math.isfinite(expires_in)
            and expires_in > 0
            else DEFAULT_TOKEN_SECONDS
        )
        # a little before the server's expiry, so a cached token is never stale in flight
        self._tokens[key] = _Token(token, max(0.0, lifetime - min(10.0, lifetime * 0.1)))
        return token

    async def _request(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        *,
        read_body: bool = False,
        registry: bool = False,
    ) -> _Response:
        """One request, following at most MAX_REDIRECTS redirects by hand.

        By hand so that every hop passes the plain-HTTP rule and an Authorization
        header never leaves the origin it was meant for; the address guard is in
        the session and sees every hop anyway. Each hop picks its own egress proxy
        (a redirect or token realm may be on a NO_PROXY host, or the reverse).
        """
        current = dict(headers)
        for _hop in range(MAX_REDIRECTS + 1):
            if url.scheme == "http" and not self._guard.is_insecure(
                url.host or "", url.explicit_port
            ):
                raise _Refused(_unknown(Reason.PLAIN_HTTP_REFUSED))
            if url.scheme not in ("http", "https"):
                raise _Refused(_unknown(Reason.BAD_RESPONSE))
            proxy = self._egress.proxy_for(url)
            sent = current
            if proxy is not None and url.scheme == "http":
                # aiohttp puts proxy_headers on a CONNECT only; a plain-HTTP request
                # goes to the proxy itself, so its credentials go in the request
                sent = current | dict(proxy.headers)
            try:
                async with self._session.request(
                    method,
                    url,
                    headers=sent,
                    allow_redirects=False,
                    proxy=None if proxy is None else proxy.url,
                    proxy_headers=None if proxy is None else proxy.headers,
                ) as response:
                    location = response.headers.get("Location")
                    if response.status in _REDIRECTS and location:
                        target = url.join(URL(location))
                        if target.origin() != url.origin():
                            current.pop("Authorization", None)
                        url = target
                        continue
                    body = await _read_capped(response, BODY_CAP) if read_body else b""
                    return _Response(response.status, CIMultiDict(response.headers), body, url)
            except aiohttp.ClientError as exc:
                if registry and _hop == 0 and blocked_cause(exc) is not None:
                    # The registry host itself, not a redirect or token realm it
                    # named: the customer's own registry, not a failed probe.
                    raise _Refused(
                        ProbeResult(Visibility.INTERNAL, Reason.BLOCKED_ADDRESS)
                    ) from exc
                raise
        raise _Refused(_unknown(Reason.BAD_RESPONSE))
