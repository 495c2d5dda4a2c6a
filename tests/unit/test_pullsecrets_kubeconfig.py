"""pullsecrets.api_client honours KUBECONFIG as it is when the client is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from webhook import pullsecrets


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
    api = await pullsecrets.api_client()
    assert api is not None
    try:
        assert api.configuration.host == "https://10.9.8.7:6443"
    finally:
        await api.close()


async def test_missing_kubeconfig_means_no_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert await pullsecrets.api_client() is None
