"""TLS for the webhook: the server context, certificate reload, development certificates.

A mounted Secret changes by a symlink swap and sends no usable file event, so the
reloader polls the files and compares their content. A changed pair is loaded into a
new SSLContext; the listening context's SNI callback, which OpenSSL calls on every
ClientHello (with or without a server name), hands each new connection the newest
context. Connections accepted afterwards use the new pair, open ones keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import logging
import os
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

DEV_NAMES = ("localhost", "127.0.0.1", "::1")
# How often the certificate files are compared with the loaded pair, in seconds.
RELOAD_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class CertPaths:
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # set for generated development certificates


def server_context(paths: CertPaths) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(paths.cert_file, paths.key_file)
    return context


def not_after(cert_file: Path) -> float:
    """When the (first) certificate in the file expires, in Unix seconds."""
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return certificate.not_valid_after_utc.timestamp()


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


# --- certificates ------------------------------------------------------------

# Certificates start a little in the past: a node whose clock runs behind still
# accepts a certificate issued a moment ago.
_BACKDATE = datetime.timedelta(minutes=5)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    """A CA in memory; ``issue`` signs serving certificates.

    A new one is generated, or ``pem`` (certificate, key) loads an existing one.
    ``days`` is the validity of the CA and the default validity of what it issues.
    """

    def __init__(
        self,
        common_name: str = "image-proxy-webhook development CA",
        days: float = 365,
        *,
        pem: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.days = days
        if pem is not None:
            self.certificate = x509.load_pem_x509_certificate(pem[0])
            key = serialization.load_pem_private_key(pem[1], password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey) or (
                key.public_key() != self.certificate.public_key()
            ):
                raise ValueError("the CA key is not an EC key of the CA certificate")
            self.key = key
            self.name = self.certificate.subject
            return
        now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(common_name)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    def issue(self, names: tuple[str, ...], days: float | None = None) -> tuple[bytes, bytes]:
        """A serving certificate for ``names`` (DNS names or IPs): (cert PEM, key PEM)."""
        if not names:
            raise ValueError("at least one DNS name or IP address is needed")
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days or self.days))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def generate(out: Path, names: tuple[str, ...], days: int = 365) -> CertPaths:
    """A development CA and a serving certificate for ``names`` (DNS names or IPs).

    Writes ca.crt, ca.key, tls.crt and tls.key into ``out``.
    """
    if not names:
        raise ValueError("at least one DNS name or IP address is needed")
    out.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority(days=days)
    cert, key = ca.issue(names)
    paths = CertPaths(out / "tls.crt", out / "tls.key", out / "ca.crt")
    write_file(out / "ca.key", ca.key_pem, private=True)
    write_file(out / "ca.crt", ca.pem)
    write_file(paths.key_file, key, private=True)
    write_file(paths.cert_file, cert)
    return paths


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    # Write then rename, so a reloader never reads half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    if private:
        tmp.chmod(0o600)
    tmp.replace(path)


# Lock descriptors held open for the life of the process (see _development_directory).
_held_locks: list[int] = []


def _development_directory() -> Path:
    """``$TMPDIR/image-proxy-webhook-tls``, where the CA is easy to find, for the first
    server on the machine; a private ``image-proxy-webhook-tls-*`` directory for any
    other, so that a second server, starting or failing to, never rewrites the files
    the first one serves and watches. The first holds a lock on the shared one."""
    shared = Path(tempfile.gettempdir()) / "image-proxy-webhook-tls"
    with contextlib.suppress(FileExistsError):
        shared.mkdir(mode=0o700)
    info = shared.lstat()
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
        fd = os.open(shared / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
        else:
            _held_locks.append(fd)
            return shared
    return Path(tempfile.mkdtemp(prefix="image-proxy-webhook-tls-"))


def self_signed(directory: Path | None = None) -> CertPaths:
    """A fresh development certificate for localhost (by default in the directory
    :func:`_development_directory` picks)."""
    out = directory or _development_directory()
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    return generate(out, DEV_NAMES)
