"""The running service: wires settings to the servers and owns their lifecycle.

Start: the health port, the Kubernetes API client (when self-managed TLS or the pull
secrets need it), certificates (self-managed ones first fetched or made), the
pull-secret manager, the probe stack, then the webhook port. SIGTERM: report not
ready, drain the webhook port (see webhook/connections.py) within
``shutdownTimeoutSeconds``, then tear everything down in the reverse order of its
start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import ssl
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client

from webhook import cluster, pki, pullsecrets, selfcerts, tls
from webhook.admission import Admitter, SecretEnsurer
from webhook.config import WEBHOOK_NAMESPACE_ENV, ServerSettings, Settings
from webhook.connections import Listener
from webhook.egress import Egress
from webhook.metrics import Metrics
from webhook.server import Health, health_app, webhook_app
from webhook.visibility import probing

log = logging.getLogger(__name__)

# After the drain, admissions still running get this long to end once cancelled.
CUT_SECONDS = 0.5


class StartupError(Exception):
    """The service cannot start (a port in use, say); the message says why."""


def certificate(settings: Settings, stack: contextlib.AsyncExitStack) -> pki.CertPaths:
    """The configured pair, or a development one held until ``stack`` closes."""
    server = settings.server
    if server.cert_file:
        return pki.CertPaths(Path(server.cert_file), Path(server.key_file))
    paths = stack.enter_context(pki.DevelopmentCertificate()).paths
    log.warning(
        "no server.certFile configured: serving a self-signed development certificate "
        "for localhost; its CA is %s (curl --cacert %s https://localhost:%d/...)",
        paths.ca_file,
        paths.ca_file,
        server.port,
    )
    return paths


def raise_open_files_limit(server: ServerSettings) -> None:
    """Raise the soft descriptor limit to the hard one: every connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)
    # two listeners' connections, the probes' and the API client's, and some spare
    needed = 2 * server.max_connections + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-files limit (%d) is below what server.maxConnections (%d) may need "
            "(%d): lower it or raise the limit",
            soft,
            server.max_connections,
            needed,
        )


async def _listen(
    stack: contextlib.AsyncExitStack,
    app: web.Application,
    listener: Listener,
    host: str,
    port: int,
    ssl_context: Any = None,
    **runner_args: Any,
) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, **runner_args)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await listener.start(runner, host, port, ssl_context=ssl_context)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from None
    stack.push_async_callback(listener.stop_accepting)
    return runner


def _background(
    stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], name: str
) -> None:
    task = asyncio.create_task(work, name=name)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(cancel)


async def _kubernetes(
    stack: contextlib.AsyncExitStack, settings: Settings, manage_secrets: bool
) -> tuple[client.ApiClient | None, str]:
    """The one Kubernetes API client, when self-managed TLS or the pull secrets need it
    (closed after them), or None and why there is none."""
    if settings.self_managed_tls is None and not manage_secrets:
        return None, ""
    try:
        kube = await cluster.api_client()
    except cluster.NoAPIError as exc:
        return None, str(exc)
    stack.push_async_callback(kube.close)
    return kube, ""


async def _certificates(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    kube: client.ApiClient | None,
    namespace: str,
    health: Health,
    metrics: Metrics,
    reload_interval: float,
) -> ssl.SSLContext:
    """The serving context, reloaded in the background; self-managed certificates (in
    the webhook's ``namespace``) are fetched or made first, and renewed."""
    # selfManagedTLS: the certificate files are written from the Secret before they load.
    self_managed = await selfcerts.start(settings, namespace, kube)
    if self_managed is not None:
        stack.push_async_callback(self_managed.close)
    paths = certificate(settings, stack)
    context = tls.server_context(paths)
    reloader = tls.CertificateReloader(context, paths, reload_interval)
    health.checks["certificate"] = lambda: reloader.healthy
    metrics.track_certificate_expiry(lambda: reloader.not_after)
    if self_managed is not None:
        self_managed.follow(reloader.check)
    _background(stack, reloader.run(), "certificate-reload")
    return context


def _pull_secrets(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    kube: client.ApiClient | None,
    missing: str,
    metrics: Metrics,
    webhook_namespace: str,
) -> SecretEnsurer | None:
    """The pull-secret manager with its background loop, or None without an API server."""
    if kube is None:
        log.warning("%s: pull secrets are not managed", missing)
        return None
    manager = pullsecrets.PullSecrets(
        kube,
        settings,
        lambda: pullsecrets.read_credentials(settings),
        metrics=metrics,
        webhook_namespace=webhook_namespace,
    )
    stack.push_async_callback(manager.close)
    _background(stack, manager.run(), "pull-secrets")
    return manager


async def _webhook_port(
    stack: contextlib.AsyncExitStack,
    admitter: Admitter,
    context: ssl.SSLContext,
    metrics: Metrics,
    server: ServerSettings,
) -> None:
    """The webhook's TLS port, drained on exit within shutdownTimeoutSeconds."""
    hooks = Listener(server)
    metrics.open_connections.set_function(lambda: hooks.open_connections)
    await _listen(
        stack,
        webhook_app(admitter),
        hooks,
        server.host,
        server.port,
        context,
        shutdown_timeout=CUT_SECONDS,
        auto_decompress=False,
        # aiohttp's own keep-alive timer: a backstop the listener's timers beat
        keepalive_timeout=server.idle_timeout_seconds + server.header_timeout_seconds,
    )
    stack.push_async_callback(hooks.drain, server.shutdown_timeout_seconds)


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    health: Health | None = None,
    secrets: SecretEnsurer | None = None,
    reload_interval: float = tls.RELOAD_INTERVAL_SECONDS,
) -> AsyncIterator[tuple[Admitter, Health]]:
    """Everything of the service up and listening, torn down in reverse order on exit.

    ``secrets``: the pull-secret manager to use (closed on exit); None builds one
    from the environment. ``reload_interval``: seconds between checks of the
    certificate files. StartupError when a port cannot be bound.
    """
    metrics = metrics or Metrics()
    health = health or Health()
    server = settings.server
    webhook_namespace = os.environ.get(WEBHOOK_NAMESPACE_ENV, "")
    async with contextlib.AsyncExitStack() as stack:
        probes = Listener(server)
        await _listen(stack, health_app(health, metrics), probes, server.host, server.health_port)
        kube, missing = await _kubernetes(stack, settings, manage_secrets=secrets is None)
        context = await _certificates(
            stack, settings, kube, webhook_namespace, health, metrics, reload_interval
        )
        if secrets is None:
            secrets = _pull_secrets(stack, settings, kube, missing, metrics, webhook_namespace)
        else:
            stack.push_async_callback(secrets.close)
        resolver = await stack.enter_async_context(
            probing(settings, Egress.from_environ(), metrics=metrics)
        )
        admitter = Admitter(
            settings,
            resolver=resolver,
            secrets=secrets,
            metrics=metrics,
            webhook_namespace=webhook_namespace,
        )
        await _webhook_port(stack, admitter, context, metrics, server)
        stack.callback(setattr, health, "shutting_down", True)  # first on exit
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
    log.info("stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT."""
    raise_open_files_limit(settings.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings):
        # What start-up built lives as long as the process: out of the collector's
        # sight, a full collection (while a large review is decoded, say) is far cheaper.
        gc.freeze()
        await stop.wait()
        log.info("signal received: finishing in-flight requests, then stopping")
