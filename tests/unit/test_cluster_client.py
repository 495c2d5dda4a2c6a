"""The Kubernetes API client: KUBECONFIG as it is when the client is built, and with
no cluster and no kubeconfig one plain reason, with no warning of the library's own."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from webhook import cluster


def _kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": server, "insecure-skip-tls-verify": True},
            }
        ],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))
    return path


async def test_kubeconfig_set_after_import_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kubernetes_asyncio is imported (and read KUBECONFIG) long before this point.
    from kubernetes_asyncio.config import kube_config

    assert str(tmp_path / "kubeconfig") != kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv(
        "KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", "https://10.9.8.7:6443"))
    )
    api = await cluster.api_client()
    try:
        assert api.configuration.host == "https://10.9.8.7:6443"
    finally:
        await api.close()


async def test_a_missing_kubeconfig_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(cluster.NoAPIError) as caught:
        await cluster.api_client()
    assert str(caught.value) == (
        f"no Kubernetes API: not in a cluster, and no kubeconfig "
        f"(KUBECONFIG={tmp_path / 'absent'}: no such file)"
    )
    assert caplog.records == []


async def test_no_cluster_and_no_kubeconfig_says_so_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The quick start on a laptop: no service account, KUBECONFIG unset, no ~/.kube."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(cluster.NoAPIError) as caught:
        await cluster.api_client()
    assert str(caught.value) == (
        "no Kubernetes API: not in a cluster, and no kubeconfig "
        "(KUBECONFIG unset, no ~/.kube/config)"
    )
    assert caplog.records == []  # kubernetes_asyncio's "Config not found" is not reached


async def test_an_unusable_kubeconfig_is_named_with_the_librarys_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kubeconfig"
    path.write_text("{}")
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(cluster.NoAPIError) as caught:
        await cluster.api_client()
    assert str(caught.value).startswith("no Kubernetes API configured (")
