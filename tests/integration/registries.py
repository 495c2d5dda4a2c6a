"""Real CNCF distribution registries (Debian ``docker-registry``) for tests.

Plain classes with start()/stop() (and ``with`` support), so any suite can use
them; ``tests/integration/conftest.py`` wraps them in thin pytest fixtures.

- :class:`Registry`: one ``docker-registry serve`` process on loopback, anonymous,
  htpasswd (Basic) or token auth, plain HTTP or TLS. Bound to port 80 (or 443
  with TLS) of its own loopback address when running as root, so images can be
  named without a port (``127.77.3.9/team/app:v1``); elsewhere on a free port.
  :meth:`Registry.requests` reads the registry's own access log,
  :meth:`Registry.user_names` the user names its log lines name,
  :meth:`Registry.served` each request with its host, user agent and user.
- :class:`TokenServer`: a Docker-style token endpoint (aiohttp, in a thread of
  its own) issuing RS256 JWTs with an ``x5c`` header; anonymous callers get
  ``pull`` only on the repositories matching ``public``.
- :class:`TestCA`: a throwaway CA issuing serving certificates.
- :meth:`Registry.push_image` / :meth:`Registry.push_index`: push a small Docker
  v2 image, or an OCI image index with its child manifest, over the registry
  HTTP API (no Docker, no skopeo).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import fnmatch
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import can_bind_low_ports, free_loopback_address, unavailable
from tests.support import free_port as free_port  # also imported from here
from webhook.pki import CertificateAuthority

REGISTRY_BINARY = "docker-registry"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ALL_MANIFESTS = ", ".join(
    (OCI_INDEX, OCI_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json",
     DOCKER_MANIFEST)
)  # fmt: skip


class RegistryError(RuntimeError):
    pass


def registry_binary() -> str | None:
    """The docker-registry binary, or None when it is not installed."""
    return shutil.which(REGISTRY_BINARY) or (
        "/usr/bin/docker-registry" if os.access("/usr/bin/docker-registry", os.X_OK) else None
    )


def require_binary(name: str, package: str) -> str:
    """A system tool's path; otherwise skip the test (fail it when CI=true, where
    nothing may skip)."""
    binary = shutil.which(name) or (
        f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None
    )
    if binary is None:
        unavailable(f"{name} is not installed: apt-get install -y {package}")
    return binary


def require_registry_binary() -> str:
    """The CNCF distribution registry (Debian's docker-registry)."""
    return require_binary(REGISTRY_BINARY, "docker-registry")


# --- addresses -----------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate a server process we started (kill it after 5 s) and reap it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _wait_for_port(host: str, port: int, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RegistryError(f"server on {host}:{port} exited during start")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RegistryError(f"nothing listening on {host}:{port} after {timeout}s")


# --- TLS ---------------------------------------------------------------------------


class TestCA:
    """A throwaway certificate authority; :meth:`issue` writes a serving cert and key."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "image-proxy-webhook test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ca = CertificateAuthority(name, days=2)
        self.cert_file = self.directory / "ca.pem"
        self.cert_file.write_bytes(self._ca.pem)

    def issue(self, name: str, hosts: Iterable[str]) -> tuple[Path, Path]:
        """A serving certificate for these host names / IP addresses: (cert, key) files."""
        cert, key = self._ca.issue(tuple(hosts), days=1)
        cert_file = self.directory / f"{name}.pem"
        key_file = self.directory / f"{name}-key.pem"
        cert_file.write_bytes(cert)
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        return cert_file, key_file

    def client_context(self) -> ssl.SSLContext:
        """An SSLContext that trusts this CA (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.cert_file))


# --- token server ----------------------------------------------------------------


@dataclass
class TokenRequest:
    scopes: tuple[str, ...]
    service: str
    user: str  # "" for anonymous
    granted: tuple[dict[str, Any], ...]


class TokenServer:
    """A Docker-style token endpoint for a ``token``-auth registry.

    Anonymous callers get ``pull`` on repositories matching one of ``public``
    (globs) and nothing elsewhere (still a 200 with a token, as Docker Hub does),
    unless ``anonymous_denied_status`` makes it refuse them outright. Basic
    credentials from ``users`` get every action they ask for (for pushing).
    """

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        public: Iterable[str] = (),
        users: dict[str, str] | None = None,
        service: str = "test-registry",
        issuer: str = "test-issuer",
        expires_in: int = 300,
        anonymous_denied_status: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.public = tuple(public)
        self.users = dict(users or {})
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.anonymous_denied_status = anonymous_denied_status
        self.requests: list[TokenRequest] = []
        self.cert_file = self.directory / "token-cert.pem"
        self._key_pem, self._x5c = self._make_signing_key()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def realm(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    def _make_signing_key(self) -> tuple[bytes, str]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(key, hashes.SHA256())
        )
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        return key_pem, x5c

    def _user(self, authorization: str | None) -> str | None:
        """The user name for valid Basic credentials, "" for none, None for bad ones."""
        if not authorization:
            return ""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        return user if self.users.get(user) == password else None

    def _grant(self, scopes: Iterable[str], user: str) -> list[dict[str, Any]]:
        access: list[dict[str, Any]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = [a for a in actions.split(",") if a]
            if user:
                allowed = wanted
            elif any(fnmatch.fnmatchcase(name, p) for p in self.public):
                allowed = [a for a in wanted if a == "pull"]
            else:
                allowed = []
            access.append({"type": "repository", "name": name, "actions": allowed})
        return access

    def issue(self, scopes: Iterable[str], user: str = "") -> str:
        import jwt

        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": self._grant(scopes, user),
        }
        return jwt.encode(claims, self._key_pem, algorithm="RS256", headers={"x5c": [self._x5c]})

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        user = self._user(request.headers.get("Authorization"))
        if user is None:
            return web.json_response({"details": "bad credentials"}, status=401)
        scopes = tuple(s for value in request.query.getall("scope", []) for s in value.split())
        access = self._grant(scopes, user)
        self.requests.append(
            TokenRequest(scopes, request.query.get("service", ""), user, tuple(access))
        )
        if (
            not user
            and self.anonymous_denied_status is not None
            and not all(a["actions"] for a in access)
        ):
            return web.json_response(
                {"details": "access denied"}, status=self.anonymous_denied_status
            )
        token = self.issue(scopes, user)
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
            }
        )

    def _run(self) -> None:
        from aiohttp import web

        async def main() -> None:
            app = web.Application()
            app.router.add_get("/token", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
                self._stop = asyncio.Event()
                self._started.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()

        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._started.set()
        finally:
            loop.close()

    def start(self) -> TokenServer:
        self._thread = threading.Thread(target=self._run, name="token-server", daemon=True)
        self._thread.start()
        if not self._started.wait(10) or self._error is not None:
            raise RegistryError(f"token server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- registry ---------------------------------------------------------------------

# The combined log format: ... "METHOD URI PROTO" status size "referer" "user agent"
_ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
    r'\S+ "(?:[^"\\]|\\.)*" "(?P<agent>(?:[^"\\]|\\.)*)"'
)


# logrus quotes a field value only when it holds other than [A-Za-z0-9-._/@^+].
_USER_NAME = re.compile(
    r'auth\.user\.name=(?:"((?:[^"\\]|\\.)*)"|([^\s"]+))'
    r'|error authenticating user \\"((?:[^"\\]|\\.)*?)\\"'
)


# One ``key=value`` field of a logrus text line; quoted values escape ``"`` and ``\\``.
_LOG_FIELD = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')


@dataclass(frozen=True)
class AccessLogEntry:
    method: str
    uri: str
    status: int
    user_agent: str = ""


@dataclass(frozen=True)
class ServedRequest:
    """One request as the registry's own log tells it (``log_level`` "debug" for ``user``)."""

    method: str
    uri: str
    host: str  # the Host header: the name the client asked for
    user_agent: str
    user: str  # "" when no line of the request names one (anonymous, or not at debug)
    status: int  # 0 when no line gives it (a challenged request): see ``requests()``


@dataclass
class Pushed:
    """What a push wrote: the tag's manifest digest and media type."""

    repository: str
    tag: str
    digest: str
    media_type: str
    children: tuple[str, ...] = ()


@dataclass
class Registry:
    """One ``docker-registry serve`` process.

    ``auth``: "none", "htpasswd" (``users``) or "token" (``token_server``).
    ``tls``: a TestCA to serve HTTPS with a certificate it issues.
    ``host``/``port``: default to a loopback address of its own on port 80
    (443 with TLS) when running as root, else 127.0.0.1 and a free port.
    ``log_level``: "debug" names the user of every authorized request in the
    log; at "info" only refused and failed requests name one.
    """

    directory: Path
    auth: str = "none"
    users: dict[str, str] = field(default_factory=dict)
    token_server: TokenServer | None = None
    tls: TestCA | None = None
    host: str = ""
    port: int = 0
    realm: str = "test-registry"
    token_realm: str = ""  # overrides the token server's realm URL in the challenge
    binary: str | None = None
    log_level: str = "info"
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _client_ssl: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if self.auth not in ("none", "htpasswd", "token"):
            raise ValueError(f"unknown auth {self.auth!r}")
        if self.auth == "token" and self.token_server is None:
            raise ValueError("auth=token needs a token_server")
        default_port = 443 if self.tls else 80
        if not self.host:
            if can_bind_low_ports():
                self.host = free_loopback_address(self.port or default_port)
                self.port = self.port or default_port
            else:
                self.host = "127.0.0.1"
        if not self.port:
            self.port = free_port(self.host)
        if self.tls is not None:
            self._client_ssl = self.tls.client_context()

    # --- naming -----------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def domain(self) -> str:
        """The registry as written in an image reference (no port when it is the default)."""
        default = 443 if self.tls else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def image(self, repository: str, tag: str = "v1") -> str:
        return f"{self.domain}/{repository}:{tag}"

    @property
    def log_file(self) -> Path:
        return self.directory / "registry.log"

    # --- lifecycle --------------------------------------------------------

    def _config(self) -> str:
        storage = self.directory / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            f"log: {{level: {self.log_level}, formatter: text, accesslog: {{disabled: false}}}}",
            f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}",
        ]
        http = f"addr: '{self.host}:{self.port}', secret: {uuid.uuid4().hex}"
        if self.tls is not None:
            cert, key = self.tls.issue(
                f"registry-{self.host}-{self.port}", [self.host, "localhost"]
            )
            http += f", tls: {{certificate: {cert}, key: {key}}}"
        lines.append(f"http: {{{http}}}")
        if self.auth == "htpasswd":
            htpasswd = self.directory / "htpasswd"
            htpasswd.write_text("".join(_htpasswd_line(u, p) for u, p in self.users.items()))
            lines.append(f"auth: {{htpasswd: {{realm: {self.realm}, path: {htpasswd}}}}}")
        elif self.auth == "token":
            ts = self.token_server
            assert ts is not None
            lines.append(
                f"auth: {{token: {{realm: '{self.token_realm or ts.realm}', "
                f"service: {ts.service}, "
                f"issuer: {ts.issuer}, rootcertbundle: {ts.cert_file}}}}}"
            )
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> Registry:
        binary = self.binary or registry_binary()
        if binary is None:
            raise RegistryError("docker-registry is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "config.yml"
        config.write_text(self._config())
        log = self.log_file.open("ab")
        try:
            self._process = subprocess.Popen(
                [binary, "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            _wait_for_port(
                self.host, self.port, timeout, alive=lambda: self._process.poll() is None
            )
            self._wait_ready(timeout)
        except Exception as exc:
            self.stop()
            raise RegistryError(
                f"registry on {self.url} did not start: {exc}\n{self.log_tail()}"
            ) from exc
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, _, _ = self.http("GET", "/v2/", authenticate=False)
                if status in (200, 401):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RegistryError("GET /v2/ never answered 200 or 401")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- the registry's own view --------------------------------------------

    def requests(self) -> list[AccessLogEntry]:
        """Every request in the registry's access log, oldest first."""
        entries = []
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return []
        for line in text.splitlines():
            match = _ACCESS_LINE.match(line)
            if match:
                entries.append(
                    AccessLogEntry(
                        match["method"],
                        match["uri"],
                        int(match["status"]),
                        re.sub(r"\\(.)", r"\1", match["agent"]),
                    )
                )
        return entries

    def user_names(self) -> set[str]:
        """Every user name the registry's log names: authorized, refused or failed.

        Distribution's text log carries an authenticated request's user as the
        field ``auth.user.name`` and a refused one in the message ``error
        authenticating user "<name>"``.
        """
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return set()
        return {
            next(group for group in match.groups() if group is not None)
            for match in _USER_NAME.finditer(text)
        }

    def served(self) -> list[ServedRequest]:
        """Every request in the registry's log, in the order they began.

        Distribution tags each line of a request with ``http.request.id`` and the
        request's fields; at debug level the lines after authorization carry
        ``auth.user.name`` too, and its "response completed" line the status.
        """
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return []
        fields_by_id: dict[str, dict[str, str]] = {}
        for line in text.splitlines():
            fields = {
                key: re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith('"') else value
                for key, value in _LOG_FIELD.findall(line)
            }
            request_id = fields.get("http.request.id")
            if request_id:
                fields_by_id.setdefault(request_id, {}).update(fields)
        return [
            ServedRequest(
                method=f.get("http.request.method", ""),
                uri=f.get("http.request.uri", ""),
                host=f.get("http.request.host", ""),
                user_agent=f.get("http.request.useragent", ""),
                user=f.get("auth.user.name", ""),
                status=int(f.get("http.response.status", "0")),
            )
            for f in fields_by_id.values()
        ]

    def manifest_requests(
        self, repository: str, reference: str | None = None
    ) -> list[AccessLogEntry]:
        prefix = f"/v2/{repository}/manifests/"
        return [
            e
            for e in self.requests()
            if e.uri.startswith(prefix) and (reference is None or e.uri == prefix + reference)
        ]

    # --- a small HTTP client (stdlib, synchronous) ----------------------------

    def http(
        self,
        method: str,
        path_or_url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        authenticate: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request as the pushing user; answers a 401 challenge once when asked to."""
        url = urllib.parse.urljoin(self.url, path_or_url)
        headers = dict(headers or {})
        status, answer, data = _urlopen(method, url, body, headers, self._client_ssl)
        if status == 401 and authenticate:
            headers["Authorization"] = self._authorization(answer.get("www-authenticate", ""))
            status, answer, data = _urlopen(method, url, body, headers, self._client_ssl)
        return status, answer, data

    def _authorization(self, challenge: str) -> str:
        user, password = next(iter(self.users.items()), ("", ""))
        if challenge.lower().startswith("basic"):
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = urllib.parse.urlencode(
            {"service": params.get("service", ""), "scope": params.get("scope", "")}
        )
        basic = {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }
        status, _, data = _urlopen("GET", f"{params['realm']}?{query}", None, basic, None)
        if status != 200:
            raise RegistryError(f"token server answered {status} for {params}")
        return "Bearer " + str(json.loads(data)["token"])

    # --- pushing ------------------------------------------------------------

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, _, _ = self.http("HEAD", f"/v2/{repository}/blobs/{digest}")
        if status == 200:
            return digest
        status, headers, body = self.http("POST", f"/v2/{repository}/blobs/uploads/", b"")
        if status != 202:
            raise RegistryError(f"starting an upload to {repository}: {status} {body[:200]!r}")
        location = urllib.parse.urljoin(self.url, headers["location"])
        separator = "&" if "?" in location else "?"
        status, _, body = self.http(
            "PUT",
            f"{location}{separator}digest={digest}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        if status != 201:
            raise RegistryError(f"uploading a blob to {repository}: {status} {body[:200]!r}")
        return digest

    def push_manifest(self, repository: str, reference: str, manifest: dict[str, Any]) -> str:
        data = json.dumps(manifest, separators=(",", ":")).encode()
        status, _, body = self.http(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            data,
            {"Content-Type": manifest["mediaType"]},
        )
        if status != 201:
            raise RegistryError(
                f"pushing manifest {repository}:{reference}: {status} {body[:300]!r}"
            )
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def _image_manifest(self, repository: str, *, oci: bool) -> tuple[dict[str, Any], bytes]:
        layer, diff_id = _layer(f"{repository}\n".encode())
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/hello"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            },
            separators=(",", ":"),
        ).encode()
        layer_digest = self.push_blob(repository, layer)
        config_digest = self.push_blob(repository, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "size": len(config),
                "digest": config_digest,
            },
            "layers": [
                {
                    "mediaType": OCI_LAYER if oci else DOCKER_LAYER,
                    "size": len(layer),
                    "digest": layer_digest,
                }
            ],
        }
        return manifest, config

    def push_image(self, repository: str, tag: str = "v1") -> Pushed:
        """A one-layer Docker v2 (schema 2) image."""
        manifest, _ = self._image_manifest(repository, oci=False)
        digest = self.push_manifest(repository, tag, manifest)
        return Pushed(repository, tag, digest, DOCKER_MANIFEST)

    def push_index(self, repository: str, tag: str = "v1") -> Pushed:
        """An OCI image index pointing at one OCI image manifest (linux/amd64)."""
        manifest, _ = self._image_manifest(repository, oci=True)
        child = self.push_manifest(repository, _digest_tag(manifest), manifest)
        size = len(json.dumps(manifest, separators=(",", ":")).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "size": size,
                    "digest": child,
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
        digest = self.push_manifest(repository, tag, index)
        return Pushed(repository, tag, digest, OCI_INDEX, (child,))


def _digest_tag(manifest: dict[str, Any]) -> str:
    return (
        "sha256:" + hashlib.sha256(json.dumps(manifest, separators=(",", ":")).encode()).hexdigest()
    )


def _layer(content: bytes) -> tuple[bytes, str]:
    """A gzipped tar holding one file: (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def _htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}\n"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _urlopen(
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    context: ssl.SSLContext | None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _NoRedirect, urllib.request.ProxyHandler({})
    )
    try:
        with opener.open(request, timeout=10) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as error:
        with error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()
