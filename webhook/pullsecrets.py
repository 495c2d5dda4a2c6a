"""The pull secret in the cluster (docs/design.md §3), through kubernetes-asyncio.

The manager keeps a copy of the pull secret of every covered namespace (and, with
``namespaces: ["*"]``, of the namespaces), current by list + watch
(webhook/reflector.py), and writes only where a covered namespace lacks the secret
or holds another one: at start-up, when a watch reports a change (a secret deleted
or edited by hand comes back at once), when a namespace is created, and when the
license changes. Before a Pod that needs the secret is admitted, ``ensure`` looks at
that copy and writes when the namespace lacks the current secret. The license ID is
never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from webhook.config import Mode, Settings
from webhook.metrics import Metrics
from webhook.reflector import Object, Reflector

log = logging.getLogger(__name__)

SECRET_TYPE = "kubernetes.io/dockerconfigjson"
SECRET_KEY = ".dockerconfigjson"
MANAGED_BY = {"app.kubernetes.io/managed-by": "image-proxy-webhook"}
# The digest of the content a replica wrote. A secret whose content matches it was
# written by a replica, maybe one whose credentials are newer (a rotated license file
# reaches each Pod's mount at its own moment): it is not overwritten at once (below).
WRITTEN = "image-proxy-webhook/written-content"
# How long another replica's write of other content is left alone, the credentials
# read again meanwhile: the kubelet updates a mounted Secret within about two minutes.
DEFER_SECONDS = 180.0
API_TIMEOUT_SECONDS = 5.0
CREDENTIALS_POLL_SECONDS = 10.0
# Writes in flight at once from the background (start-up, a license change): enough
# to fill the API server's pipeline, far below its default of 200 mutating requests.
WRITERS = 16
# Attempts at one namespace when its secret changes under the write (409).
ATTEMPTS = 3
# A namespace whose write failed is tried again after 1 s, doubling up to this.
RETRY_MAX_SECONDS = 300.0
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


def fingerprint(content: str) -> str:
    """What the annotation WRITTEN says of the content written: a digest, never the
    content (whoever may read the annotation may read the secret anyway)."""
    return hashlib.sha256(content.encode()).hexdigest()[:32]


def secret_body(settings: Settings, credentials: Credentials) -> dict[str, Any]:
    data = base64.b64encode(credentials.dockerconfigjson().encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": settings.secret_name,
            "labels": dict(MANAGED_BY),
            "annotations": {WRITTEN: fingerprint(data)},
        },
        "data": {SECRET_KEY: data},
    }


def _v1(body: dict[str, Any], resource_version: str | None = None) -> client.V1Secret:
    metadata = body["metadata"]
    return client.V1Secret(
        api_version=body["apiVersion"],
        kind=body["kind"],
        type=body["type"],
        metadata=client.V1ObjectMeta(
            name=metadata["name"],
            labels=metadata["labels"],
            annotations=metadata["annotations"],
            resource_version=resource_version,
        ),
        data=body["data"],
    )


@dataclass(frozen=True, slots=True)
class Seen:
    """The pull secret of one namespace as last seen: what it takes to compare it and
    to write it back conditionally."""

    type: str
    content: str | None
    uid: str
    resource_version: str
    by_replica: bool = False  # its content is what a replica wrote (WRITTEN matches)

    def current(self, content: str) -> bool:
        return self.type == SECRET_TYPE and self.content == content

    def newer_than(self, other: Seen | None) -> bool:
        """Whether this is a later version than ``other`` of the same object. The API
        server's resourceVersions are etcd revisions; one that is not a number is
        taken as newer."""
        if other is None or other.uid != self.uid:
            return True
        try:
            return int(self.resource_version) >= int(other.resource_version)
        except ValueError:
            return True


def _by_replica(content: str | None, annotations: dict[str, str] | None) -> bool:
    return content is not None and (annotations or {}).get(WRITTEN) == fingerprint(content)


def _seen_object(obj: Object) -> Seen:
    metadata = obj.get("metadata") or {}
    content = (obj.get("data") or {}).get(SECRET_KEY)
    return Seen(
        str(obj.get("type", "")),
        content,
        str(metadata.get("uid", "")),
        str(metadata.get("resourceVersion", "")),
        _by_replica(content, metadata.get("annotations")),
    )


def _seen_model(secret: Any) -> Seen | None:
    metadata = getattr(secret, "metadata", None)
    if metadata is None:
        return None
    content = (getattr(secret, "data", None) or {}).get(SECRET_KEY)
    return Seen(
        str(getattr(secret, "type", "") or ""),
        content,
        str(metadata.uid or ""),
        str(metadata.resource_version or ""),
        _by_replica(content, metadata.annotations),
    )


class KeptChanging(Exception):
    """The secret changed under every attempt to write it (another writer)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeptChanging):
        return "the secret kept changing while it was written"
    if isinstance(exc, ApiException):
        return f"the API server answered {exc.status} {exc.reason}".rstrip()
    if isinstance(exc, TimeoutError):
        return "the API server did not answer in time"
    return f"the API server could not be reached ({type(exc).__name__})"


class PullSecrets:
    """Keeps the pull secret current per namespace; the SecretEnsurer of the admission flow."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings,
        credentials: Callable[[], Credentials],
        *,
        metrics: Metrics | None = None,
        webhook_namespace: str = "",
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.settings = settings
        self.read_credentials = credentials
        self.metrics = metrics
        self.webhook_namespace = webhook_namespace
        self._body: dict[str, Any] | None = None
        self._credentials_failing = False
        # The pull secret of each namespace as last seen (absent: none there).
        self._seen: dict[str, Seen] = {}
        # With "*": every namespace, True while it is not being deleted.
        self._namespaces: dict[str, bool] = {}
        self._reflectors = self._follow()
        self._listed: set[str] = set()  # reflectors that have listed at least once
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._failures: dict[str, int] = {}  # namespace -> writes failed in a row
        self._restoring: set[str] = set()  # current once, changed by someone else since
        self._deferred: dict[str, float] = {}  # another replica's write seen first then
        self._credentials_read = 0.0
        self._superseded: set[str] = set()  # contents held before the current one
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        if metrics is not None:
            metrics.pull_secrets_healthy.set_function(lambda: float(self.healthy))
            metrics.pull_secrets_present.set_function(lambda: float(self.present()))

    # -- the secret's content ------------------------------------------------

    def body(self) -> dict[str, Any]:
        if self._body is None:
            self._body = secret_body(self.settings, self.read_credentials())
        return self._body

    def refresh(self) -> bool:
        """Re-read the credentials; True when the secret's content changed."""
        try:
            body = secret_body(self.settings, self.read_credentials())
        except CredentialsError:
            self._credentials_failing = True
            raise
        self._credentials_failing = False
        if body == self._body:
            return False
        if self._body is not None:
            self._superseded.add(self._body["data"][SECRET_KEY])
        self._body = body
        return True

    @property
    def healthy(self) -> bool:
        """The credentials can be read and no covered namespace is failing its write."""
        failing = any(self._covered(namespace) for namespace in self._failures)
        return not self._credentials_failing and not failing

    def present(self) -> int:
        """Covered namespaces holding the current secret, as last seen."""
        if self._body is None:
            return 0
        content = self._body["data"][SECRET_KEY]
        return sum(
            seen.current(content) and self._covered(namespace)
            for namespace, seen in self._seen.items()
        )

    def _covered(self, namespace: str) -> bool:
        if not self.settings.covers(namespace, self.webhook_namespace):
            return False
        return not self.settings.all_namespaces or self._namespaces.get(namespace, False)

    def _covered_namespaces(self) -> list[str]:
        if self.settings.all_namespaces:
            names: Iterable[str] = self._namespaces
        else:
            names = self.settings.namespaces
        return [name for name in names if self._covered(name)]

    # -- per admission -------------------------------------------------------

    async def ensure(self, namespace: str, timeout: float) -> str | None:
        """Make sure the secret is current in ``namespace``; a warning when it is not.

        Never waits past ``timeout``: the write keeps running in the background and
        the Pod is admitted with a warning that names the problem.
        """
        name = self.settings.secret_name
        try:
            content = self.body()["data"][SECRET_KEY]
        except CredentialsError as exc:
            self._count("ensure", "credentials-error")
            return f"pull secret {name!r} not written in {namespace}: {exc}"
        seen = self._seen.get(namespace)
        if seen is not None and (seen.current(content) or self._unknown_write(seen)):
            return None  # there is a pull secret; the background settles whose
        task = self._start(namespace)
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

    def _start(self, namespace: str) -> asyncio.Task[None]:
        """The write for ``namespace`` in flight, started when there is none."""
        task = self._inflight.get(namespace)
        if task is None:
            task = asyncio.create_task(self._apply(namespace), name=f"pull-secret {namespace}")
            self._inflight[namespace] = task
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._done(namespace, t))
        return task

    def _done(self, namespace: str, task: asyncio.Task[None]) -> None:
        self._inflight.pop(namespace, None)
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            self._failures.pop(namespace, None)
            return
        self._failures[namespace] = self._failures.get(namespace, 0) + 1
        if not isinstance(exc, ApiException | KeptChanging):  # counted where they came
            self._count("ensure", "timeout" if isinstance(exc, TimeoutError) else "unreachable")
        name = self.settings.secret_name
        log.warning("pull secret %s in %s: %s", name, namespace, _describe(exc))

    async def _apply(self, namespace: str) -> None:
        """Write the secret where it is missing or differs, from what was last seen;
        when that turns out to be out of date (409), from a fresh read."""
        body = self.body()
        content = body["data"][SECRET_KEY]
        seen = self._seen.get(namespace)
        for attempt in range(ATTEMPTS):
            if attempt:
                seen = await self._read(namespace)
                if seen is not None and seen.current(content):
                    self._count("check", "current")
                    return
                if seen is not None and self._unknown_write(seen):
                    self._seen[namespace] = seen
                    self._enqueue([namespace])  # the writers leave it alone for a while
                    return
            if seen is None:
                written = await self._create(namespace, body)
            elif seen.current(content):
                return
            elif seen.type != SECRET_TYPE:
                written = await self._recreate(namespace, seen, body)
            else:
                written = await self._replace(namespace, seen, body)
            if written is not None:
                self._record(namespace, written)
                if namespace in self._restoring:
                    self._restoring.discard(namespace)
                    if self.metrics is not None:
                        self.metrics.pull_secret_restores.inc()
                return
        raise KeptChanging()

    def _record(self, namespace: str, seen: Seen) -> None:
        """Remember a version written, unless the watch already brought a later one."""
        if seen.newer_than(self._seen.get(namespace)):
            self._seen[namespace] = seen

    async def _read(self, namespace: str) -> Seen | None:
        """The secret as it is now, read by a list of its name: the list the watch is
        granted, not another permission."""
        try:
            listed = await self.core.list_namespaced_secret(
                namespace,
                field_selector=f"metadata.name={self.settings.secret_name}",
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except ApiException as exc:
            self._count("read", str(exc.status))
            raise
        items = getattr(listed, "items", None) or []
        return _seen_model(items[0]) if items else None

    async def _create(self, namespace: str, body: dict[str, Any]) -> Seen | None:
        """The secret created; None when one exists already (409)."""
        try:
            created = await self.core.create_namespaced_secret(
                namespace, _v1(body), _request_timeout=API_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            if exc.status == 409:
                self._count("create", "conflict")
                return None
            self._count("create", str(exc.status))
            raise
        self._count("create", "ok")
        log.info("created pull secret %s in %s", self.settings.secret_name, namespace)
        return _seen_model(created) or Seen(SECRET_TYPE, body["data"][SECRET_KEY], "", "")

    async def _replace(self, namespace: str, seen: Seen, body: dict[str, Any]) -> Seen | None:
        """The secret updated in place, on the version seen; None when it changed
        since (409), or is gone (404)."""
        try:
            replaced = await self.core.replace_namespaced_secret(
                self.settings.secret_name,
                namespace,
                _v1(body, seen.resource_version or None),
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                self._count("replace", "conflict")
                return None
            self._count("replace", str(exc.status))
            raise
        self._count("replace", "ok")
        log.info("updated pull secret %s in %s", self.settings.secret_name, namespace)
        return _seen_model(replaced) or Seen(SECRET_TYPE, body["data"][SECRET_KEY], "", "")

    async def _recreate(self, namespace: str, seen: Seen, body: dict[str, Any]) -> Seen | None:
        """Replace a secret of another type: ``type`` is immutable, so a PUT would be a 422.

        The delete is conditional on the very version seen, so a secret changed in
        between is not removed unseen (409: None, and it is read again).
        """
        name = self.settings.secret_name
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(
                uid=seen.uid or None, resource_version=seen.resource_version or None
            )
        )
        try:
            await self.core.delete_namespaced_secret(
                name, namespace, body=options, _request_timeout=API_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                self._count("recreate", "conflict")
                return None
            self._count("recreate", str(exc.status))
            raise
        self._seen.pop(namespace, None)
        try:
            created = await self.core.create_namespaced_secret(
                namespace, _v1(body), _request_timeout=API_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            self._count("recreate", "conflict" if exc.status == 409 else str(exc.status))
            if exc.status == 409:
                return None
            raise
        self._count("recreate", "ok")
        log.warning(
            "pull secret %s in %s had type %s; recreated it as %s",
            name,
            namespace,
            seen.type,
            SECRET_TYPE,
        )
        return _seen_model(created) or Seen(SECRET_TYPE, body["data"][SECRET_KEY], "", "")

    def _count(self, action: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.pull_secret_operations.labels(action, result).inc()

    # -- what the cluster holds: list + watch --------------------------------

    def _follow(self) -> list[Reflector]:
        """The watches: with "*", the namespaces and the pull secret in all of them (one
        watch each); otherwise the pull secret in each listed namespace. By name, which
        the chart's RBAC can grant alone (a label selector it cannot)."""
        by_name = f"metadata.name={self.settings.secret_name}"
        if self.settings.all_namespaces:
            return [
                Reflector(
                    self.api,
                    "/api/v1/namespaces",
                    "",
                    self._namespaces_listed,
                    self._namespace_changed,
                    lambda reason: self._restarted("namespaces", reason),
                    "namespaces",
                ),
                Reflector(
                    self.api,
                    "/api/v1/secrets",
                    by_name,
                    lambda items: self._secrets_listed(None, items),
                    self._secret_changed,
                    lambda reason: self._restarted("secrets", reason),
                    f"secrets {self.settings.secret_name}",
                ),
            ]
        return [
            Reflector(
                self.api,
                f"/api/v1/namespaces/{namespace}/secrets",
                by_name,
                functools.partial(self._secrets_listed, namespace),
                self._secret_changed,
                lambda reason: self._restarted("secrets", reason),
                f"secret {self.settings.secret_name} in {namespace}",
            )
            for namespace in self.settings.namespaces
            if self.settings.covers(namespace, self.webhook_namespace)
        ]

    def _restarted(self, resource: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.pull_secret_watch_restarts.labels(resource, reason).inc()

    def _namespaces_listed(self, items: list[Object]) -> None:
        self._namespaces = {
            item["metadata"]["name"]: not item["metadata"].get("deletionTimestamp")
            for item in items
        }
        self._was_listed("namespaces")
        self._enqueue(self._covered_namespaces())

    def _namespace_changed(self, kind: str, obj: Object) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self._namespaces.pop(name, None)
            self._failures.pop(name, None)
            return
        self._namespaces[name] = not obj["metadata"].get("deletionTimestamp")
        self._enqueue([name])

    def _secrets_listed(self, scope: str | None, items: list[Object]) -> None:
        """A fresh list: replaces what was seen (of one namespace, or of all)."""
        listed = {item["metadata"]["namespace"]: _seen_object(item) for item in items}
        if scope is None:
            self._seen = listed
        else:
            self._seen.pop(scope, None)
            self._seen.update(listed)
        if self._was_listed(f"secrets {scope}") or scope is None:
            self._enqueue(self._covered_namespaces())
        else:
            self._enqueue([scope])

    def _secret_changed(self, kind: str, obj: Object) -> None:
        namespace = obj["metadata"]["namespace"]
        before = self._seen.get(namespace)
        if kind == "DELETED":
            self._seen.pop(namespace, None)
        else:
            self._seen[namespace] = _seen_object(obj)
        after = self._seen.get(namespace)
        if self._body is not None and before is not None:
            content = self._body["data"][SECRET_KEY]
            if before.current(content) and not (after is not None and after.current(content)):
                self._restoring.add(namespace)
        self._enqueue([namespace])

    def _was_listed(self, reflector: str) -> bool:
        """Note a list; True when it was the last of the first lists (every covered
        namespace is then looked at: none was while something was still unlisted)."""
        before = len(self._listed)
        self._listed.add(reflector)
        return before < len(self._reflectors) == len(self._listed)

    def _enqueue(self, namespaces: list[str]) -> None:
        """Queue namespaces to look at, once everything is listed (before that a
        namespace that holds its secret could look like one that lacks it)."""
        if len(self._listed) < len(self._reflectors):
            return
        random.shuffle(namespaces)  # replicas starting together meet rarely on one
        for namespace in namespaces:
            if namespace not in self._queued:
                self._queued.add(namespace)
                self._queue.put_nowait(namespace)

    async def _writer(self) -> None:
        while True:
            namespace = await self._queue.get()
            self._queued.discard(namespace)
            if not self._covered(namespace) or self._body is None:
                continue
            seen = self._seen.get(namespace)
            if seen is not None and seen.current(self._body["data"][SECRET_KEY]):
                self._failures.pop(namespace, None)
                self._deferred.pop(namespace, None)
                if namespace not in self._inflight:  # put back by someone else
                    self._restoring.discard(namespace)
                continue
            if seen is not None and self._defer(namespace, seen):
                continue
            self._deferred.pop(namespace, None)
            try:
                await asyncio.shield(self._start(namespace))
            except asyncio.CancelledError:
                raise
            except Exception:  # logged and counted when the write ended
                failures = self._failures.get(namespace, 1)
                delay = min(2.0 ** (failures - 1), RETRY_MAX_SECONDS)
                self._later(namespace, delay * random.uniform(0.75, 1.0))

    def _unknown_write(self, seen: Seen) -> bool:
        """Written, unedited since, by a replica, with content this one never held: maybe
        from credentials newer than its own. (Content it held before is stale: its own
        earlier write, or a replica's not yet rotated.)"""
        current = self._body["data"][SECRET_KEY] if self._body is not None else None
        return (
            seen.by_replica
            and seen.type == SECRET_TYPE
            and seen.content != current
            and seen.content not in self._superseded
        )

    def _defer(self, namespace: str, seen: Seen) -> bool:
        """True while another replica's write of other content is left alone: the
        credentials are read again (the other replica may have seen a rotated license
        first), and only after DEFER_SECONDS is it overwritten. Without this, two
        replicas a few seconds apart on a license change would undo each other's
        writes until the second one read the new file."""
        if not self._unknown_write(seen):
            return False
        now = asyncio.get_running_loop().time()
        if now - self._credentials_read >= 1.0:
            self._credentials_read = now
            with contextlib.suppress(CredentialsError):
                if self.refresh():
                    log.info("pull secret content changed: writing it in every namespace")
                    self._enqueue(self._covered_namespaces())
        if seen.current(self.body()["data"][SECRET_KEY]):
            return True  # current with the credentials just read
        since = self._deferred.setdefault(namespace, now)
        if now - since >= DEFER_SECONDS:
            return False
        self._later(namespace, DEFER_SECONDS - (now - since))
        return True

    def _later(self, namespace: str, delay: float) -> None:
        async def again() -> None:
            await asyncio.sleep(delay)
            self._enqueue([namespace])

        task = asyncio.create_task(again(), name=f"pull-secret retry {namespace}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- background ----------------------------------------------------------

    async def reconcile(self) -> int:
        """List what the cluster holds now and bring every covered namespace current;
        the number not brought current. (``run`` does this at start and then follows
        the watches.)"""
        lists = await asyncio.gather(
            *(reflector.list() for reflector in self._reflectors), return_exceptions=True
        )
        for reflector, listed in zip(self._reflectors, lists, strict=True):
            if isinstance(listed, BaseException):
                if self.settings.all_namespaces or not isinstance(listed, Exception):
                    raise listed
                # one listed namespace: its write below reads what is there
                log.warning("listing %s: %s", reflector.what, _describe(listed))
                continue
            reflector.replaced(listed[0])
        content = self.body()["data"][SECRET_KEY]
        stale = [
            namespace
            for namespace in self._covered_namespaces()
            if not (namespace in self._seen and self._seen[namespace].current(content))
        ]
        failed = 0
        limit = asyncio.Semaphore(WRITERS)

        async def one(namespace: str) -> None:
            nonlocal failed
            async with limit:
                try:
                    await asyncio.shield(self._start(namespace))
                except Exception:
                    failed += 1

        await asyncio.gather(*(one(namespace) for namespace in stale))
        return failed

    async def run(self) -> None:
        """Keep the secret current until cancelled: the watches, the writers, and the
        credentials read again every ``CREDENTIALS_POLL_SECONDS``."""
        try:
            self.refresh()
        except CredentialsError as exc:
            log.warning("pull secret not written: %s", exc)
        async with asyncio.TaskGroup() as group:
            for reflector in self._reflectors:
                group.create_task(reflector.run(), name=f"watch {reflector.what}")
            for number in range(WRITERS):
                group.create_task(self._writer(), name=f"pull-secret writer {number}")
            while True:
                await asyncio.sleep(CREDENTIALS_POLL_SECONDS)
                try:
                    changed = self.refresh()
                except CredentialsError as exc:
                    log.warning("pull secret not refreshed: %s", exc)
                    continue
                if changed:
                    log.info("pull secret content changed: writing it in every namespace")
                    self._enqueue(self._covered_namespaces())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
