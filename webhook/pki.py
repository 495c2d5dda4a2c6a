"""Certificates: a CA in memory, the serving certificates it issues, the files they live in.

Used by the CLI (``certs``), by self-managed TLS (the CA and serving certificate kept
in a Secret) and, with no certificate configured, for a development pair for localhost.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEV_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class CertPaths:
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # set for generated development certificates


def not_after(cert_file: Path) -> float:
    """When the (first) certificate in the file expires, in Unix seconds."""
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return certificate.not_valid_after_utc.timestamp()


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


class DevelopmentCertificate:
    """A fresh development certificate for localhost, in ``directory`` or, by default,
    ``$TMPDIR/image-proxy-webhook-tls`` (where its CA is easy to find) for the first
    server on the machine and a private ``image-proxy-webhook-tls-*`` directory for
    any other: a second server, starting or failing to, never rewrites the files the
    first one serves and watches. The first holds a lock on the shared directory
    until it is closed."""

    def __init__(self, directory: Path | None = None) -> None:
        self._lock: int | None = None
        out = directory or self._directory()
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.paths = generate(out, DEV_NAMES)

    def _directory(self) -> Path:
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
                self._lock = fd
                return shared
        return Path(tempfile.mkdtemp(prefix="image-proxy-webhook-tls-"))

    def close(self) -> None:
        """Let another server have the shared directory."""
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def __enter__(self) -> DevelopmentCertificate:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
