"""The running service: wires settings to the servers and owns their lifecycle.

Start: certificates, the registry session, the visibility cache, the pull-secret
manager, then the two listeners. SIGTERM: report not ready, stop accepting, let
in-flight admissions finish within ``shutdownTimeoutSeconds``, then clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from webhook import pullsecrets, registry, selfcerts, tls
from webhook.admission import Admitter, SecretEnsurer
from webhook.config import WEBHOOK_NAMESPACE_ENV, Settings
from webhook.metrics import Metrics
from webhook.server import Health, health_app, webhook_app
from webhook.visibility import VisibilityResolver

log = logging.getLogger(__name__)


def certificate(settings: Settings) -> tls.CertPaths:
    server = settings.server
    if server.cert_file:
        return tls.CertPaths(Path(server.cert_file), Path(server.key_file))
    paths = tls.self_signed()
    log.warning(
        "no server.certFile configured: serving a self-signed development certificate "
        "for localhost; its CA is %s (curl --cacert %s https://localhost:%d/...)",
        paths.ca_file,
        paths.ca_file,
        server.port,
    )
    return paths


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    health: Health | None = None,
    secrets: SecretEnsurer | None = None,
    reload_interval: float = tls.RELOAD_INTERVAL_SECONDS,
) -> AsyncIterator[tuple[Admitter, Health]]:
    """Everything of the service up and listening, torn down in order on exit.

    ``reload_interval``: seconds between checks of the certificate files.
    """
    metrics = metrics or Metrics()
    health = health or Health()
    webhook_namespace = os.environ.get(WEBHOOK_NAMESPACE_ENV, "")
    # selfManagedTLS: the certificate files are written from the Secret before they load.
    self_managed = await selfcerts.start(settings, webhook_namespace)
    paths = certificate(settings)
    context = tls.server_context(paths)
    reloader = tls.CertificateReloader(context, paths, reload_interval)
    health.checks["certificate"] = lambda: reloader.healthy
    metrics.track_certificate_expiry(lambda: reloader.not_after)
    if self_managed is not None:
        self_managed.follow(reloader.check)

    kube = None
    secrets_task = None
    if secrets is None:
        kube = await pullsecrets.api_client()
        if kube is not None:
            manager = pullsecrets.PullSecrets(
                kube,
                settings,
                lambda: pullsecrets.read_credentials(settings),
                metrics=metrics,
                webhook_namespace=webhook_namespace,
            )
            secrets = manager
            secrets_task = asyncio.create_task(manager.run(), name="pull-secrets")

    session = registry.make_session(settings.probe)
    client = registry.RegistryClient(session, settings.probe)
    resolver = VisibilityResolver(
        settings.visibility, client.probe, settings.probe.max_concurrent, metrics=metrics
    )
    admitter = Admitter(
        settings,
        resolver=resolver,
        secrets=secrets,
        metrics=metrics,
        webhook_namespace=webhook_namespace,
    )
    server = settings.server
    hooks = web.AppRunner(
        webhook_app(admitter),
        shutdown_timeout=server.shutdown_timeout_seconds,
        access_log=None,
    )
    probes = web.AppRunner(health_app(health, metrics), access_log=None)
    reload_task = asyncio.create_task(reloader.run(), name="certificate-reload")
    try:
        await hooks.setup()
        await probes.setup()
        await web.TCPSite(hooks, server.host, server.port, ssl_context=context).start()
        await web.TCPSite(probes, server.host, server.health_port).start()
        health.serving = True
        log.info(
            "serving the webhook on https://%s:%d (/mutate, /validate), health and metrics "
            "on http://%s:%d",
            server.host,
            server.port,
            server.host,
            server.health_port,
        )
        yield admitter, health
    finally:
        health.shutting_down = True
        # Closes the listener, then waits for in-flight admissions up to the timeout.
        await hooks.cleanup()
        reload_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reload_task
        await resolver.close()
        await session.close()
        if secrets_task is not None:
            secrets_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await secrets_task
        if isinstance(secrets, pullsecrets.PullSecrets):
            await secrets.close()
        if kube is not None:
            await kube.close()
        await probes.cleanup()
        if self_managed is not None:
            await self_managed.close()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings):
        await stop.wait()
        log.info("signal received: finishing in-flight requests, then stopping")
