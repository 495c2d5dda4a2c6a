"""The probe against real CNCF distribution registries on loopback (docs/design.md §2)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.registries import ALL_MANIFESTS, Registry, TestCA, TokenServer
from webhook.config import VisibilitySettings
from webhook.images import parse
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.registry import RegistryClient
from webhook.visibility import VisibilityResolver

ClientFactory = Callable[..., Awaitable[RegistryClient]]


async def probe(client: RegistryClient, image: str) -> ProbeResult:
    ref = parse(image)
    return await client.probe(ref.domain, ref.path, ref.reference)


async def wait_for_log(registry: Registry, repository: str, at_least: int = 1) -> int:
    """Manifest requests for the repository in the registry's access log, once settled."""
    for _ in range(100):
        if len(registry.manifest_requests(repository)) >= at_least:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # anything still to come would be in by now
    return len(registry.manifest_requests(repository))


# --- classification ---------------------------------------------------------------


async def test_anonymous_registry_docker_v2_manifest_is_public(
    anonymous_registry: Registry, make_client: ClientFactory
) -> None:
    client = await make_client(insecure=[anonymous_registry.domain])
    assert await probe(client, anonymous_registry.image("team/app")) == ProbeResult(
        Visibility.PUBLIC, Reason.ANONYMOUS_OK
    )


async def test_anonymous_registry_oci_index_is_public(
    anonymous_registry: Registry, make_client: ClientFactory
) -> None:
    # Without the OCI types in Accept distribution answers 404 for an index: the
    # fixture really holds one, so this exercises the Accept list.
    status, headers, _ = anonymous_registry.http("HEAD", "/v2/team/oci/manifests/v1")
    assert status == 404
    status, headers, _ = anonymous_registry.http(
        "HEAD", "/v2/team/oci/manifests/v1", headers={"Accept": ALL_MANIFESTS}
    )
    assert (status, headers["content-type"]) == (200, "application/vnd.oci.image.index.v1+json")

    client = await make_client(insecure=[anonymous_registry.domain])
    result = await probe(client, anonymous_registry.image("team/oci"))
    assert result == ProbeResult(Visibility.PUBLIC, Reason.ANONYMOUS_OK)
    assert anonymous_registry.manifest_requests("team/oci", "v1")[-1].status == 200


async def test_pinned_by_digest(anonymous_registry: Registry, make_client: ClientFactory) -> None:
    pushed = anonymous_registry.push_index("team/pinned", "v1")
    client = await make_client(insecure=[anonymous_registry.domain])
    for digest in (pushed.digest, pushed.children[0]):
        image = f"{anonymous_registry.domain}/team/pinned@{digest}"
        assert (await probe(client, image)).visibility is Visibility.PUBLIC
        image = f"{anonymous_registry.domain}/team/pinned:v1@{digest}"
        assert (await probe(client, image)).visibility is Visibility.PUBLIC


async def test_anonymous_registry_missing_tag_is_not_found(
    anonymous_registry: Registry, make_client: ClientFactory
) -> None:
    client = await make_client(insecure=[anonymous_registry.domain])
    assert await probe(client, anonymous_registry.image("team/app", "nope")) == ProbeResult(
        Visibility.PRIVATE, Reason.NOT_FOUND
    )


async def test_htpasswd_registry_is_private(
    htpasswd_registry: Registry, make_client: ClientFactory
) -> None:
    client = await make_client(insecure=[htpasswd_registry.domain])
    for repository in ("team/secret", "team/does-not-exist"):
        assert await probe(client, htpasswd_registry.image(repository)) == ProbeResult(
            Visibility.PRIVATE, Reason.AUTH_REQUIRED
        ), repository


async def test_token_registry_public_and_private(
    token_registry: Registry, token_server: TokenServer, make_client: ClientFactory
) -> None:
    # The token server lives on the registry's own loopback address (another port):
    # listing the host covers both.
    client = await make_client(insecure=[token_registry.host])
    assert await probe(client, token_registry.image("public/app")) == ProbeResult(
        Visibility.PUBLIC, Reason.ANONYMOUS_OK
    )
    assert await probe(client, token_registry.image("private/app")) == ProbeResult(
        Visibility.PRIVATE, Reason.AUTH_REQUIRED
    )
    assert await probe(client, token_registry.image("public/missing")) == ProbeResult(
        Visibility.PRIVATE, Reason.NOT_FOUND
    )
    anonymous = [r for r in token_server.requests if not r.user]
    assert [r.scopes for r in anonymous[-3:]] == [
        ("repository:public/app:pull",),
        ("repository:private/app:pull",),
        ("repository:public/missing:pull",),
    ]
    assert all(r.service == "test-registry" for r in anonymous)
    # the retried HEAD carried the token: the registry saw 401 then 200
    statuses = [e.status for e in token_registry.manifest_requests("public/app", "v1")]
    assert statuses[-2:] == [401, 200]


async def test_token_is_cached_per_realm_service_and_scope(
    token_registry: Registry, token_server: TokenServer, make_client: ClientFactory
) -> None:
    client = await make_client(insecure=[token_registry.host])
    before = len(token_server.requests)
    for tag in ("v1", "v1", "other"):
        await probe(client, token_registry.image("public/app", tag))
    assert len(token_server.requests) - before == 1
    assert client.token_requests == 1
    await probe(client, token_registry.image("private/app"))
    assert client.token_requests == 2


async def test_token_refused_by_the_realm_is_private(
    registry_binary: str, tmp_path: Path, make_client: ClientFactory
) -> None:
    with TokenServer(tmp_path / "token", public=["public/*"], anonymous_denied_status=401) as ts:
        registry = Registry(
            tmp_path / "registry",
            auth="token",
            token_server=ts,
            host=ts.host,
            port=0,
            binary=registry_binary,
        )
        with registry:
            client = await make_client(insecure=[ts.host])
            assert await probe(client, registry.image("private/app")) == ProbeResult(
                Visibility.PRIVATE, Reason.AUTH_REQUIRED
            )
            assert [r.user for r in ts.requests] == [""]


async def test_tls_registry_with_trusted_ca_is_public(
    tls_registry: Registry, test_ca: TestCA, make_client: ClientFactory
) -> None:
    # loopback: reachable only with allowPrivateNetworks; HTTPS because not listed as insecure
    client = await make_client(allow_private=True, ssl_context=test_ca.client_context())
    assert await probe(client, tls_registry.image("team/app")) == ProbeResult(
        Visibility.PUBLIC, Reason.ANONYMOUS_OK
    )


async def test_tls_registry_with_untrusted_certificate_is_a_tls_error(
    tls_registry: Registry, make_client: ClientFactory
) -> None:
    client = await make_client(allow_private=True)  # system trust store only
    assert await probe(client, tls_registry.image("team/app")) == ProbeResult(
        Visibility.UNKNOWN, Reason.TLS_ERROR
    )


async def test_https_to_a_plain_http_registry_is_a_tls_error(
    anonymous_registry: Registry, make_client: ClientFactory
) -> None:
    client = await make_client(allow_private=True)  # allowed, but not listed: HTTPS
    url_port = anonymous_registry.port
    image = f"{anonymous_registry.host}:{url_port}/team/app:v1"
    assert await probe(client, image) == ProbeResult(Visibility.UNKNOWN, Reason.TLS_ERROR)


# --- single flight ------------------------------------------------------------------


async def test_fifty_concurrent_admissions_cause_one_manifest_request(
    htpasswd_registry: Registry, make_client: ClientFactory
) -> None:
    client = await make_client(insecure=[htpasswd_registry.domain])
    resolver = VisibilityResolver(VisibilitySettings(), client.probe, max_concurrent=8)
    repository = "team/brand-new"
    ref = parse(htpasswd_registry.image(repository))
    wanted = {(ref.domain, ref.path): ref}
    assert htpasswd_registry.manifest_requests(repository) == []
    try:
        results = await asyncio.gather(*(resolver.resolve_all(wanted, 5.0) for _ in range(50)))
    finally:
        await resolver.close()
    assert all(r == {(ref.domain, ref.path): Visibility.PRIVATE} for r in results)
    assert await wait_for_log(htpasswd_registry, repository) == 1
    assert (resolver.probes, resolver.joined) == (1, 49)


# --- address guard ------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_registry(
    registry_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """An anonymous registry on 127.0.0.1:PORT, as an attacker's image would name it."""
    with Registry(
        tmp_path_factory.mktemp("local"), host="127.0.0.1", port=0, binary=registry_binary
    ) as registry:
        registry.push_image("team/app", "v1")
        yield registry


async def wait_for_log_count(registry: Registry, count: int) -> int:
    for _ in range(100):
        if len(registry.requests()) >= count:
            break
        await asyncio.sleep(0.05)
    return len(registry.requests())


async def test_loopback_registry_is_not_probed_unless_allowed(
    local_registry: Registry, make_client: ClientFactory
) -> None:
    image = local_registry.image("team/app")
    assert image.startswith("127.0.0.1:")
    before = len(local_registry.requests())

    # by IP literal and by a name that resolves to loopback
    for name in (image, image.replace("127.0.0.1", "localhost")):
        client = await make_client()
        # the registry itself is internal: not probed, and left alone by the policy
        assert await probe(client, name) == ProbeResult(Visibility.INTERNAL, Reason.BLOCKED_ADDRESS)
    await asyncio.sleep(0.3)
    assert len(local_registry.requests()) == before, "the guard let a request through"

    # listed by the operator: allowed (over plain HTTP) even though it is loopback
    client = await make_client(insecure=[local_registry.domain])
    assert await probe(client, image) == ProbeResult(Visibility.PUBLIC, Reason.ANONYMOUS_OK)
    assert await wait_for_log_count(local_registry, before + 1) == before + 1


async def test_allow_private_networks_lets_a_loopback_tls_registry_through(
    tls_registry: Registry, test_ca: TestCA, make_client: ClientFactory
) -> None:
    blocked = await make_client(ssl_context=test_ca.client_context())
    assert await probe(blocked, tls_registry.image("team/app")) == ProbeResult(
        Visibility.INTERNAL, Reason.BLOCKED_ADDRESS
    )
    allowed = await make_client(allow_private=True, ssl_context=test_ca.client_context())
    assert (await probe(allowed, tls_registry.image("team/app"))).visibility is Visibility.PUBLIC


class ConnectionCounter:
    """A TCP listener that only counts the connections it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1") -> int:
        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accept, host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.mark.parametrize(
    ("realm", "reason"),
    [
        ("https://127.0.0.1:{port}/token", "blocked-address"),
        ("https://localhost:{port}/token", "blocked-address"),
        ("https://[::ffff:127.0.0.1]:{port}/token", "blocked-address"),
        ("http://127.0.0.1:{port}/token", "plain-http-refused"),
    ],
)
async def test_token_realm_on_a_blocked_address_is_refused(
    realm: str,
    reason: str,
    registry_binary: str,
    token_server: TokenServer,
    tmp_path: Path,
    make_client: ClientFactory,
) -> None:
    # A real token-auth registry whose challenge names a realm on loopback; the
    # registry itself is listed (allowed), the realm's host is not.
    counter = ConnectionCounter()
    port = await counter.start()
    try:
        with Registry(
            tmp_path / "registry",
            auth="token",
            token_server=token_server,
            token_realm=realm.format(port=port),
            binary=registry_binary,
        ) as registry:
            client = await make_client(insecure=[registry.domain])
            assert await probe(client, registry.image("public/app")) == ProbeResult(
                Visibility.UNKNOWN, Reason(reason)
            )
            status, headers, _ = registry.http(
                "HEAD", "/v2/public/app/manifests/v1", authenticate=False
            )
            assert status == 401 and realm.format(port=port) in headers["www-authenticate"]
    finally:
        await counter.stop()
    assert counter.connections == 0, "the realm was contacted"
