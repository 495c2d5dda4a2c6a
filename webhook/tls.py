"""Serving TLS: the server context and certificate reload (certificates: webhook/pki.py).

A mounted Secret changes by a symlink swap and sends no usable file event, so the
reloader polls the files and compares their content. A changed pair is loaded into a
new SSLContext; the listening context's SNI callback, which OpenSSL calls on every
ClientHello (with or without a server name), hands each new connection the newest
context. Connections accepted afterwards use the new pair, open ones keep theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl

from webhook.pki import CertPaths, not_after

log = logging.getLogger(__name__)

# How often the certificate files are compared with the loaded pair, in seconds.
RELOAD_INTERVAL_SECONDS = 10.0


def server_context(paths: CertPaths) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(paths.cert_file, paths.key_file)
    return context


def _fingerprint(paths: CertPaths) -> bytes:
    digest = hashlib.sha256()
    for path in (paths.cert_file, paths.key_file):
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.digest()


class CertificateReloader:
    """Polls the certificate files; a changed, consistent pair serves new connections.

    A context is never modified once it serves: loading a pair into a live context
    leaves it holding the new certificate without a key for a moment (OpenSSL drops
    the key that no longer matches), and a handshake in that moment fails. Each
    reload builds a fresh context instead, which ``load_cert_chain`` has checked
    for a matching key, and publishes it with one reference assignment; a pair that
    is half written or mismatched never reaches a handshake.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        paths: CertPaths,
        interval: float = RELOAD_INTERVAL_SECONDS,
    ) -> None:
        self.context = context  # the listening context
        self.current = context  # the context new connections get
        self.paths = paths
        self.interval = interval
        self.healthy = True
        self._fingerprint = _fingerprint(paths)
        self.not_after = not_after(paths.cert_file)  # of the certificate being served
        context.sni_callback = self._select

    def _select(
        self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        current = self.current
        if current is not context:
            connection.context = current

    def check(self) -> bool:
        """Reload if the files changed; True when a new certificate was loaded.

        Readable files identical to the loaded pair report healthy again (a Secret
        that was briefly unreadable and came back unchanged).
        """
        try:
            fingerprint = _fingerprint(self.paths)
            if fingerprint == self._fingerprint:
                self.healthy = True
                return False
            # During a rotation the certificate may be written before its key: the
            # new context refuses a mismatched pair and the current one stays.
            fresh = server_context(self.paths)
            expires = not_after(self.paths.cert_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.healthy = False
            log.warning(
                "certificate reload from %s failed, keeping the current one: %s",
                self.paths.cert_file,
                exc,
            )
            return False
        self.current = fresh
        self._fingerprint = fingerprint
        self.not_after = expires
        self.healthy = True
        log.info("loaded a new serving certificate from %s", self.paths.cert_file)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(self.check)
