"""The series the chart's alerts read move when their event happens.

- the serving certificate's expiry follows the certificate loaded by the reloader;
- requests answered with an error (HTTP 400/413, the internal-error fallback) are
  counted by endpoint and reason;
- a pull secret write that never reaches the API server is counted, not only the
  error statuses the API server answers with.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from kubernetes_asyncio import client

from tests.reviews import pod, review
from tests.support import free_port
from webhook import config, pki, tls
from webhook.admission import Admitter
from webhook.images import ImageRef
from webhook.metrics import Metrics
from webhook.policy import Repository
from webhook.probes import Visibility
from webhook.pullsecrets import PullSecrets, read_credentials
from webhook.server import MAX_BODY_BYTES, webhook_app

SETTINGS = config.parse({"appSlug": "my-app", "licenseID": "lic"})
EXPIRY = "image_proxy_webhook_serving_certificate_expiry_timestamp_seconds"
ERRORS = "image_proxy_webhook_admission_errors_total"
SECRET_OPERATIONS = "image_proxy_webhook_pull_secret_operations_total"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def write_pair(directory: Path, ca: pki.CertificateAuthority, days: int) -> pki.CertPaths:
    cert, key = ca.issue(pki.DEV_NAMES, days=days)
    paths = pki.CertPaths(directory / "tls.crt", directory / "tls.key")
    paths.key_file.write_bytes(key)
    paths.cert_file.write_bytes(cert)
    return paths


def expiry_of(paths: pki.CertPaths) -> float:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(paths.cert_file.read_bytes())
    return cert.not_valid_after_utc.timestamp()


def served(paths: pki.CertPaths) -> tuple[tls.CertificateReloader, Metrics]:
    """The reloader serving ``paths`` and the metrics tracking it, as the service wires them."""
    reloader = tls.CertificateReloader(tls.server_context(paths), paths)
    metrics = Metrics()
    metrics.track_certificate_expiry(lambda: reloader.not_after)
    return reloader, metrics


def test_certificate_expiry_follows_the_loaded_certificate(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority()
    paths = write_pair(tmp_path, ca, days=5)
    reloader, metrics = served(paths)
    first = sample(metrics, EXPIRY)
    assert first == expiry_of(paths)
    now = datetime.datetime.now(datetime.UTC).timestamp()
    assert 4 * 86400 < (first or 0) - now <= 5 * 86400

    renewed = write_pair(tmp_path, ca, days=365)
    assert reloader.check() is True
    second = sample(metrics, EXPIRY)
    assert second == expiry_of(renewed)
    assert (second or 0) - (first or 0) > 359 * 86400


def test_a_certificate_that_cannot_be_loaded_keeps_the_served_expiry(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority()
    reloader, metrics = served(write_pair(tmp_path, ca, days=30))
    before = sample(metrics, EXPIRY)
    # a new certificate whose key has not been written yet: not served, not reported
    cert, _ = ca.issue(pki.DEV_NAMES, days=365)
    reloader.paths.cert_file.write_bytes(cert)
    assert reloader.check() is False
    assert sample(metrics, EXPIRY) == before


class BrokenResolver:
    """Stands in for a bug: resolving visibility raises, which no registry can cause."""

    async def resolve_all(
        self, wanted: Mapping[Repository, ImageRef], timeout: float
    ) -> dict[Repository, Visibility]:
        raise RuntimeError("bug")


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, Metrics]]:
    metrics = Metrics()
    admitter = Admitter(SETTINGS, resolver=BrokenResolver(), metrics=metrics)
    server = TestServer(webhook_app(admitter), host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}", metrics
    finally:
        await server.close()


async def test_error_answers_are_counted_by_reason(webhook: tuple[str, Metrics]) -> None:
    url, metrics = webhook
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/mutate", data=b"{not json") as response:
            assert response.status == 400
        async with session.post(f"{url}/validate", data=b"x" * (MAX_BODY_BYTES + 1)) as response:
            assert response.status == 413
        # a private image needs the resolver, which fails: the fallback answers
        body = json.dumps(review(pod("quay.io/acme/private:1"))).encode()
        async with session.post(f"{url}/mutate", data=body) as response:
            assert response.status == 200
            answer = await response.json()
    assert answer["response"]["allowed"] is True
    assert "internal error" in answer["response"]["warnings"][0]
    assert sample(metrics, ERRORS, endpoint="mutate", reason="bad-request") == 1
    assert sample(metrics, ERRORS, endpoint="validate", reason="too-large") == 1
    assert sample(metrics, ERRORS, endpoint="mutate", reason="internal-error") == 1
    # a good answer is not an error
    assert sample(metrics, ERRORS, endpoint="validate", reason="bad-request") is None


async def test_an_unreachable_api_server_is_a_counted_write_failure() -> None:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    metrics = Metrics()
    async with client.ApiClient(configuration) as api:
        secrets = PullSecrets(api, SETTINGS, lambda: read_credentials(SETTINGS), metrics=metrics)
        warning = await secrets.ensure("my-app", timeout=10)
        await asyncio.sleep(0)  # the write task's done callback runs next
        await secrets.close()
    assert warning is not None and "could not be reached" in warning
    assert sample(metrics, SECRET_OPERATIONS, action="ensure", result="unreachable") == 1
