"""Fixtures for the tests on a real one-node cluster (tests/cluster/node.py).

The cluster is package-scoped: it comes up once for the tests of this directory
(about 15 s to Node Ready) and is torn down after the last of them, not at the end
of the whole suite (its 650 MiB and kubelet's CPU stay out of the other suites'
measurements). Its teardown also checks that the host is as it was (sysctls,
processes, mounts, cgroups); a difference is an error of the last test.
Missing binaries or tools skip the tests locally and fail them under ``CI=true``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster.helm import helm_binary, helm_missing
from tests.cluster.images import pause_image
from tests.cluster.node import Cluster, Timings, kube_binary, missing_piece, running_cluster
from tests.cluster.node_registries import (
    license_checking_registry,
    push_archive,
    start_registry,
)
from tests.image.build import build_webhook_image
from tests.integration.registries import Registry
from tests.support import unavailable

HERE = Path(__file__).resolve().parent
TIMINGS = pytest.StashKey[Timings]()
VENDOR_USERS = {"vendor-pull": "vendor-secret"}
LICENSE_ID = "4f3c2a1b-cluster-test-license"
# The chart's default proxyDomain: the stand-in answers to it inside the node.
PROXY_DOMAIN = "proxy.replicated.com"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.cluster)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    timings = config.stash.get(TIMINGS, None)
    if timings is not None:
        terminalreporter.write_line(
            f"cluster: Node Ready {timings.bring_up:.1f} s after start, "
            f"teardown {timings.teardown:.1f} s; RSS of all its processes "
            f"{timings.rss_ready_mib:.0f} MiB at Ready, {timings.rss_end_mib:.0f} MiB at the end"
        )
        steps = ", ".join(
            f"{what} {seconds:.1f} s" for what, seconds in timings.teardown_steps.items()
        )
        terminalreporter.write_line(f"cluster teardown: {steps}")


def require(reason: str | None) -> None:
    """A missing piece skips locally, fails under CI=true."""
    if reason is not None:
        unavailable(f"cluster: {reason}")


@pytest.fixture(scope="package")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Cluster]:
    """A one-node cluster in a network namespace of its own, for this directory's tests."""
    require(missing_piece())
    with running_cluster(tmp_path_factory.mktemp("cluster")) as node:
        pytestconfig.stash[TIMINGS] = node.timings
        yield node


@dataclass
class NodeRegistries:
    """Registries inside the node: a vendor's private one, a public one, the proxy stand-in."""

    vendor: Registry
    public: Registry
    proxy: Registry
    license_id: str


@pytest.fixture(scope="package")
def node_registries(cluster: Cluster) -> Iterator[NodeRegistries]:
    registries = NodeRegistries(
        vendor=start_registry(cluster, "vendor", users=VENDOR_USERS),
        public=start_registry(cluster, "public"),
        proxy=license_checking_registry(cluster, LICENSE_ID, domain=PROXY_DOMAIN),
        license_id=LICENSE_ID,
    )
    try:
        yield registries
    finally:
        for registry in (registries.vendor, registries.public, registries.proxy):
            registry.stop()


@dataclass(frozen=True)
class TinyImages:
    """Tiny runnable images already pushed (each a distinct digest)."""

    private: str  # in the vendor registry (htpasswd)
    public: str  # in the public registry (anonymous)


@pytest.fixture(scope="package")
def tiny_images(
    cluster: Cluster, node_registries: NodeRegistries, tmp_path_factory: pytest.TempPathFactory
) -> TinyImages:
    directory = tmp_path_factory.mktemp("tiny-images")
    pushed = {}
    for kind, registry, repository in (
        ("private", node_registries.vendor, "vendor/app"),
        ("public", node_registries.public, "library/tool"),
    ):
        name = f"{registry.domain}/{repository}:v1"
        archive = directory / f"{kind}.tar"
        pause_image(archive, name=name, pause_binary=kube_binary("pause"))
        pushed[kind] = push_archive(cluster, registry, archive, repository, "v1")
    return TinyImages(private=pushed["private"], public=pushed["public"])


@pytest.fixture(scope="package")
def helm() -> Path:
    """The real Helm v4 CLI (.ci/install-helm)."""
    require(helm_missing())
    return helm_binary()


@dataclass(frozen=True)
class PushedImage:
    repository: str  # registry/path, as the chart's image.repository
    tag: str

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


@pytest.fixture(scope="package")
def webhook_image(
    cluster: Cluster, node_registries: NodeRegistries, tmp_path_factory: pytest.TempPathFactory
) -> PushedImage:
    """The webhook's image built from the working tree (.ci/build-image), in the public
    registry of the node."""
    built = build_webhook_image(tmp_path_factory.mktemp("webhook-image"))
    repository, tag = "my-app/image-proxy-webhook", "test"
    push_archive(cluster, node_registries.public, built.archive, repository, tag)
    return PushedImage(f"{node_registries.public.domain}/{repository}", tag)
