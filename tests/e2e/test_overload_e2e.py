"""Overload as the API server meets it: a 503 with ``Retry-After`` is retried.

When ``server.maxAdmissionsInFlight`` admissions are in flight, the webhook refuses
the next one at once with HTTP 503 and ``Retry-After: 1`` rather than queueing it.
The contract that makes this the right answer is the API server's: its webhook
client (client-go) waits the ``Retry-After`` and sends the review again, within the
webhook's ``timeoutSeconds``. Checked here against a real kube-apiserver with
``failurePolicy: Fail``, so that a refusal the API server did not retry would fail
the Pod's creation.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s

from tests.e2e.admission_harness import (
    certificates,
    create_pod,
    mutating_webhook,
    namespaces,
    pod,
    read_pod,
    run_webhook,
    stored_view,
    wait_until_mutating,
)
from tests.e2e.kubeapi import KubeAPIServer
from webhook import pki

pytestmark = pytest.mark.e2e

LOCAL = "registry.local:5000"
REFUSED = "too many in flight"


@pytest.fixture
async def api(kube_apiserver: KubeAPIServer) -> AsyncIterator[k8s.ApiClient]:
    async with kube_apiserver.api_client() as client:
        yield client


async def test_a_refusal_for_overload_is_retried_by_the_api_server(
    kube_apiserver: KubeAPIServer,
    api: k8s.ApiClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tag = uuid.uuid4().hex[:8]
    app = f"app-{tag}"
    await namespaces(kube_apiserver, tag, app)
    certs: pki.CertPaths = certificates(tmp_path / "tls")
    settings = {
        "mode": "airgap",
        "namespaces": [app],
        "airgap": {"registry": LOCAL},
        "server": {"maxAdmissionsInFlight": 1},
    }
    caplog.set_level(logging.WARNING, logger="webhook.server")
    async with (
        run_webhook(settings, certs, secrets=None) as hook,
        mutating_webhook(api, url=hook.url, ca_bundle=hook.ca_bundle, selector=tag),
    ):
        await wait_until_mutating(api, app)
        # Take the only place: an admission whose body is still arriving.
        assert certs.ca_file is not None
        context = ssl.create_default_context(cafile=str(certs.ca_file))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", hook.settings.server.port, ssl=context, server_hostname="127.0.0.1"
        )
        writer.write(
            b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        creation = asyncio.create_task(create_pod(api, app, pod("p", {"app": "nginx:1.25"})))
        for _ in range(100):  # until the API server's call was refused
            if REFUSED in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert REFUSED in caplog.text
        assert not creation.done()
        # The place frees (that admission is answered: its body is no review).
        writer.write(b"}" + b" " * 98)
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 400")
        writer.close()
        answer = await creation
        assert answer.status == 201, answer.body
        assert stored_view(await read_pod(api, app, "p"))["images"] == {
            "app": f"{LOCAL}/nginx:1.25"
        }
