"""The probe against registries that misbehave: each fake is named for what it fakes.

Every case asserts the visibility, the reason (and Retry-After where there is
one), and that an admission resolving that image through VisibilityResolver
answers within its deadline.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.registries import (
    BearerRegistry,
    ErroringRegistry,
    FakeRegistry,
    GarbageChallengeRegistry,
    GarbageResponseRegistry,
    HangingRegistry,
    OversizedTokenRealm,
    PublicRegistry,
    RateLimitingRegistry,
    RawRegistry,
    RedirectingRegistry,
    ResettingRegistry,
    ResettingTokenRealm,
    SilentAcceptingRegistry,
    TokenRealm,
)
from webhook.config import VisibilitySettings
from webhook.images import parse
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.registry import RegistryClient
from webhook.visibility import VisibilityResolver

ClientFactory = Callable[..., Awaitable[RegistryClient]]

DEADLINE = 0.5  # the admission deadline used in these tests
SLACK = 0.3  # scheduling slack on a loaded machine


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[Any], Awaitable[Any]]]:
    """``await servers(SomeFake(...))`` starts it; all are stopped at teardown."""
    started: list[Any] = []

    async def start(fake: Any) -> Any:
        await fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in reversed(started):
        await fake.stop()


async def probe(client: RegistryClient, image: str) -> ProbeResult:
    ref = parse(image)
    return await client.probe(ref.domain, ref.path, ref.reference)


async def admit(client: RegistryClient, image: str, deadline: float = DEADLINE) -> Visibility:
    """Resolve one image as an admission would; assert it answered within the deadline."""
    resolver = VisibilityResolver(VisibilitySettings(), client.probe, max_concurrent=4)
    ref = parse(image)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        result = await resolver.resolve_all({(ref.domain, ref.path): ref}, deadline)
    finally:
        elapsed = loop.time() - started
        await resolver.close()
    assert elapsed < deadline + SLACK, f"admission took {elapsed:.2f}s, deadline {deadline}s"
    return result[(ref.domain, ref.path)]


# --- timeouts ------------------------------------------------------------------------


@pytest.mark.parametrize("fake", [HangingRegistry, SilentAcceptingRegistry])
async def test_registry_that_never_answers_times_out(
    fake: type[RawRegistry], servers: Any, make_client: ClientFactory
) -> None:
    registry = await servers(fake())
    client = await make_client(insecure=[registry.domain], timeout=0.4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await probe(client, registry.image()) == ProbeResult(Visibility.UNKNOWN, Reason.TIMEOUT)
    assert loop.time() - started < 0.4 + SLACK
    # an admission with a deadline shorter than the probe timeout does not wait for it
    long_client = await make_client(insecure=[registry.domain], timeout=5.0)
    assert await admit(long_client, registry.image(), deadline=0.3) is Visibility.UNKNOWN


async def test_token_realm_that_hangs_times_out(servers: Any, make_client: ClientFactory) -> None:
    realm = await servers(TokenRealm(delay=30))
    registry = await servers(BearerRegistry(realm.realm))
    client = await make_client(insecure=["127.0.0.1"], timeout=0.4)
    assert await probe(client, registry.image()) == ProbeResult(Visibility.UNKNOWN, Reason.TIMEOUT)
    assert await admit(client, registry.image()) is Visibility.UNKNOWN


# --- server errors and rate limits ----------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_erroring_registry_is_unknown(
    status: int, servers: Any, make_client: ClientFactory
) -> None:
    registry = await servers(ErroringRegistry(status))
    client = await make_client(insecure=[registry.domain])
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.SERVER_ERROR
    )
    assert await admit(client, registry.image()) is Visibility.UNKNOWN


async def test_unavailable_registry_passes_on_retry_after(
    servers: Any, make_client: ClientFactory
) -> None:
    registry = await servers(ErroringRegistry(503, retry_after="17"))
    client = await make_client(insecure=[registry.domain])
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.SERVER_ERROR, 17.0
    )


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("42", 42.0), (None, None), ("soon", None), ("-5", None)],
)
async def test_rate_limiting_registry(
    retry_after: str | None,
    expected: float | None,
    servers: Any,
    make_client: ClientFactory,
) -> None:
    registry = await servers(RateLimitingRegistry(retry_after))
    client = await make_client(insecure=[registry.domain])
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.RATE_LIMITED, expected
    )
    assert await admit(client, registry.image()) is Visibility.UNKNOWN


async def test_rate_limit_with_an_http_date(servers: Any, make_client: ClientFactory) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    registry = await servers(RateLimitingRegistry(when))
    client = await make_client(insecure=[registry.domain])
    result = await probe(client, registry.image())
    assert (result.visibility, result.reason) == (Visibility.UNKNOWN, "rate-limited")
    assert result.retry_after is not None and 100 < result.retry_after <= 121


async def test_rate_limit_is_cached_for_retry_after(
    servers: Any, make_client: ClientFactory
) -> None:
    registry = await servers(RateLimitingRegistry("3600"))
    client = await make_client(insecure=[registry.domain])
    resolver = VisibilityResolver(
        VisibilitySettings(failure_ttl_seconds=0.01), client.probe, max_concurrent=4
    )
    ref = parse(registry.image())
    try:
        for _ in range(3):
            result = await resolver.resolve(ref.domain, ref.path, ref.reference)
            await asyncio.sleep(0.05)  # well past failureTtlSeconds
        assert result.cached and result.reason == "rate-limited"
        assert len(registry.requests) == 1
    finally:
        await resolver.close()


async def test_token_realm_rate_limited(servers: Any, make_client: ClientFactory) -> None:
    realm = await servers(TokenRealm({"errors": []}, status=429))
    registry = await servers(BearerRegistry(realm.realm))
    client = await make_client(insecure=["127.0.0.1"])
    assert (await probe(client, registry.image())).reason == "rate-limited"


# --- broken connections and protocols -------------------------------------------------


async def test_resetting_registry_is_a_connection_error(
    servers: Any, make_client: ClientFactory
) -> None:
    registry = await servers(ResettingRegistry())
    client = await make_client(insecure=[registry.domain])
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.CONNECTION_ERROR
    )
    assert await admit(client, registry.image()) is Visibility.UNKNOWN


async def test_garbage_response_is_a_bad_response(servers: Any, make_client: ClientFactory) -> None:
    registry = await servers(GarbageResponseRegistry())
    client = await make_client(insecure=[registry.domain])
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.BAD_RESPONSE
    )
    assert await admit(client, registry.image()) is Visibility.UNKNOWN


async def test_registry_that_is_down_is_a_connection_error(make_client: ClientFactory) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    domain = f"127.0.0.1:{port}"
    client = await make_client(insecure=[domain])
    assert await probe(client, f"{domain}/team/app:v1") == ProbeResult(
        Visibility.UNKNOWN, Reason.CONNECTION_ERROR
    )
    assert await admit(client, f"{domain}/team/app:v1") is Visibility.UNKNOWN


async def test_unresolvable_registry_is_a_dns_error(make_client: ClientFactory) -> None:
    client = await make_client(timeout=2.0)
    result = await probe(client, "registry.does-not-exist.invalid/team/app:v1")
    assert result == ProbeResult(Visibility.UNKNOWN, Reason.DNS_ERROR)


# --- WWW-Authenticate ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("challenges", "visibility", "reason"),
    [
        (('Basic realm="private-registry"',), Visibility.PRIVATE, "auth-required"),
        (("Negotiate",), Visibility.PRIVATE, "auth-required"),
        ((), Visibility.PRIVATE, "auth-required"),  # a 401 without any challenge
        (('Bearer realm="unterminated',), Visibility.UNKNOWN, "bad-response"),
        (('=== ,,, "',), Visibility.UNKNOWN, "bad-response"),
        (("Bearer realm=",), Visibility.UNKNOWN, "bad-response"),
        (('Bearer service="x",scope="repository:team/app:pull"',), Visibility.UNKNOWN,
         "bad-response"),  # no realm
        (('Bearer realm="ftp://127.0.0.1/token"',), Visibility.UNKNOWN, "bad-response"),
        (('Bearer realm="not a url"',), Visibility.UNKNOWN, "bad-response"),
        (('Bearer realm="/relative/token"',), Visibility.UNKNOWN, "bad-response"),
    ],
)  # fmt: skip
async def test_garbage_challenge_registry(
    challenges: tuple[str, ...],
    visibility: Visibility,
    reason: str,
    servers: Any,
    make_client: ClientFactory,
) -> None:
    registry = await servers(GarbageChallengeRegistry(*challenges))
    client = await make_client(insecure=[registry.domain])
    assert await probe(client, registry.image()) == ProbeResult(visibility, Reason(reason))
    assert await admit(client, registry.image()) is visibility
    assert client.token_requests == 0


@pytest.mark.parametrize(
    "template",
    [
        'Bearer realm="{realm}",service="fake-registry",scope="repository:team/app:pull"',
        # quoted commas and escaped quotes elsewhere in the header, odd spacing
        'Bearer  error="a, b \\"c\\"" , realm = "{realm}" ,service=fake-registry',
        # a Basic challenge first, Bearer second, in one value
        'Basic realm="r, s", Bearer realm="{realm}",service="fake-registry"',
    ],
)
async def test_bearer_challenge_variants_are_followed(
    template: str, servers: Any, make_client: ClientFactory
) -> None:
    realm = await servers(TokenRealm())
    challenge = template.format(realm=realm.realm)

    class Registry(FakeRegistry):
        async def handle(self, request: web.Request) -> web.StreamResponse:
            if request.headers.get("Authorization") == "Bearer good-token":
                return web.Response(status=200)
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    registry = await servers(Registry())
    client = await make_client(insecure=["127.0.0.1"])
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.PUBLIC, Reason.ANONYMOUS_OK
    )
    query = realm.requests[0].query
    assert query["scope"] == "repository:team/app:pull"  # from the challenge or defaulted
    assert query.get("service") == "fake-registry"


async def test_challenge_without_scope_asks_for_pull_on_the_repository(
    servers: Any, make_client: ClientFactory
) -> None:
    realm = await servers(TokenRealm())
    registry = await servers(BearerRegistry(realm.realm, scope=None, service=None))
    client = await make_client(insecure=["127.0.0.1"])
    assert (await probe(client, f"{registry.domain}/org/team/app:v1")).visibility is (
        Visibility.PUBLIC
    )
    assert dict(realm.requests[0].query) == {"scope": "repository:org/team/app:pull"}


# --- token realm faults -------------------------------------------------------------------


async def test_token_realm_that_is_down(servers: Any, make_client: ClientFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = await servers(BearerRegistry(f"http://127.0.0.1:{port}/token"))
    client = await make_client(insecure=["127.0.0.1"])
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.CONNECTION_ERROR
    )
    assert await admit(client, registry.image()) is Visibility.UNKNOWN


async def test_token_realm_resetting_mid_response(servers: Any, make_client: ClientFactory) -> None:
    realm = await servers(ResettingTokenRealm())
    registry = await servers(BearerRegistry(realm.realm))
    client = await make_client(insecure=["127.0.0.1"])
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.CONNECTION_ERROR
    )


@pytest.mark.parametrize(
    ("body", "status", "visibility", "reason"),
    [
        ({"token": "good-token"}, 200, Visibility.PUBLIC, "anonymous-ok"),
        ({"access_token": "good-token"}, 200, Visibility.PUBLIC, "anonymous-ok"),
        ({"token": "other-token"}, 200, Visibility.PRIVATE, "auth-required"),  # lacks scope
        ({"details": "no"}, 401, Visibility.PRIVATE, "auth-required"),  # refused
        ({"details": "no"}, 403, Visibility.PRIVATE, "auth-required"),
        ({"details": "no"}, 404, Visibility.UNKNOWN, "bad-response"),
        ({"details": "down"}, 500, Visibility.UNKNOWN, "server-error"),
        (b"<html>not json</html>", 200, Visibility.UNKNOWN, "bad-response"),
        (b'["token"]', 200, Visibility.UNKNOWN, "bad-response"),
        ({"token": ""}, 200, Visibility.UNKNOWN, "bad-response"),
        ({"token": 42}, 200, Visibility.UNKNOWN, "bad-response"),
        (json.dumps({"token": "x" * 70_000}).encode(), 200, Visibility.UNKNOWN, "bad-response"),
    ],
)
async def test_token_realm_answers(
    body: bytes | dict[str, Any],
    status: int,
    visibility: Visibility,
    reason: str,
    servers: Any,
    make_client: ClientFactory,
) -> None:
    realm = await servers(TokenRealm(body, status))
    registry = await servers(BearerRegistry(realm.realm))
    client = await make_client(insecure=["127.0.0.1"])
    assert await probe(client, registry.image()) == ProbeResult(visibility, Reason(reason))
    assert await admit(client, registry.image()) is visibility


async def test_token_body_is_read_only_up_to_the_cap(
    servers: Any, make_client: ClientFactory
) -> None:
    realm = await servers(OversizedTokenRealm())
    registry = await servers(BearerRegistry(realm.realm))
    client = await make_client(insecure=["127.0.0.1"])
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.BAD_RESPONSE
    )


async def test_tokens_are_cached_until_expires_in(servers: Any, make_client: ClientFactory) -> None:
    realm = await servers(TokenRealm({"token": "good-token", "expires_in": 300}))
    registry = await servers(BearerRegistry(realm.realm))
    client = await make_client(insecure=["127.0.0.1"])
    for _ in range(3):
        assert (await probe(client, registry.image())).visibility is Visibility.PUBLIC
    assert len(realm.requests) == 1
    assert registry.authorizations == [None, "Bearer good-token"] * 3


async def test_tokens_without_lifetime_are_not_kept_past_a_minute(
    servers: Any, make_client: ClientFactory
) -> None:
    realm = await servers(TokenRealm({"token": "good-token"}))
    registry = await servers(BearerRegistry(realm.realm))
    now = [1000.0]
    client = await make_client(insecure=["127.0.0.1"], clock=lambda: now[0])
    await probe(client, registry.image())
    now[0] += 50
    await probe(client, registry.image())
    assert len(realm.requests) == 1
    now[0] += 11  # past the default 60 s
    await probe(client, registry.image())
    assert len(realm.requests) == 2


# --- redirects -------------------------------------------------------------------------------


async def test_redirects_are_followed_up_to_three(servers: Any, make_client: ClientFactory) -> None:
    final = await servers(PublicRegistry())
    hop2 = await servers(RedirectingRegistry(f"{final.url}/v2/team/app/manifests/v1"))
    hop1 = await servers(RedirectingRegistry(f"{hop2.url}/v2/team/app/manifests/v1", 302))
    start = await servers(RedirectingRegistry(f"{hop1.url}/v2/team/app/manifests/v1", 301))
    client = await make_client(insecure=["127.0.0.1"])
    assert await probe(client, start.image()) == ProbeResult(Visibility.PUBLIC, Reason.ANONYMOUS_OK)
    assert [r.method for r in final.requests] == ["HEAD"]


async def test_redirect_loop_is_a_bad_response(servers: Any, make_client: ClientFactory) -> None:
    loop = await servers(RedirectingRegistry("{self.url}/v2/team/app/manifests/v1"))
    client = await make_client(insecure=["127.0.0.1"])
    assert await probe(client, loop.image()) == ProbeResult(Visibility.UNKNOWN, Reason.BAD_RESPONSE)
    assert len(loop.requests) == 4  # the request and three redirects


async def test_redirect_into_a_blocked_address_is_refused(
    servers: Any, make_client: ClientFactory
) -> None:
    target = await servers(PublicRegistry())
    registry = await servers(
        RedirectingRegistry(f"https://localhost:{target.port}/v2/team/app/manifests/v1")
    )
    client = await make_client(insecure=[registry.domain])  # only the registry is listed
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.BLOCKED_ADDRESS
    )
    plain = await servers(
        RedirectingRegistry(f"http://127.0.0.1:{target.port}/v2/team/app/manifests/v1")
    )
    client = await make_client(insecure=[plain.domain])
    assert await probe(client, plain.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.PLAIN_HTTP_REFUSED
    )
    assert target.requests == []


async def test_authorization_is_not_carried_to_another_origin(
    servers: Any, make_client: ClientFactory
) -> None:
    realm = await servers(TokenRealm())
    elsewhere = await servers(PublicRegistry())

    class Registry(BearerRegistry):
        async def handle(self, request: web.Request) -> web.StreamResponse:
            if request.headers.get("Authorization"):
                location = f"{elsewhere.url}/v2/team/app/manifests/v1"
                return web.Response(status=307, headers={"Location": location})
            return await super().handle(request)

    registry = await servers(Registry(realm.realm))
    client = await make_client(insecure=["127.0.0.1"])
    assert (await probe(client, registry.image())).visibility is Visibility.PUBLIC
    assert elsewhere.authorizations == [None]


# --- request shape ---------------------------------------------------------------------------


async def test_probe_sends_an_anonymous_head_with_the_full_accept_list(
    servers: Any, make_client: ClientFactory
) -> None:
    registry = await servers(PublicRegistry())
    client = await make_client(insecure=[registry.domain])
    await probe(client, f"{registry.domain}/team/app@sha256:{'a' * 64}")
    request = registry.requests[0]
    assert request.method == "HEAD"
    assert request.path == f"/v2/team/app/manifests/sha256:{'a' * 64}"
    assert "Authorization" not in request.headers
    assert [a.strip() for a in request.headers["Accept"].split(",")] == [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]


async def test_plain_http_only_for_listed_registries(
    servers: Any, make_client: ClientFactory
) -> None:
    registry = await servers(PublicRegistry())
    client = await make_client(allow_private=True)  # reachable, but not listed: HTTPS
    assert await probe(client, registry.image()) == ProbeResult(
        Visibility.UNKNOWN, Reason.TLS_ERROR
    )
    client = await make_client(insecure=[registry.domain])
    assert (await probe(client, registry.image())).visibility is Visibility.PUBLIC
