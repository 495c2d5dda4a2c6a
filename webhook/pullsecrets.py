"""The pull secret in the cluster (docs/design.md §3), through kubernetes-asyncio.

Before a Pod that needs the secret is admitted, ``ensure`` makes sure the secret
exists and is current in its namespace. Namespaces already ensured for the current
content are remembered for a while, so the API server is not asked on every Pod.
A background loop keeps the secret current in every covered namespace, watches for
new namespaces when ``namespaces`` is ``["*"]``, and re-applies everywhere when the
license changes. The license ID is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import TTLCache
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from webhook.config import Mode, Settings
from webhook.metrics import Metrics

log = logging.getLogger(__name__)

SECRET_TYPE = "kubernetes.io/dockerconfigjson"
SECRET_KEY = ".dockerconfigjson"
MANAGED_BY = {"app.kubernetes.io/managed-by": "image-proxy-webhook"}
ENSURED_TTL_SECONDS = 300.0
API_TIMEOUT_SECONDS = 5.0
RECONCILE_INTERVAL_SECONDS = 300.0
CREDENTIALS_POLL_SECONDS = 10.0
# The user name sent with the license ID as password (docs/design.md §3): the
# license ID is a credential, and a user name is logged where a password is not.
LICENSE_USER = "LICENSE_ID"


class CredentialsError(RuntimeError):
    """The license or the air-gap password cannot be read."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What goes into the secret; its repr hides the values."""

    auths: tuple[tuple[str, str, str], ...]  # (registry, username, password)

    def __repr__(self) -> str:
        return f"Credentials(registries={[a[0] for a in self.auths]})"

    def dockerconfigjson(self) -> str:
        auths = {
            registry: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
            for registry, user, password in self.auths
        }
        return json.dumps({"auths": auths}, sort_keys=True, separators=(",", ":"))


def _read(path: str, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CredentialsError(f"cannot read the {what} from {path}: {exc.strerror}") from None
    if not value:
        raise CredentialsError(f"the {what} file {path} is empty")
    return value


def read_credentials(settings: Settings) -> Credentials:
    """The registries and credentials the secret carries, read fresh from their files."""
    if settings.mode is Mode.AIRGAP:
        a = settings.airgap
        password = _read(a.password_file, "air-gap registry password") if a.password_file else ""
        return Credentials(((a.registry, a.username, password),))
    license_id = settings.license_id or _read(settings.license_id_file, "license ID")
    return Credentials(
        (
            (settings.proxy_domain, LICENSE_USER, license_id),
            (settings.registry_domain, LICENSE_USER, license_id),
        )
    )


def secret_body(settings: Settings, credentials: Credentials) -> dict[str, Any]:
    data = base64.b64encode(credentials.dockerconfigjson().encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {"name": settings.secret_name, "labels": dict(MANAGED_BY)},
        "data": {SECRET_KEY: data},
    }


def _v1(body: dict[str, Any]) -> client.V1Secret:
    metadata = body["metadata"]
    return client.V1Secret(
        api_version=body["apiVersion"],
        kind=body["kind"],
        type=body["type"],
        metadata=client.V1ObjectMeta(name=metadata["name"], labels=metadata["labels"]),
        data=body["data"],
    )


def _current(secret: Any, body: dict[str, Any]) -> bool:
    data = getattr(secret, "data", None) or {}
    return bool(
        getattr(secret, "type", None) == SECRET_TYPE
        and data.get(SECRET_KEY) == body["data"][SECRET_KEY]
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"the API server answered {exc.status} {exc.reason}".rstrip()
    if isinstance(exc, TimeoutError):
        return "the API server did not answer in time"
    return f"the API server could not be reached ({type(exc).__name__})"


class PullSecrets:
    """Ensures the pull secret per namespace; the SecretEnsurer of the admission flow."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings,
        credentials: Callable[[], Credentials],
        *,
        metrics: Metrics | None = None,
        webhook_namespace: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.settings = settings
        self.read_credentials = credentials
        self.metrics = metrics
        self.webhook_namespace = webhook_namespace
        self._body: dict[str, Any] | None = None
        self._ensured: TTLCache[str, str] = TTLCache(4096, ENSURED_TTL_SECONDS, timer=clock)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.healthy = True
        if metrics is not None:
            metrics.pull_secrets_healthy.set_function(lambda: float(self.healthy))

    # -- the secret's content ------------------------------------------------

    def body(self) -> dict[str, Any]:
        if self._body is None:
            self._body = secret_body(self.settings, self.read_credentials())
        return self._body

    def refresh(self) -> bool:
        """Re-read the credentials; True when the secret's content changed."""
        body = secret_body(self.settings, self.read_credentials())
        if body == self._body:
            return False
        self._body = body
        self._ensured.clear()
        return True

    # -- per admission -------------------------------------------------------

    async def ensure(self, namespace: str, timeout: float) -> str | None:
        """Make sure the secret is current in ``namespace``; a warning when it is not.

        Never waits past ``timeout``: the apply keeps running in the background and
        the Pod is admitted with a warning that names the problem.
        """
        name = self.settings.secret_name
        try:
            content = self.body()["data"][SECRET_KEY]
        except CredentialsError as exc:
            self._count("ensure", "credentials-error")
            return f"pull secret {name!r} not written in {namespace}: {exc}"
        if self._ensured.get(namespace) == content:
            return None
        task = self._inflight.get(namespace)
        if task is None:
            task = asyncio.create_task(self._apply(namespace), name=f"pull-secret {namespace}")
            self._inflight[namespace] = task
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._done(namespace, t))
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(task)
        except TimeoutError:
            return (
                f"pull secret {name!r} in {namespace} not confirmed before the admission "
                "deadline; the pod may fail to pull private images until it is written"
            )
        except Exception as exc:
            return f"pull secret {name!r} could not be written in {namespace}: {_describe(exc)}"
        return None

    def _done(self, namespace: str, task: asyncio.Task[None]) -> None:
        self._inflight.pop(namespace, None)
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            if not isinstance(exc, ApiException):  # an error status is counted where it came
                self._count("ensure", "timeout" if isinstance(exc, TimeoutError) else "unreachable")
            log.warning(
                "pull secret %s in %s: %s", self.settings.secret_name, namespace, _describe(exc)
            )

    async def _apply(self, namespace: str) -> None:
        body = self.body()
        name = self.settings.secret_name
        timeout = API_TIMEOUT_SECONDS
        try:
            await self.core.create_namespaced_secret(namespace, _v1(body), _request_timeout=timeout)
            self._count("create", "ok")
            log.info("created pull secret %s in %s", name, namespace)
        except ApiException as exc:
            if exc.status != 409:
                self._count("create", str(exc.status))
                raise
            existing = await self.core.read_namespaced_secret(
                name, namespace, _request_timeout=timeout
            )
            if _current(existing, body):
                self._count("check", "current")
            elif getattr(existing, "type", None) != SECRET_TYPE:
                await self._recreate(namespace, existing, body)
            else:
                try:
                    await self.core.replace_namespaced_secret(
                        name, namespace, _v1(body), _request_timeout=timeout
                    )
                except ApiException as replace_exc:
                    self._count("replace", str(replace_exc.status))
                    raise
                self._count("replace", "ok")
                log.info("updated pull secret %s in %s", name, namespace)
        self._ensured[namespace] = body["data"][SECRET_KEY]

    async def _recreate(self, namespace: str, existing: Any, body: dict[str, Any]) -> None:
        """Replace a secret of another type: ``type`` is immutable, so a PUT would be a 422.

        The delete is conditional on the very object read, so a secret changed in
        between is not removed unseen; the next admission looks again.
        """
        name = self.settings.secret_name
        timeout = API_TIMEOUT_SECONDS
        metadata = existing.metadata
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(
                uid=metadata.uid, resource_version=metadata.resource_version
            )
        )
        try:
            await self.core.delete_namespaced_secret(
                name, namespace, body=options, _request_timeout=timeout
            )
            await self.core.create_namespaced_secret(namespace, _v1(body), _request_timeout=timeout)
        except ApiException as exc:
            self._count("recreate", str(exc.status))
            raise
        self._count("recreate", "ok")
        log.warning(
            "pull secret %s in %s had type %s; recreated it as %s",
            name,
            namespace,
            existing.type,
            SECRET_TYPE,
        )

    def _count(self, action: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.pull_secret_operations.labels(action, result).inc()

    # -- background ----------------------------------------------------------

    async def _namespaces(self) -> list[str]:
        if not self.settings.all_namespaces:
            return list(self.settings.namespaces)
        listed = await self.core.list_namespace(_request_timeout=API_TIMEOUT_SECONDS)
        return [n.metadata.name for n in listed.items]

    async def reconcile(self) -> int:
        """Apply the secret in every covered namespace; the number not brought current."""
        failed = 0
        for namespace in await self._namespaces():
            if not self.settings.covers(namespace, self.webhook_namespace):
                continue
            # Look at the cluster, not at the memory of having written it: the secret
            # may have been deleted or edited since.
            self._ensured.pop(namespace, None)
            if await self.ensure(namespace, API_TIMEOUT_SECONDS * 3) is not None:
                failed += 1
        self.healthy = failed == 0
        return failed

    async def run(self) -> None:
        """Keep the secret current: periodic reconcile, credential changes, new namespaces."""
        watcher = (
            asyncio.create_task(self._watch_namespaces(), name="namespace-watch")
            if self.settings.all_namespaces
            else None
        )
        next_reconcile = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                changed = False
                first = self._body is None
                try:
                    changed = self.refresh()
                except CredentialsError as exc:
                    self.healthy = False
                    log.warning("pull secret not refreshed: %s", exc)
                if changed and not first:
                    log.info("pull secret content changed: re-applying in every namespace")
                if changed or loop.time() >= next_reconcile:
                    try:
                        await self.reconcile()
                    except (ApiException, OSError, TimeoutError) as exc:
                        self.healthy = False
                        log.warning("pull secret reconcile failed: %s", _describe(exc))
                    next_reconcile = loop.time() + RECONCILE_INTERVAL_SECONDS
                await asyncio.sleep(CREDENTIALS_POLL_SECONDS)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _watch_namespaces(self) -> None:
        while True:
            try:
                async with watch.Watch() as w:
                    async for event in w.stream(self.core.list_namespace, timeout_seconds=300):
                        if event["type"] != "ADDED":
                            continue
                        namespace = event["object"].metadata.name
                        if self.settings.covers(namespace, self.webhook_namespace):
                            await self.ensure(namespace, API_TIMEOUT_SECONDS * 3)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("namespace watch interrupted: %s; retrying", _describe(exc))
                await asyncio.sleep(5)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
