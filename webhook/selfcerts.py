"""Self-managed serving certificate (chart ``tls.mode: selfManaged``, docs/design.md §4).

The webhook keeps its own CA and serving certificate in a Secret of its namespace and
puts the CA into the caBundle of its own webhook configurations, so the chart renders
nothing random and ``helm template`` (Argo CD, Flux) gives the same output every time.

- At start: read the Secret; create it when missing. Replicas starting together race
  on that create: a 409 means another replica created it first, and its content is
  read and used. Every write carries the resourceVersion it was based on, so two
  replicas never overwrite each other's certificates.
- Then, every ``checkIntervalSeconds`` and at the renewal time: renew the serving
  certificate at two thirds of its life (the CA likewise), follow a renewal another
  replica made, and set the caBundle of the two webhook configurations when it
  differs.
- Between checks, the two webhook configurations are watched: one created or replaced
  without the caBundle (a chart that applies them after the Deployment, a GitOps sync
  that replaces them) gets it back at once, not up to ``checkIntervalSeconds`` later,
  while the API server could not call the webhook.
- A renewed certificate is written to server.certFile/keyFile and handed to the
  CertificateReloader at once: new connections get it, open ones keep theirs.

The Secret's ``ca.crt`` is the bundle the API server trusts: the current CA first,
then an earlier CA while certificates it signed may still be served.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from webhook import pki
from webhook.config import SelfManagedTLSSettings, Settings

log = logging.getLogger(__name__)

CA_NAME = "image-proxy-webhook CA"
MANAGED_BY = {"app.kubernetes.io/managed-by": "image-proxy-webhook"}
API_TIMEOUT_SECONDS = 10.0
# Attempts at a write that keeps meeting another replica's write (409).
CONFLICT_ATTEMPTS = 5
START_ATTEMPTS = 5
RETRY_SECONDS = 10.0
# The API server ends a watch after this long; it is opened again at once.
WATCH_SECONDS = 300
SECRET_KEYS = ("ca.crt", "ca.key", "tls.crt", "tls.key")
WEBHOOK_CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1"


class SelfManagedTLSError(RuntimeError):
    """The certificate Secret or the webhook configurations cannot be kept current."""


# --- what the Secret holds (no I/O) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Material:
    """The Secret's content: PEM bytes of the CA bundle, CA key, certificate and key."""

    ca_bundle: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_secret_data(cls, data: dict[str, str] | None) -> Material | None:
        """None when a key is missing or not base64 (the Secret is then rewritten)."""
        try:
            values = [base64.b64decode((data or {})[k], validate=True) for k in SECRET_KEYS]
        except (KeyError, ValueError):
            return None
        return cls(*values)

    def secret_data(self) -> dict[str, str]:
        values = (self.ca_bundle, self.ca_key, self.cert, self.key)
        return {k: base64.b64encode(v).decode() for k, v in zip(SECRET_KEYS, values, strict=True)}

    @property
    def ca_bundle_b64(self) -> str:
        return base64.b64encode(self.ca_bundle).decode()


def _renew_at(cert: x509.Certificate, validity_days: float) -> datetime.datetime:
    """Two thirds into the configured life: a third of it still remains."""
    return cert.not_valid_after_utc - datetime.timedelta(days=validity_days / 3)


def _usable_ca(
    material: Material | None, settings: SelfManagedTLSSettings, now: datetime.datetime
) -> pki.CertificateAuthority | None:
    if material is None:
        return None
    try:
        first = x509.load_pem_x509_certificates(material.ca_bundle)[0]
        ca = pki.CertificateAuthority(
            days=settings.cert_validity_days,
            pem=(first.public_bytes(serialization.Encoding.PEM), material.ca_key),
        )
    except (ValueError, TypeError, IndexError):
        return None
    if now >= _renew_at(ca.certificate, settings.ca_validity_days):
        return None
    return ca


def _usable_cert(
    material: Material,
    ca: pki.CertificateAuthority,
    settings: SelfManagedTLSSettings,
    now: datetime.datetime,
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(material.cert)
        key = serialization.load_pem_private_key(material.key, password=None)
        cert.verify_directly_issued_by(ca.certificate)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    covered = {str(v) for v in names.get_values_for_type(x509.IPAddress)} | set(
        names.get_values_for_type(x509.DNSName)
    )
    return (
        key.public_key() == cert.public_key()
        and covered == set(settings.dns_names)
        and now < _renew_at(cert, settings.cert_validity_days)
    )


def plan(
    material: Material | None, settings: SelfManagedTLSSettings, now: datetime.datetime
) -> Material | None:
    """What the Secret should hold instead of ``material``; None while it is current.

    A CA at two thirds of its life is replaced, and the old one stays in the bundle
    until it expires; a serving certificate is reissued at two thirds of its life,
    when its names differ from ``dnsNames``, or when the current CA did not sign it.
    """
    ca = _usable_ca(material, settings, now)
    bundle = material.ca_bundle if material is not None and ca is not None else b""
    if ca is None:
        ca = pki.CertificateAuthority(CA_NAME, settings.ca_validity_days)
        bundle = ca.pem + _still_valid(material.ca_bundle if material else b"", now)
        log.info("generated a new CA for the webhook (valid until %s)", _until(ca.certificate))
    elif material is not None and _usable_cert(material, ca, settings, now):
        return None
    cert, key = ca.issue(settings.dns_names, days=settings.cert_validity_days)
    log.info(
        "issued a serving certificate for %s (valid until %s)",
        ", ".join(settings.dns_names),
        _until(x509.load_pem_x509_certificate(cert)),
    )
    return Material(bundle, ca.key_pem, cert, key)


def _still_valid(bundle: bytes, now: datetime.datetime) -> bytes:
    try:
        certs = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return b""
    return b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in certs if c.not_valid_after_utc > now
    )


def _until(cert: x509.Certificate) -> str:
    return cert.not_valid_after_utc.isoformat(timespec="seconds")


def renewal_due(material: Material, settings: SelfManagedTLSSettings) -> datetime.datetime:
    """When ``plan`` will next want a change: the earlier renewal of CA and certificate."""
    ca = x509.load_pem_x509_certificates(material.ca_bundle)[0]
    cert = x509.load_pem_x509_certificate(material.cert)
    return min(
        _renew_at(ca, settings.ca_validity_days), _renew_at(cert, settings.cert_validity_days)
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --- the API server -----------------------------------------------------------------------


class SelfManagedTLS:
    """Keeps the Secret, the served certificate and the caBundles current."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: SelfManagedTLSSettings,
        namespace: str,
        paths: pki.CertPaths,
    ) -> None:
        self.api = api
        self.settings = settings
        self.namespace = namespace
        self.paths = paths
        self.material: Material | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def _secret_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.settings.secret_name}"

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One request with raw JSON (a PUT must not drop fields the client does not model)."""
        try:
            response = await self.api.call_api(
                path,
                method,
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except ApiException as exc:
            return exc.status or 0, json.loads(exc.body) if exc.body else {}
        async with response:
            data = await response.read()
            return response.status, json.loads(data) if data else {}

    # -- the Secret --

    async def sync_secret(self) -> Material:
        """Read the Secret and write it when ``plan`` wants a change; the current content.

        A write that conflicts (409: created or updated by another replica since it was
        read) is dropped and the Secret read again: the other replica's content wins.
        """
        for _ in range(CONFLICT_ATTEMPTS):
            status, secret = await self._call("GET", self._secret_path)
            if status == 404:
                secret = {}
            elif status != 200:
                raise SelfManagedTLSError(
                    f"cannot read Secret {self.namespace}/{self.settings.secret_name}: "
                    f"HTTP {status} {secret.get('message', '')}"
                )
            current = Material.from_secret_data(secret.get("data")) if secret else None
            wanted = plan(current, self.settings, _now())
            if wanted is None:
                assert current is not None
                return current
            if not secret:
                body = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "kubernetes.io/tls",
                    "metadata": {"name": self.settings.secret_name, "labels": dict(MANAGED_BY)},
                    "data": wanted.secret_data(),
                }
                status, answer = await self._call(
                    "POST", f"/api/v1/namespaces/{self.namespace}/secrets", body
                )
            else:
                # Keeps resourceVersion: the update fails with 409 if another replica wrote
                # in between.
                secret["data"] = wanted.secret_data()
                status, answer = await self._call("PUT", self._secret_path, secret)
            if status in (200, 201):
                log.info(
                    "wrote the certificates to Secret %s/%s",
                    self.namespace,
                    self.settings.secret_name,
                )
                return wanted
            if status != 409:
                raise SelfManagedTLSError(
                    f"cannot write Secret {self.namespace}/{self.settings.secret_name}: "
                    f"HTTP {status} {answer.get('message', '')}"
                )
            log.info("another replica wrote the certificate Secret first; reading theirs")
        raise SelfManagedTLSError(
            f"Secret {self.namespace}/{self.settings.secret_name} kept changing while it was "
            "written"
        )

    # -- the webhook configurations --

    def _configurations(self) -> list[tuple[str, str]]:
        """(plural, name) of each webhook configuration this webhook keeps the caBundle of."""
        return [
            (plural, name)
            for plural, name in (
                ("mutatingwebhookconfigurations", self.settings.mutating_webhook_configuration),
                ("validatingwebhookconfigurations", self.settings.validating_webhook_configuration),
            )
            if name
        ]

    async def inject_ca_bundle(self, material: Material) -> None:
        """Set caBundle in every webhook of the two named configurations, when it differs.

        A configuration not found is skipped (it may be applied after the Deployment);
        the next check tries again.
        """
        wanted = material.ca_bundle_b64
        for plural, name in self._configurations():
            path = f"{WEBHOOK_CONFIGURATIONS}/{plural}/{name}"
            for _ in range(CONFLICT_ATTEMPTS):
                status, configuration = await self._call("GET", path)
                if status == 404:
                    log.info(
                        "%s %s not found yet; its caBundle is set once it exists", plural, name
                    )
                    break
                if status != 200:
                    raise SelfManagedTLSError(
                        f"cannot read {plural} {name}: HTTP {status} "
                        f"{configuration.get('message', '')}"
                    )
                hooks = configuration.get("webhooks") or []
                if all(h.get("clientConfig", {}).get("caBundle") == wanted for h in hooks):
                    break
                for hook in hooks:
                    hook.setdefault("clientConfig", {})["caBundle"] = wanted
                status, answer = await self._call("PUT", path, configuration)
                if status == 200:
                    log.info("set the caBundle of %s %s", plural, name)
                    break
                if status != 409:
                    raise SelfManagedTLSError(
                        f"cannot update {plural} {name}: HTTP {status} {answer.get('message', '')}"
                    )
            else:
                raise SelfManagedTLSError(f"{plural} {name} kept changing while it was updated")

    async def watch_configurations(self) -> None:
        """Set the caBundle again whenever a configuration is added or modified, until
        cancelled. Each watch starts without a resourceVersion, so the configuration's
        current state arrives first as ADDED: nothing that changed while no watch was
        open is missed."""
        await asyncio.gather(
            *(self._follow(plural, name) for plural, name in self._configurations())
        )

    async def _follow(self, plural: str, name: str) -> None:
        delay = 1.0
        while True:
            try:
                async for event in self._events(plural, name):
                    delay = 1.0
                    if event in ("ADDED", "MODIFIED") and self.material is not None:
                        await self.inject_ca_bundle(self.material)
                continue  # the API server ended the watch (timeoutSeconds): open the next
            except ApiException as exc:
                problem = f"HTTP {exc.status} {exc.reason}"
            except (SelfManagedTLSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                problem = str(exc) or type(exc).__name__
            log.warning(
                "watching %s %s: %s; watching again in %.0f s", plural, name, problem, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.check_interval_seconds)

    async def _events(self, plural: str, name: str) -> AsyncIterator[str]:
        """The type of each watch event on one configuration (by name: the chart's RBAC
        grants list and watch of that name only)."""
        response = await self.api.call_api(
            f"{WEBHOOK_CONFIGURATIONS}/{plural}",
            "GET",
            query_params=[
                ("watch", "true"),
                ("fieldSelector", f"metadata.name={name}"),
                ("timeoutSeconds", WATCH_SECONDS),
            ],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=WATCH_SECONDS + API_TIMEOUT_SECONDS,
        )
        async with response:
            async for line in response.content:
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise SelfManagedTLSError(
                        f"the watch ended: {status.get('code')} {status.get('message', '')}"
                    )
                yield str(event.get("type"))

    # -- the served files --

    def write_files(self, material: Material) -> bool:
        """Write the pair where the reloader reads it; False when it is already there."""
        try:
            if (
                self.paths.cert_file.read_bytes() == material.cert
                and self.paths.key_file.read_bytes() == material.key
            ):
                return False
        except OSError:
            pass
        for path in (self.paths.cert_file, self.paths.key_file):
            path.parent.mkdir(parents=True, exist_ok=True)
        # Key first: the reloader refuses a certificate without its key, never the reverse.
        pki.write_file(self.paths.key_file, material.key, private=True)
        pki.write_file(self.paths.cert_file, material.cert)
        return True

    # -- lifecycle --

    async def sync(self, reload: Callable[[], object] | None = None) -> None:
        """One round: the Secret, then the caBundles, then the served files.

        The caBundle comes first, so a new CA is trusted before a certificate it
        signed is served.
        """
        material = await self.sync_secret()
        await self.inject_ca_bundle(material)
        self.material = material
        if self.write_files(material) and reload is not None:
            await asyncio.to_thread(reload)

    async def start(self) -> None:
        """Certificates in place before the server loads them; retried a few times."""
        delay = 1.0
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self.sync()
                return
            except (SelfManagedTLSError, aiohttp.ClientError, TimeoutError) as exc:
                if attempt == START_ATTEMPTS:
                    raise SelfManagedTLSError(f"no serving certificate: {exc}") from exc
                log.warning("self-managed TLS, attempt %d: %s; retrying", attempt, exc)
                await asyncio.sleep(delay)
                delay *= 2

    async def run(self, reload: Callable[[], object]) -> None:
        """Check at each interval and at the renewal time, until cancelled."""
        while True:
            wait = self.settings.check_interval_seconds
            if self.material is not None:
                due = (renewal_due(self.material, self.settings) - _now()).total_seconds()
                wait = min(wait, due)
            await asyncio.sleep(max(wait, 1.0))
            try:
                await self.sync(reload)
                continue
            except (SelfManagedTLSError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("self-managed TLS check failed, retrying: %s", exc)
            except Exception:
                log.exception("self-managed TLS check failed unexpectedly, retrying")
            # Past the renewal time the next check is due at once: pace the retries.
            await asyncio.sleep(min(self.settings.check_interval_seconds, RETRY_SECONDS))

    def follow(self, reload: Callable[[], object]) -> None:
        """Run the checks in the background; ``reload`` loads a renewed pair."""
        self._tasks = [
            asyncio.create_task(self.run(reload), name="self-managed-tls"),
            asyncio.create_task(self.watch_configurations(), name="self-managed-tls-watch"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def start(
    settings: Settings, namespace: str, api: client.ApiClient | None
) -> SelfManagedTLS | None:
    """With ``selfManagedTLS`` configured: the Secret read or created through ``api`` (the
    caller's, closed by the caller) and the serving pair written to server.certFile/keyFile;
    None otherwise."""
    if settings.self_managed_tls is None:
        return None
    if not namespace:
        raise SelfManagedTLSError(
            "selfManagedTLS: the webhook's namespace is unknown (set POD_NAMESPACE)"
        )
    if api is None:
        raise SelfManagedTLSError("selfManagedTLS: no Kubernetes API configured")
    paths = pki.CertPaths(Path(settings.server.cert_file), Path(settings.server.key_file))
    manager = SelfManagedTLS(api, settings.self_managed_tls, namespace, paths)
    await manager.start()
    return manager
