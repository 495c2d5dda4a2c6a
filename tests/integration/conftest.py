"""Thin pytest fixtures over tests/integration/registries.py (real registries on loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.registries import Registry, TestCA, TokenServer, require_registry_binary
from tests.support import can_bind_low_ports, free_loopback_address
from webhook.config import ProbeSettings
from webhook.egress import Egress
from webhook.registry import RegistryClient

PUSH_USERS = {"pusher": "push-secret"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def registry_binary() -> str:
    return require_registry_binary()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def anonymous_registry(
    registry_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """Anonymous pull and push; holds team/app:v1 (Docker v2) and team/oci:v1 (OCI index)."""
    with Registry(tmp_path_factory.mktemp("anonymous"), binary=registry_binary) as registry:
        registry.push_image("team/app", "v1")
        registry.push_index("team/oci", "v1")
        yield registry


@pytest.fixture(scope="session")
def htpasswd_registry(
    registry_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """Basic auth for everything; holds team/secret:v1."""
    with Registry(
        tmp_path_factory.mktemp("htpasswd"),
        auth="htpasswd",
        users=PUSH_USERS,
        binary=registry_binary,
    ) as registry:
        registry.push_image("team/secret", "v1")
        yield registry


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    """Grants anonymous pull on public/* only; on the token registry's own address."""
    host = free_loopback_address(80) if can_bind_low_ports() else "127.0.0.1"
    with TokenServer(
        tmp_path_factory.mktemp("token"), host=host, public=["public/*"], users=PUSH_USERS
    ) as server:
        yield server


@pytest.fixture(scope="session")
def token_registry(
    registry_binary: str, token_server: TokenServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """Docker-Hub-like bearer flow; holds public/app:v1 and private/app:v1."""
    with Registry(
        tmp_path_factory.mktemp("token-registry"),
        auth="token",
        token_server=token_server,
        users=PUSH_USERS,
        host=token_server.host,
        port=80 if can_bind_low_ports() else 0,
        binary=registry_binary,
    ) as registry:
        registry.push_image("public/app", "v1")
        registry.push_image("private/app", "v1")
        yield registry


@pytest.fixture(scope="session")
def tls_registry(
    registry_binary: str, test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """Anonymous over HTTPS with a certificate from test_ca; holds team/app:v1."""
    with Registry(tmp_path_factory.mktemp("tls"), tls=test_ca, binary=registry_binary) as registry:
        registry.push_image("team/app", "v1")
        yield registry


ClientFactory = Callable[..., Awaitable[RegistryClient]]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """``await make_client(insecure=[...], allow_private=..., timeout=..., ssl_context=...,
    egress=...)``.

    Each client has its own session (closed at teardown), like the one per process
    the webhook runs.
    """
    clients: list[RegistryClient] = []

    async def factory(
        *,
        insecure: list[str] | tuple[str, ...] = (),
        allow_private: bool = False,
        timeout: float = 3.0,
        ssl_context: Any = None,
        max_concurrent: int = 8,
        egress: Egress | None = None,
        **client_options: Any,
    ) -> RegistryClient:
        settings = ProbeSettings(
            timeout_seconds=timeout,
            insecure_registries=frozenset(insecure),
            allow_private_networks=allow_private,
            max_concurrent=max_concurrent,
        )
        egress = egress or Egress()  # no proxy unless a test names one, whatever the env says
        client = RegistryClient.open(settings, egress, ssl_context=ssl_context, **client_options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()
