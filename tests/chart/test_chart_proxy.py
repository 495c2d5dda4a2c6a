"""The chart's egress proxy values: the environment the webhook container gets.

The rendered NO_PROXY is read by both of its readers: the webhook's probe
(webhook/egress.py) and the Kubernetes API client, whose aiohttp session uses
Python's ``urllib`` rules (exact host or domain suffix, no networks).
"""

from __future__ import annotations

import urllib.request
from types import ModuleType
from typing import Any

import pytest
from yarl import URL

from tests.chart.chartlib import BASE, CAPABLE, Rendered, RenderFn, container, merged
from webhook.egress import Egress

API_SERVER = "10.96.0.1"  # what the kubelet puts in KUBERNETES_SERVICE_HOST


def proxy_env(rendered: Rendered) -> dict[str, str]:
    env = container(rendered)["env"]
    return {e["name"]: e["value"] for e in env if e["name"].upper().endswith("_PROXY")}


def kubelet_expanded(env: dict[str, str]) -> dict[str, str]:
    """The environment after the kubelet fills in $(KUBERNETES_SERVICE_HOST)."""
    return {k: v.replace("$(KUBERNETES_SERVICE_HOST)", API_SERVER) for k, v in env.items()}


def test_no_proxy_values_no_proxy_variables(render: RenderFn) -> None:
    assert proxy_env(render(BASE, **CAPABLE)) == {}
    # noProxy alone changes nothing: without a proxy every host is direct anyway
    assert proxy_env(render(merged(BASE, {"proxy": {"noProxy": ["corp"]}}), **CAPABLE)) == {}


def test_proxy_values_set_the_variables(render: RenderFn, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "proxy": {
            "httpsProxy": "http://proxy.corp.example:3128",
            "httpProxy": "proxy.corp.example:3129",
            "noProxy": ["registry.corp:5000", "10.0.0.0/8"],
        },
        "clusterDomain": "k8s.example.internal",
    }
    env = proxy_env(render(merged(BASE, values), **CAPABLE))
    assert env == {
        "HTTPS_PROXY": "http://proxy.corp.example:3128",
        "HTTP_PROXY": "proxy.corp.example:3129",
        "NO_PROXY": ".svc,.k8s.example.internal,$(KUBERNETES_SERVICE_HOST),"
        "registry.corp:5000,10.0.0.0/8",
    }

    egress = Egress.from_environ(kubelet_expanded(env))
    direct = [
        f"https://{API_SERVER}/api",
        "https://kubernetes.default.svc/api",
        "https://registry.team.svc.k8s.example.internal/v2/",
        "https://registry.corp:5000/v2/",
        "https://10.20.30.40:5000/v2/",
    ]
    assert [egress.proxy_for(URL(url)) for url in direct] == [None] * len(direct)
    assert egress.proxy_for(URL("https://quay.io/v2/")) == egress.https_proxy
    assert egress.proxy_for(URL("http://plain.example.org/v2/")) == egress.http_proxy

    # the Kubernetes API client reaches the API server directly, by its own rules:
    # aiohttp's trust_env asks urllib's proxy_bypass, which reads the environment
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("no_proxy", kubelet_expanded(env)["NO_PROXY"])
    assert urllib.request.proxy_bypass(API_SERVER)
    assert urllib.request.proxy_bypass("kubernetes.default.svc")
    assert not urllib.request.proxy_bypass("quay.io")


def test_only_the_proxy_that_is_set_is_rendered(render: RenderFn) -> None:
    env = proxy_env(render(merged(BASE, {"proxy": {"httpsProxy": "https://p.example"}})))
    assert set(env) == {"HTTPS_PROXY", "NO_PROXY"}
    assert env["NO_PROXY"] == ".svc,.cluster.local,$(KUBERNETES_SERVICE_HOST)"


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"proxy": {"httpsProxy": "socks5://proxy.corp:1080"}}, "/proxy/httpsProxy"),
        ({"proxy": {"httpProxy": "http://proxy.corp:3128,http://other"}}, "/proxy/httpProxy"),
        ({"proxy": {"noProxy": ["a.corp,b.corp"]}}, "/proxy/noProxy/0"),
        ({"proxy": {"noProxy": ".corp"}}, "/proxy/noProxy"),
        ({"proxy": {"allProxy": "http://p:3128"}}, "allProxy"),
    ],
)
def test_schema_rejects_bad_proxy_values(
    render: RenderFn, helm: ModuleType, patch: dict[str, Any], where: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as error:
        render(merged(BASE, patch))
    assert where in str(error.value)
