"""/metrics after a few admissions through the real servers: every series exists and moved.

The webhook app over verified TLS and the health app over plain HTTP, as the
service runs them, sharing one Metrics. Visibility comes from a real
VisibilityResolver over a scripted probe (no registry), pull secrets from a real
PullSecrets whose Kubernetes API is a fake, so the figures below are what the
production code records, not what a test double claims. Not timed.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from tests.reviews import pod, review
from webhook import config, pki, tls
from webhook.admission import Admitter
from webhook.metrics import CONTENT_TYPE, Metrics
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.pullsecrets import Credentials, PullSecrets
from webhook.server import Health, health_app, webhook_app
from webhook.visibility import VisibilityResolver

PREFIX = "image_proxy_webhook_"
SETTINGS = config.parse(
    {"appSlug": "my-app", "licenseID": "lic", "namespaces": ["my-app", "team-b"]}
)
PRIVATE = "quay.io/acme/private:1"  # answers 401: private / auth-required
PUBLIC = "quay.io/acme/public:1"  # answers 200: public / anonymous-ok
FLAKY = "quay.io/acme/flaky:1"  # times out: unknown / timeout (proxied by default)


ANSWERS = {
    "acme/private": ProbeResult(Visibility.PRIVATE, Reason.AUTH_REQUIRED),
    "acme/public": ProbeResult(Visibility.PUBLIC, Reason.ANONYMOUS_OK),
    "acme/flaky": ProbeResult(Visibility.UNKNOWN, Reason.TIMEOUT),
}


class ScriptedProbe:
    """What a registry would answer, by repository path; counts the probes."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, domain: str, path: str, reference: str) -> ProbeResult:
        self.calls += 1
        return ANSWERS[path]


class FakeCoreV1:
    """The one Kubernetes call a first admission in a namespace makes: create the secret."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.refused = {"team-b"}

    async def create_namespaced_secret(self, namespace: str, body: Any, **_: Any) -> None:
        if namespace in self.refused:
            raise ApiException(status=403, reason="Forbidden")
        self.created.append(namespace)


class Servers:
    def __init__(self, webhook: str, health: str, context: ssl.SSLContext) -> None:
        self.webhook = webhook
        self.health = health
        self.context = context

    async def admit(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.webhook}/{endpoint}", data=json.dumps(body).encode(), ssl=self.context
            ) as response,
        ):
            assert response.status == 200
            answer: dict[str, Any] = json.loads(await response.text())
            return answer

    async def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample on /metrics by (name, labels); families seen under their names."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.health}/metrics") as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"] == CONTENT_TYPE
            text = await response.text()
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            samples[(f"family:{family.name}", frozenset())] = 0.0
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples


@pytest.fixture
async def setup(
    certs: pki.CertPaths,
) -> AsyncIterator[tuple[Servers, Metrics, ScriptedProbe, FakeCoreV1]]:
    metrics = Metrics()
    probe = ScriptedProbe()
    resolver = VisibilityResolver(SETTINGS.visibility, probe, 4, metrics=metrics)
    secrets = PullSecrets(
        cast(ApiClient, object()),  # an ApiClient is only handed to CoreV1Api, replaced below
        SETTINGS,
        lambda: Credentials(((SETTINGS.proxy_domain, "lic", "lic"),)),
        metrics=metrics,
    )
    core = FakeCoreV1()
    secrets.core = core  # type: ignore[assignment]
    admitter = Admitter(SETTINGS, resolver=resolver, secrets=secrets, metrics=metrics)
    webhook = TestServer(webhook_app(admitter), host="localhost")
    await webhook.start_server(ssl=tls.server_context(certs))
    health = TestServer(health_app(Health(serving=True), metrics), host="127.0.0.1")
    await health.start_server()
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    try:
        yield (
            Servers(
                f"https://localhost:{webhook.port}", f"http://127.0.0.1:{health.port}", context
            ),
            metrics,
            probe,
            core,
        )
    finally:
        await webhook.close()
        await health.close()
        await resolver.close()
        await secrets.close()


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """One sample's value; a missing series fails the test with what is there."""
    key = (PREFIX + name, frozenset(labels.items()))
    if key not in samples:
        present = sorted(str(k) for k in samples if k[0].startswith(PREFIX + name))
        raise AssertionError(f"no sample {name}{labels}; present: {present}")
    return samples[key]


async def test_metrics_move_with_admissions(
    setup: tuple[Servers, Metrics, ScriptedProbe, FakeCoreV1],
) -> None:
    servers, _, probe, core = setup
    before = await servers.scrape()
    # every family is exported before anything happened, the pull-secret one included
    for family in (
        "admission_requests",
        "admission_duration_seconds",
        "images_rewritten",
        "registry_probes",
        "registry_probe_duration_seconds",
        "visibility_cache_lookups",
        "visibility_cache_entries",
        "pull_secret_operations",
    ):
        assert (f"family:{PREFIX}{family}", frozenset()) in before, family
    assert value(before, "visibility_cache_entries") == 0

    three = pod(PRIVATE, PUBLIC, FLAKY)
    # 1: cold: three probes, two images rewritten (private; unknown is proxied by default),
    #    the secret created in my-app
    first = await servers.admit("mutate", review(three))
    assert "patch" in first["response"]
    # 2: warm: three cache hits, no probe, the secret known to be current
    await servers.admit("mutate", review(three))
    # 3: the validating endpoint refuses what the mutation would change
    denied = await servers.admit("validate", review(three))
    assert denied["response"]["allowed"] is False
    # 4: a namespace the webhook does not cover: allowed, nothing looked up
    await servers.admit("mutate", review(pod(PRIVATE, namespace="elsewhere")))
    # 5: a covered namespace where the API server refuses the secret: admitted, with a warning
    refused = await servers.admit("mutate", review(pod(PRIVATE, namespace="team-b")))
    assert any("403" in w for w in refused["response"]["warnings"])

    after = await servers.scrape()
    pod_create = {"operation": "CREATE", "kind": "Pod"}
    assert (
        value(after, "admission_requests_total", endpoint="mutate", outcome="mutated", **pod_create)
        == 3
    )
    assert (
        value(after, "admission_requests_total", endpoint="mutate", outcome="allowed", **pod_create)
        == 1
    )
    assert (
        value(
            after, "admission_requests_total", endpoint="validate", outcome="denied", **pod_create
        )
        == 1
    )
    assert value(after, "admission_duration_seconds_count", endpoint="mutate") == 4
    assert value(after, "admission_duration_seconds_count", endpoint="validate") == 1
    assert value(after, "admission_duration_seconds_sum", endpoint="mutate") > 0
    assert value(after, "admission_duration_seconds_bucket", endpoint="mutate", le="+Inf") == 4
    assert value(after, "images_rewritten_total") == 2 + 2 + 1

    assert probe.calls == 3
    assert value(after, "registry_probes_total", visibility="private", reason="auth-required") == 1
    assert value(after, "registry_probes_total", visibility="public", reason="anonymous-ok") == 1
    assert value(after, "registry_probes_total", visibility="unknown", reason="timeout") == 1
    assert value(after, "registry_probe_duration_seconds_count") == 3
    assert value(after, "registry_probe_duration_seconds_sum") >= 0

    # admissions 2 and 3 find all three repositories cached, 5 finds the private one
    assert value(after, "visibility_cache_lookups_total", result="miss") == 3
    assert value(after, "visibility_cache_lookups_total", result="hit") == 3 + 3 + 1
    assert value(after, "visibility_cache_entries") == 3

    assert core.created == ["my-app"]
    assert value(after, "pull_secret_operations_total", action="create", result="ok") == 1
    assert value(after, "pull_secret_operations_total", action="create", result="403") == 1


async def test_metrics_are_on_the_health_port_only(
    setup: tuple[Servers, Metrics, ScriptedProbe, FakeCoreV1],
) -> None:
    servers = setup[0]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{servers.webhook}/metrics", ssl=servers.context) as response,
    ):
        assert response.status in (404, 405)


async def test_pull_secret_health_is_a_gauge() -> None:
    """1 while every covered namespace's secret can be written; 0 while one fails (here
    the API server refuses team-b), 1 again once it is written."""
    metrics = Metrics()
    secrets = PullSecrets(
        cast(ApiClient, object()),
        SETTINGS,
        lambda: Credentials(((SETTINGS.proxy_domain, "lic", "lic"),)),
        metrics=metrics,
    )
    core = FakeCoreV1()
    secrets.core = core  # type: ignore[assignment]
    gauge = "image_proxy_webhook_pull_secrets_healthy"
    assert metrics.registry.get_sample_value(gauge) == 1.0
    assert await secrets.ensure("my-app", 1.0) is None
    assert await secrets.ensure("team-b", 1.0) == (
        f"pull secret {SETTINGS.secret_name!r} could not be written in team-b: "
        "the API server answered 403 Forbidden"
    )
    assert metrics.registry.get_sample_value(gauge) == 0.0
    core.refused.clear()
    assert await secrets.ensure("team-b", 1.0) is None
    assert metrics.registry.get_sample_value(gauge) == 1.0
    assert core.created == ["my-app", "team-b"]
