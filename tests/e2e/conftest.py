"""Fixtures for the end-to-end tests against a real kube-apiserver + etcd."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.kubeapi import KubeAPIServer, require_binaries


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeAPIServer]:
    """One kube-apiserver v1.20.2 (with etcd) on 127.0.0.1 for the whole session.

    Missing binaries skip the tests locally; under CI (``CI=true``) they fail,
    because CI must build the API server first (``.ci/build-kubernetes``).
    """
    apiserver, etcd = require_binaries()
    with KubeAPIServer(binary=apiserver, etcd_binary=etcd) as server:
        yield server
