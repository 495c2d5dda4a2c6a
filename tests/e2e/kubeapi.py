"""Run a real kube-apiserver (v1.20.2) and etcd on loopback for end-to-end tests.

The API server binary is built by ``.ci/build-kubernetes`` and cached outside
the repository; etcd comes from Debian's ``etcd-server``. There is no
controller-manager, scheduler or kubelet: objects are stored and admission
webhooks are called, but no Pod ever runs, and each namespace's ``default``
ServiceAccount has to be created by hand (see :meth:`KubeAPIServer.create_namespace`).

Usage::

    server = KubeAPIServer()
    server.start()                      # blocks until /readyz answers ok
    try:
        async with server.api_client() as api:
            ...
    finally:
        server.stop()

The same class runs the API server of ``tests/cluster`` inside a network
namespace: ``launcher`` prefixes each command (``nsenter ...``), ``serving``
brings a certificate with the node's addresses, ``tokens`` adds identities
(kubelet's), and ``in_network`` runs etcd's health check where
etcd listens.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support import free_port, unavailable
from webhook.pki import CertPaths

KUBE_VERSION = "v1.20.2"
DEFAULT_CACHE_DIR = "/var/cache/image-proxy-webhook"
ADMIN_TOKEN = "admin-token"
ADMISSION_PLUGINS = (
    "NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook"
)
_PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


class KubeAPIServerError(RuntimeError):
    """The API server or etcd could not be started."""


def default_binary_path() -> Path:
    """Where ``.ci/build-kubernetes`` leaves the binary (``$KUBE_APISERVER`` wins)."""
    explicit = os.environ.get("KUBE_APISERVER")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("KUBE_APISERVER_CACHE", DEFAULT_CACHE_DIR)
    return Path(cache) / f"kube-apiserver-{KUBE_VERSION}"


def find_binaries() -> tuple[Path, Path] | str:
    """Return ``(kube_apiserver, etcd)``, or a reason why they cannot be found."""
    apiserver = default_binary_path()
    if not (apiserver.is_file() and os.access(apiserver, os.X_OK)):
        return (
            f"kube-apiserver binary not found at {apiserver} "
            "(build it with .ci/build-kubernetes or set KUBE_APISERVER)"
        )
    etcd = shutil.which(os.environ.get("ETCD", "etcd"))
    if etcd is None:
        return "etcd not found on PATH (apt-get install etcd-server, or set ETCD)"
    return apiserver, Path(etcd)


def require_binaries() -> tuple[Path, Path]:
    """``(kube_apiserver, etcd)``; a missing one skips the test locally and fails it
    under CI (``CI=true``), because CI must build the API server first."""
    found = find_binaries()
    if isinstance(found, str):
        unavailable(f"e2e: {found}")
    return found


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the test process dies (Linux only)."""
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL what outlives ``timeout``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Processes:
    """Server processes started for a test, each logging to a file of its own;
    stopped newest first."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self._logs: list[IO[bytes]] = []

    def spawn(
        self, name: str, argv: Sequence[str], log: Path, *, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
        out = log.open("wb")
        self._logs.append(out)
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )
        self.started[name] = (process, log)
        return process

    def exited(self) -> str | None:
        """The first process that exited, with the tail of its log; None while all run."""
        for name, (process, log) in self.started.items():
            if process.poll() is not None:
                return (
                    f"{name} exited with status {process.returncode}\n"
                    f"--- tail of {log} ---\n{_tail(log)}"
                )
        return None

    def stop_one(self, name: str, timeout: float = 10) -> None:
        """SIGTERM one process (SIGKILL after ``timeout``); its log stays open."""
        process, _ = self.started.pop(name)
        _terminate(process, timeout)

    def tails(self) -> str:
        return "\n".join(f"--- tail of {log} ---\n{_tail(log)}" for _, log in self.started.values())

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM each process, newest first; SIGKILL what outlives ``timeout``."""
        for process, _ in reversed(list(self.started.values())):
            _terminate(process, timeout)
        self.started.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()


class KubeAPIServer:
    """A kube-apiserver plus its etcd, listening on free ports of 127.0.0.1.

    ``extra_args`` are appended to the API server's command line (a later flag
    overrides an earlier one, e.g. ``["--feature-gates=EphemeralContainers=false"]``).

    For a server inside a network namespace (``tests/cluster``): ``launcher`` is
    the command prefix that enters it; ``bind_address`` and ``advertise_address``
    its own addresses; ``port`` the secure port (``url`` stays 127.0.0.1:port,
    which the caller forwards); ``serving`` a certificate and its CA, used instead
    of a self-generated one; ``tokens`` more ``token -> (user, groups)`` lines;
    ``authorization_mode`` and ``admission_plugins`` replace the defaults (list
    flags add up when repeated); ``in_network`` runs a check where etcd
    listens; ``workdir`` is kept at stop.
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        etcd_binary: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 60.0,
        launcher: Sequence[str] = (),
        bind_address: str = "127.0.0.1",
        advertise_address: str = "127.0.0.1",
        port: int = 0,
        serving: CertPaths | None = None,
        tokens: Mapping[str, tuple[str, str]] | None = None,
        service_cluster_ip_range: str = "10.0.0.0/24",
        authorization_mode: str = "RBAC",
        admission_plugins: str = ADMISSION_PLUGINS,
        in_network: Callable[[Callable[[], None]], None] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.binary = Path(binary) if binary is not None else default_binary_path()
        self.etcd_binary = Path(etcd_binary or shutil.which("etcd") or "etcd")
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.launcher = list(launcher)
        self.bind_address = bind_address
        self.advertise_address = advertise_address
        self.serving = serving
        self.tokens = dict(tokens or {})
        self.service_cluster_ip_range = service_cluster_ip_range
        self.authorization_mode = authorization_mode
        self.admission_plugins = admission_plugins
        self.in_network = in_network
        self.given_workdir = workdir
        self.token = ADMIN_TOKEN
        self.host = "127.0.0.1"
        self.fixed_port = port
        self.port = port
        self.etcd_url = ""
        self.workdir: Path | None = None
        self.processes = Processes()

    # -- addresses and files -------------------------------------------------

    def _dir(self) -> Path:
        if self.workdir is None:
            raise KubeAPIServerError("the API server is not started")
        return self.workdir

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        """PEM of the CA that signed the API server's serving cert."""
        if self.serving is not None and self.serving.ca_file is not None:
            return self.serving.ca_file
        return self._dir() / "ca.crt"

    @property
    def service_account_key(self) -> Path:
        """The key that signs ServiceAccount tokens (the controller-manager's too)."""
        return self._dir() / "sa.key"

    @property
    def kubeconfig_path(self) -> Path:
        return self._dir() / "kubeconfig"

    @property
    def etcd_log(self) -> Path:
        return self._dir() / "etcd.log"

    @property
    def apiserver_log(self) -> Path:
        return self._dir() / "kube-apiserver.log"

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> KubeAPIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd and the API server; return once ``/readyz`` is ok.

        A port taken between picking it and binding it is retried on new ports.
        """
        if self.workdir is not None:
            raise KubeAPIServerError("already started")
        for attempt in range(3):
            try:
                self._start_once()
                return
            except KubeAPIServerError as exc:
                self.stop()
                if "address already in use" not in str(exc) or attempt == 2:
                    raise

    def _start_once(self) -> None:
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise KubeAPIServerError(f"kube-apiserver binary not found: {self.binary}")
        if self.given_workdir is not None:
            self.given_workdir.mkdir(parents=True, exist_ok=True)
            work = self.workdir = self.given_workdir
        else:
            work = self.workdir = Path(tempfile.mkdtemp(prefix="kubeapi-"))
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        self._start_etcd(work)
        if self.in_network is None:
            self._wait_etcd(deadline)
        else:
            self.in_network(lambda: self._wait_etcd(deadline))
        self._start_apiserver(work)
        self._wait_ready(deadline)
        self._write_kubeconfig()

    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        self.processes.spawn(name, [*self.launcher, *argv], log, cwd=self._dir())

    def _start_etcd(self, work: Path) -> None:
        client_url = f"http://127.0.0.1:{free_port()}"
        peer_url = f"http://127.0.0.1:{free_port()}"
        self.etcd_url = client_url
        self._spawn(
            "etcd",
            [
                str(self.etcd_binary),
                "--name=e2e",
                f"--data-dir={work / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--initial-cluster-state=new",
                "--log-level=warn",
            ],
            self.etcd_log,
        )

    def _start_apiserver(self, work: Path) -> None:
        lines = [f'{self.token},admin,uid-admin,"system:masters"']
        lines += [
            f'{token},{user},uid-{user},"{groups}"' for token, (user, groups) in self.tokens.items()
        ]
        (work / "tokens.csv").write_text("\n".join(lines) + "\n")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (work / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (work / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (work / "certs").mkdir(exist_ok=True)
        self.port = self.fixed_port or free_port()
        if self.serving is not None:
            tls = [
                f"--tls-cert-file={self.serving.cert_file}",
                f"--tls-private-key-file={self.serving.key_file}",
            ]
        else:
            tls = [f"--cert-dir={work / 'certs'}"]
        argv = [
            str(self.binary),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.bind_address}",
            f"--advertise-address={self.advertise_address}",
            f"--secure-port={self.port}",
            "--insecure-port=0",
            *tls,
            f"--token-auth-file={work / 'tokens.csv'}",
            f"--authorization-mode={self.authorization_mode}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={work / 'sa.pub'}",
            f"--service-account-signing-key-file={work / 'sa.key'}",
            f"--service-cluster-ip-range={self.service_cluster_ip_range}",
            f"--enable-admission-plugins={self.admission_plugins}",
            "--feature-gates=EphemeralContainers=true",
            "--allow-privileged=true",
            "--profiling=false",
            *self.extra_args,
        ]
        self._spawn("kube-apiserver", argv, self.apiserver_log)

    def _fail(self, reason: str) -> KubeAPIServerError:
        return KubeAPIServerError(f"{reason}\n{self.processes.tails()}")

    def _check_alive(self) -> None:
        exited = self.processes.exited()
        if exited is not None:
            raise KubeAPIServerError(exited)

    def _wait_etcd(self, deadline: float) -> None:
        while True:
            self._check_alive()
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp,
            ):
                if json.loads(resp.read()).get("health") == "true":
                    return
            if time.monotonic() > deadline:
                raise self._fail(f"etcd not healthy after {self.startup_timeout} s")
            time.sleep(0.1)

    def _extract_ca(self) -> bool:
        """Copy the CA out of the self-generated ``certs/apiserver.crt``.

        kube-apiserver writes that file as the serving cert followed by the
        self-signed CA that issued it (CN ``127.0.0.1-ca@<time>``).
        """
        if self.serving is not None:
            return True
        crt = self._dir() / "certs" / "apiserver.crt"
        try:
            certs = x509.load_pem_x509_certificates(crt.read_bytes())
        except (OSError, ValueError):
            return False  # not written yet, or written halfway
        for cert in certs:
            try:
                is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                continue
            if is_ca:
                self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
                return True
        raise self._fail(f"no CA certificate in {crt}")

    def _wait_ready(self, deadline: float) -> None:
        while not self._extract_ca():
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._fail("kube-apiserver wrote no serving certificate in time")
            time.sleep(0.1)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        last = ""
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(request, context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[-2000:].decode(errors='replace')}"
            except (OSError, ssl.SSLError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise self._fail(f"kube-apiserver not ready after {self.startup_timeout} s: {last}")
            time.sleep(0.2)

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig_path, token=self.token, user="admin")

    def write_kubeconfig(self, path: Path, *, token: str, user: str) -> None:
        """A kubeconfig for this server that authenticates with ``token``."""
        ca_data = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {"server": self.url, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
            "current-context": "e2e",
        }
        # JSON is YAML: kubectl, helm and kubernetes-asyncio all read it.
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)

    def restart_apiserver(self, down_seconds: float = 0.0) -> None:
        """Stop the API server alone (etcd keeps its data), leave it down for
        ``down_seconds``, and start it again on the same port; return once ``/readyz``
        is ok. Its clients see their connections and watches end, as on an upgrade."""
        work = self._dir()
        self.processes.stop_one("kube-apiserver")
        time.sleep(down_seconds)
        fixed, self.fixed_port = self.fixed_port, self.port
        try:
            self._start_apiserver(work)
        finally:
            self.fixed_port = fixed
        self._wait_ready(time.monotonic() + self.startup_timeout)

    def stop(self) -> None:
        """Stop the API server, then etcd, and remove the work directory.

        Set ``KUBEAPI_KEEP_WORKDIR=1`` to keep it (logs, certs, etcd data); a
        ``workdir`` given by the caller is always kept.
        """
        self.processes.stop()
        if self.workdir is not None:
            if os.environ.get("KUBEAPI_KEEP_WORKDIR") != "1" and self.given_workdir is None:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        atexit.unregister(self.stop)

    # -- API helpers (kubernetes-asyncio) -----------------------------------

    def client_configuration(self) -> k8s.Configuration:
        cfg = k8s.Configuration(
            host=self.url,
            api_key={"BearerToken": self.token},
            api_key_prefix={"BearerToken": "Bearer"},
        )
        cfg.ssl_ca_cert = str(self.ca_file)
        return cfg

    @contextlib.asynccontextmanager
    async def api_client(self) -> AsyncIterator[k8s.ApiClient]:
        """An authenticated ``kubernetes_asyncio`` ApiClient (as ``system:masters``)."""
        async with k8s.ApiClient(self.client_configuration()) as api:
            yield api

    async def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Create a namespace and its ``default`` ServiceAccount.

        There is no controller-manager to create the ServiceAccount, and the
        ServiceAccount admission plugin rejects Pods whose account is missing.
        Either object already existing is fine.
        """
        async with self.api_client() as api:
            core = k8s.CoreV1Api(api)
            namespace = k8s.V1Namespace(
                metadata=k8s.V1ObjectMeta(name=name, labels=dict(labels or {}))
            )
            await _create_ok_if_exists(core.create_namespace(namespace))
            await self.ensure_default_service_account(name, api=api)

    async def ensure_default_service_account(
        self, namespace: str, *, api: k8s.ApiClient | None = None
    ) -> None:
        """Create ``default`` ServiceAccount (``automountServiceAccountToken: false``)."""
        account = k8s.V1ServiceAccount(
            metadata=k8s.V1ObjectMeta(name="default", namespace=namespace),
            automount_service_account_token=False,
        )
        async with contextlib.AsyncExitStack() as stack:
            if api is None:
                api = await stack.enter_async_context(self.api_client())
            core = k8s.CoreV1Api(api)
            await _create_ok_if_exists(core.create_namespaced_service_account(namespace, account))


async def _create_ok_if_exists(call: Awaitable[object]) -> None:
    try:
        await call
    except ApiException as exc:
        if exc.status != 409:
            raise
