"""Fixtures for the end-to-end tests against a real kube-apiserver + etcd."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.kubeapi import KubeAPIServer, find_binaries


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeAPIServer]:
    """One kube-apiserver v1.20.2 (with etcd) on 127.0.0.1 for the whole session.

    Missing binaries skip the tests locally; under CI (``CI=true``) they fail,
    because CI must build the API server first (``.ci/build-kube-apiserver``).
    """
    found = find_binaries()
    if isinstance(found, str):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"e2e: {found}", pytrace=False)
        pytest.skip(f"e2e: {found}")
    apiserver, etcd = found
    server = KubeAPIServer(binary=apiserver, etcd_binary=etcd)
    server.start()
    try:
        yield server
    finally:
        server.stop()
