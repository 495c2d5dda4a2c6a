"""The probe through a real egress proxy (Debian's tinyproxy) to real registries.

What the proxy's own log shows is the proof: the probe's requests went through
it, a NO_PROXY host did not, and nothing the address guard refuses reached it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.registries import (
    BearerRegistry,
    FakeRegistry,
    PublicRegistry,
    RedirectingRegistry,
)
from tests.integration.registries import Registry, TestCA, TokenServer, require_binary
from tests.integration.tinyproxy import TinyProxy
from tests.support import free_port
from webhook.egress import Egress
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.registry import RegistryClient

ClientFactory = Callable[..., Awaitable[RegistryClient]]

PUBLIC = ProbeResult(Visibility.PUBLIC, Reason.ANONYMOUS_OK)
INTERNAL = ProbeResult(Visibility.INTERNAL, Reason.BLOCKED_ADDRESS)
BLOCKED = ProbeResult(Visibility.UNKNOWN, Reason.BLOCKED_ADDRESS)
PROXY_ERROR = ProbeResult(Visibility.UNKNOWN, Reason.PROXY_ERROR)


@pytest.fixture(scope="session")
def tinyproxy_binary() -> str:
    return require_binary("tinyproxy", "tinyproxy")


@pytest.fixture
def proxy(tinyproxy_binary: str, tmp_path: Path) -> Iterator[TinyProxy]:
    tiny = TinyProxy(tmp_path / "proxy", tinyproxy_binary).start()
    yield tiny
    tiny.stop()


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeRegistry]]:
    """Fake registries to start; stopped at teardown."""
    started: list[FakeRegistry] = []
    yield started
    for fake in started:
        await fake.stop()


def via(proxy_url: str, no_proxy: str = "") -> Egress:
    """The environment a cluster admin sets, as the webhook reads it."""
    return Egress.from_environ(
        {"HTTPS_PROXY": proxy_url, "HTTP_PROXY": proxy_url, "NO_PROXY": no_proxy}
    )


def manifest(registry: Registry, repository: str, reference: str = "v1") -> str:
    return f"http://{registry.domain}/v2/{repository}/manifests/{reference}"


async def test_a_plain_http_registry_is_probed_through_the_proxy(
    anonymous_registry: Registry, proxy: TinyProxy, make_client: ClientFactory
) -> None:
    client = await make_client(insecure=[anonymous_registry.domain], egress=via(proxy.url))
    assert await client.probe(anonymous_registry.domain, "team/app", "v1") == PUBLIC
    missing = await client.probe(anonymous_registry.domain, "team/missing", "v1")
    assert missing == ProbeResult(Visibility.PRIVATE, Reason.NOT_FOUND)
    assert proxy.requests() == [
        f"HEAD {manifest(anonymous_registry, 'team/app')}",
        f"HEAD {manifest(anonymous_registry, 'team/missing')}",
    ]
    assert anonymous_registry.manifest_requests("team/app", "v1")  # and it reached the registry


async def test_the_token_realm_is_asked_through_the_proxy(
    token_registry: Registry,
    token_server: TokenServer,
    proxy: TinyProxy,
    make_client: ClientFactory,
) -> None:
    client = await make_client(
        insecure=[token_registry.domain, f"{token_server.host}:{token_server.port}"],
        egress=via(proxy.url),
    )
    assert await client.probe(token_registry.domain, "public/app", "v1") == PUBLIC
    seen = proxy.requests()
    assert seen[0] == f"HEAD {manifest(token_registry, 'public/app')}"
    assert seen[1].startswith(f"GET {token_server.realm}?")
    assert seen[2] == f"HEAD {manifest(token_registry, 'public/app')}"
    assert len(seen) == 3


async def test_a_tls_registry_is_tunnelled_with_connect(
    tls_registry: Registry, test_ca: TestCA, proxy: TinyProxy, make_client: ClientFactory
) -> None:
    client = await make_client(
        allow_private=True, ssl_context=test_ca.client_context(), egress=via(proxy.url)
    )
    assert await client.probe(tls_registry.domain, "team/app", "v1") == PUBLIC
    assert proxy.requests() == [f"CONNECT {tls_registry.host}:{tls_registry.port}"]


@pytest.mark.parametrize("no_proxy", ["{host}", "{host}:{port}", "127.0.0.0/8", "*"])
async def test_no_proxy_hosts_are_reached_directly(
    anonymous_registry: Registry, proxy: TinyProxy, make_client: ClientFactory, no_proxy: str
) -> None:
    entry = no_proxy.format(host=anonymous_registry.host, port=anonymous_registry.port)
    client = await make_client(insecure=[anonymous_registry.domain], egress=via(proxy.url, entry))
    assert await client.probe(anonymous_registry.domain, "team/app", "v1") == PUBLIC
    assert proxy.requests() == []
    assert anonymous_registry.manifest_requests("team/app", "v1")


async def test_the_guard_still_refuses_internal_registries_through_the_proxy(
    proxy: TinyProxy, make_client: ClientFactory
) -> None:
    client = await make_client(egress=via(proxy.url))
    for domain in (
        "10.0.0.1",
        "169.254.169.254",
        f"127.1:{proxy.port}",
        "2130706433:80",
        "[::ffff:0:7f00:1]",
        "[fd00:ec2::254]",
        f"localhost:{proxy.port}",  # a name that resolves here to loopback
        f"127.0.0.1:{proxy.port}",  # the proxy itself, as a registry
    ):
        assert await client.probe(domain, "team/app", "v1") == INTERNAL, domain
    assert proxy.requests() == []


async def test_redirects_and_realms_turning_inward_are_refused_through_the_proxy(
    proxy: TinyProxy, make_client: ClientFactory, fakes: list[FakeRegistry]
) -> None:
    redirecting = RedirectingRegistry("https://169.254.169.254/v2/team/app/manifests/v1")
    realm_inward = BearerRegistry("https://10.0.0.1/token")
    for fake in (redirecting, realm_inward):
        await fake.start()
        fakes.append(fake)
    client = await make_client(
        insecure=[redirecting.domain, realm_inward.domain], egress=via(proxy.url)
    )
    assert await client.probe(redirecting.domain, "team/app", "v1") == BLOCKED
    assert await client.probe(realm_inward.domain, "team/app", "v1") == BLOCKED
    # each registry was asked once, through the proxy; the inward hop never left
    assert proxy.requests() == [
        f"HEAD http://{redirecting.domain}/v2/team/app/manifests/v1",
        f"HEAD http://{realm_inward.domain}/v2/team/app/manifests/v1",
    ]
    assert len(redirecting.requests) == len(realm_inward.requests) == 1


async def test_proxy_credentials_from_the_url(
    tinyproxy_binary: str,
    tmp_path: Path,
    make_client: ClientFactory,
    fakes: list[FakeRegistry],
    tls_registry: Registry,
    test_ca: TestCA,
) -> None:
    public = PublicRegistry()
    await public.start()
    fakes.append(public)
    tiny = TinyProxy(tmp_path / "auth", tinyproxy_binary, credentials=("probe", "s3cret")).start()
    try:
        tls = {"allow_private": True, "ssl_context": test_ca.client_context()}
        # without credentials: the CONNECT is refused with 407
        tunnel = await make_client(egress=via(tiny.url), **tls)
        assert await tunnel.probe(tls_registry.domain, "team/app", "v1") == PROXY_ERROR
        plain = await make_client(insecure=[public.domain], egress=via(tiny.url))
        result = await plain.probe(public.domain, "team/app", "v1")
        assert result.visibility is Visibility.UNKNOWN and public.requests == []
        # with them, in the proxy URL as admins write it
        with_auth = via(f"http://probe:s3cret@{tiny.host}:{tiny.port}")
        tunnel = await make_client(egress=with_auth, **tls)
        assert await tunnel.probe(tls_registry.domain, "team/app", "v1") == PUBLIC
        plain = await make_client(insecure=[public.domain], egress=with_auth)
        assert await plain.probe(public.domain, "team/app", "v1") == PUBLIC
        assert len(public.requests) == 1
        assert "Proxy-Authorization" not in public.requests[0].headers  # not passed on
    finally:
        tiny.stop()


async def test_a_proxy_that_is_down_is_a_proxy_error(make_client: ClientFactory) -> None:
    client = await make_client(egress=via(f"http://127.0.0.1:{free_port()}"))
    # a documentation address (TEST-NET-1): public to the guard, and nothing is sent to it
    assert await client.probe("192.0.2.10", "team/app", "v1") == PROXY_ERROR
