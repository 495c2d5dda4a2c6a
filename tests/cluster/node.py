"""A real one-node Kubernetes v1.20.2 cluster inside a network namespace of its own.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
containerd (runc) and kubelet with bridge CNI, all started with ``nsenter`` into a
:class:`~tests.cluster.netns.NodeNamespace`. Every node, Pod and Service address
lives only in that namespace, which has no default route: nothing a test does can
reach an address outside the machine.

The root namespace reaches the API server on 127.0.0.1 only: a ``socat`` there
forwards 127.0.0.1:PORT to a UNIX socket, and a second ``socat`` inside joins the
socket to the namespace's own 127.0.0.1:PORT, where the API server listens. TLS
passes through, so one kubeconfig (``kubeconfig_path``) works on both sides, for
kubernetes-asyncio, helm and the node's own components.

Settings that matter on machines like CI's (Debian 12, cgroup v1, no
CAP_SYS_RESOURCE):
- containerd's ``restrict_oom_score_adj``: runc may not lower oom_score_adj here;
- a CNI configuration, or the node never becomes Ready;
- the controller-manager signs ServiceAccount tokens (1.20 admits no Pod without
  its ``default`` account's token Secret);
- kubelet gets a cgroup root of its own, and writes kernel.panic,
  kernel.panic_on_oops and vm.overcommit_memory whatever its flags say:
  :mod:`tests.cluster.hoststate` puts them back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.cluster import hoststate
from tests.cluster.images import pause_image
from tests.cluster.netns import NodeNamespace, command_line
from tests.e2e.kubeapi import (
    ADMISSION_PLUGINS,
    DEFAULT_CACHE_DIR,
    KUBE_VERSION,
    KubeAPIServer,
    Processes,
)
from tests.support import free_port
from webhook.pki import CertificateAuthority, CertPaths, write_file

NODE_NAME = "ipw-node"
NODE_ADDRESS = "10.87.0.1"
# Addresses handed to servers a test runs on the node (registries on port 80).
SERVER_ADDRESSES = tuple(f"10.87.0.{n}" for n in range(10, 30))
POD_CIDR = "10.88.0.0/24"
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
PAUSE_IMAGE = f"localhost/pause:{KUBE_VERSION}"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CNI_BIN_DIR = Path("/usr/lib/cni")
KUBE_BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "pause",
)
# Debian package of each system tool the node needs (for the skip message).
SYSTEM_TOOLS = {
    "etcd": "etcd-server",
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "socat": "socat",
    "skopeo": "skopeo",
    "docker-registry": "docker-registry",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "ip": "iproute2",
}
CNI_PLUGINS = ("bridge", "host-local", "loopback")


class ClusterError(RuntimeError):
    """The node could not be brought up or put away cleanly."""


def kube_binary_dir() -> Path:
    """Where .ci/build-kubernetes and .ci/install-helm cache their binaries."""
    return Path(os.environ.get("KUBE_APISERVER_CACHE", DEFAULT_CACHE_DIR))


def kube_binary(name: str) -> Path:
    return kube_binary_dir() / f"{name}-{KUBE_VERSION}"


def missing_piece() -> str | None:
    """Why the cluster cannot run here (a missing binary, tool or privilege), or None."""
    if os.geteuid() != 0:
        return "the cluster needs root (namespaces, mounts, cgroups)"
    for name in KUBE_BINARIES:
        path = kube_binary(name)
        if not os.access(path, os.X_OK):
            return f"{path} not found (build it with .ci/build-kubernetes)"
    for tool, package in SYSTEM_TOOLS.items():
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    for plugin in CNI_PLUGINS:
        if not os.access(CNI_BIN_DIR / plugin, os.X_OK):
            return (
                f"CNI plugin {CNI_BIN_DIR / plugin} missing "
                "(apt-get install containernetworking-plugins)"
            )
    return None


@dataclass
class Timings:
    """Seconds, measured by the cluster itself."""

    bring_up: float = 0.0  # start() called -> node Ready
    teardown: float = 0.0
    teardown_steps: dict[str, float] = field(default_factory=dict)
    rss_ready_mib: float = 0.0  # every process of the cluster, at node Ready
    rss_end_mib: float = 0.0  # the same, before teardown (with what the tests left running)


@dataclass
class Cluster:
    """One node: control plane, containerd and kubelet in a namespace under ``directory``."""

    directory: Path
    startup_timeout: float = 120.0
    timings: Timings = field(default_factory=Timings)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.cgroup_root = f"ipw-node-{os.getpid()}"
        self.namespace = NodeNamespace(
            self.directory / "node",
            addresses=(NODE_ADDRESS, *SERVER_ADDRESSES),
            routes=(SERVICE_CIDR,),
        )
        self.apiserver: KubeAPIServer | None = None
        self.forward = Processes()  # the socat pair
        self.control = Processes()  # controller-manager, scheduler
        self.node = Processes()  # containerd, kubelet, kube-proxy
        self.sysctls = hoststate.SysctlRecord()
        self.restored_sysctls: dict[str, tuple[str, str]] = {}
        self.last_node = True  # no other session's node still running at teardown
        self.logs = self.directory / "logs"
        self.config = self.directory / "config"
        self.hosts_dir = self.config / "certs.d"  # containerd's per-registry hosts.toml
        self._free_addresses = list(SERVER_ADDRESSES)
        self._started = False

    # --- files ---------------------------------------------------------------

    @property
    def kubeconfig_path(self) -> Path:
        """Admin kubeconfig for https://127.0.0.1:PORT: works in the root namespace and inside."""
        return self._api().kubeconfig_path

    @property
    def ca_file(self) -> Path:
        return self.config / "ca.crt"

    def _api(self) -> KubeAPIServer:
        if self.apiserver is None:
            raise ClusterError("the cluster is not started")
        return self.apiserver

    # --- bring-up --------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        deadline = began + self.startup_timeout
        for directory in (self.logs, self.config, self.hosts_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.sysctls.join()
        self._started = True
        self.namespace.create()
        default_route = self.namespace.run(["ip", "route", "show", "default"]).strip()
        if default_route:
            raise ClusterError(f"the node's namespace has a default route: {default_route}")
        serving = self._write_certificates()
        port = free_port()
        self._start_forward(port)
        self.apiserver = KubeAPIServer(
            binary=kube_binary("kube-apiserver"),
            launcher=self.namespace.enter(),
            bind_address="0.0.0.0",
            advertise_address=NODE_ADDRESS,
            port=port,
            serving=serving,
            tokens={
                "kubelet-token": (f"system:node:{NODE_NAME}", "system:nodes"),
            },
            service_cluster_ip_range=SERVICE_CIDR,
            in_network=self.namespace.call,
            workdir=self.directory / "apiserver",
            startup_timeout=self.startup_timeout,
            authorization_mode="Node,RBAC",
            admission_plugins=f"{ADMISSION_PLUGINS},NodeRestriction",
            extra_args=[
                f"--client-ca-file={self.ca_file}",
                "--kubelet-preferred-address-types=InternalIP",
                # webhook Services are called at their endpoints' Pod IPs
                "--enable-aggregator-routing=true",
            ],
        )
        self.apiserver.start()
        self.apiserver.write_kubeconfig(
            self.config / "kubelet.kubeconfig",
            token="kubelet-token",
            user=f"system:node:{NODE_NAME}",
        )
        self._start_control_plane()
        self._start_containerd(deadline)
        self._start_kubelet()
        self._start_kube_proxy()
        self._wait_node_ready(deadline)
        self.timings.bring_up = time.monotonic() - began
        self.timings.rss_ready_mib = self.node_rss()

    def _write_certificates(self) -> CertPaths:
        ca = CertificateAuthority("image-proxy-webhook test cluster CA", days=2)
        write_file(self.ca_file, ca.pem)
        cert, key = ca.issue(
            (
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
                "127.0.0.1",
                NODE_ADDRESS,
                KUBERNETES_SERVICE_IP,
            )
        )
        serving = CertPaths(
            self.config / "apiserver.crt", self.config / "apiserver.key", self.ca_file
        )
        write_file(serving.cert_file, cert)
        write_file(serving.key_file, key, private=True)
        return serving

    def _start_forward(self, port: int) -> None:
        """127.0.0.1:port in the root namespace -> UNIX socket -> 127.0.0.1:port inside."""
        socket_path = self.directory / "apiserver.sock"
        self.forward.spawn(
            "socat (inside)",
            [
                *self.namespace.enter(mount=False),
                "socat",
                f"UNIX-LISTEN:{socket_path},fork,unlink-early,mode=600",
                f"TCP:127.0.0.1:{port}",
            ],
            self.logs / "socat-inside.log",
        )
        self.forward.spawn(
            "socat (root namespace)",
            [
                "socat",
                f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                f"UNIX-CONNECT:{socket_path}",
            ],
            self.logs / "socat-root.log",
        )

    def _start_control_plane(self) -> None:
        api = self._api()
        kubeconfig = str(api.kubeconfig_path)
        self.control.spawn(
            "kube-controller-manager",
            [
                *self.namespace.enter(),
                str(kube_binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                f"--service-account-private-key-file={api.service_account_key}",
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-route,-service",
                "--node-monitor-period=2s",
                "--profiling=false",
            ],
            self.logs / "kube-controller-manager.log",
        )
        self.control.spawn(
            "kube-scheduler",
            [
                *self.namespace.enter(),
                str(kube_binary("kube-scheduler")),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                "--profiling=false",
            ],
            self.logs / "kube-scheduler.log",
        )

    def _start_containerd(self, deadline: float) -> None:
        cni_conf = self.config / "net.d"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-ipw.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "ipw",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                # Pods route through the node, which routes nothing out.
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        }
                    ],
                },
                indent=2,
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = self.config / "containerd.toml"
        config.write_text(
            f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{CONTAINERD_SOCKET}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Nothing may lower oom_score_adj without CAP_SYS_RESOURCE (runc fails otherwise).
  restrict_oom_score_adj = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf}"
[{cri}.registry]
  config_path = "{self.hosts_dir}"
"""
        )
        self.node.spawn(
            "containerd",
            [*self.namespace.enter(), "containerd", f"--config={config}"],
            self.logs / "containerd.log",
        )
        while True:
            exited = self.node.exited()
            if exited:
                raise ClusterError(exited)
            with contextlib.suppress(Exception):
                self.namespace.run(["ctr", "--address", CONTAINERD_SOCKET, "version"], timeout=5)
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"containerd did not answer\n{self.node.tails()}")
            time.sleep(0.1)
        archive = self.config / "pause.tar"
        pause_image(archive, name=PAUSE_IMAGE, pause_binary=kube_binary("pause"))
        self.import_image(archive)

    def import_image(self, archive: Path) -> None:
        """Load an OCI archive straight into the node's image store (no registry)."""
        self.namespace.run(
            [
                "ctr",
                "--address",
                CONTAINERD_SOCKET,
                "-n",
                "k8s.io",
                "images",
                "import",
                str(archive),
            ]
        )

    def _start_kubelet(self) -> None:
        # kubelet refuses a cgroup root that does not exist; cpuset needs its CPUs set.
        for hierarchy in hoststate.CGROUP_FS.iterdir():
            if (hierarchy / "cgroup.procs").exists():
                own = hierarchy / self.cgroup_root
                own.mkdir(exist_ok=True)
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if (hierarchy / name).exists():
                        (own / name).write_text((hierarchy / name).read_text())
        resolv = self.config / "resolv.conf"
        resolv.write_text("")  # Pods have no DNS here, and must not inherit the host's
        config = self.config / "kubelet.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": NODE_ADDRESS,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": f"/{self.cgroup_root}",
                    "failSwapOn": False,
                    "makeIPTablesUtilChains": False,
                    "resolvConf": str(resolv),
                    # Only the API server's tokens are accepted; it holds no client
                    # certificate, so logs are read from the node's files
                    # (container_log), not through the API.
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                    },
                    "authorization": {"mode": "Webhook"},
                    "nodeStatusUpdateFrequency": "2s",
                    "serializeImagePulls": False,
                    "evictionHard": {
                        "memory.available": "1Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                }
            )
        )
        self.node.spawn(
            "kubelet",
            [
                *self.namespace.enter(),
                str(kube_binary("kubelet")),
                f"--config={config}",
                f"--kubeconfig={self.config / 'kubelet.kubeconfig'}",
                "--container-runtime=remote",
                f"--container-runtime-endpoint=unix://{CONTAINERD_SOCKET}",
                f"--node-ip={NODE_ADDRESS}",
                f"--hostname-override={NODE_NAME}",
                "--v=1",
            ],
            self.logs / "kubelet.log",
        )

    def _start_kube_proxy(self) -> None:
        config = self.config / "kube-proxy.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(self._api().kubeconfig_path)},
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE_NAME,
                    # nf_conntrack_max is read-only in a child namespace: leave it.
                    "conntrack": {
                        "maxPerCore": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                }
            )
        )
        self.node.spawn(
            "kube-proxy",
            [
                *self.namespace.enter(),
                str(kube_binary("kube-proxy")),
                f"--config={config}",
            ],
            self.logs / "kube-proxy.log",
        )

    def _wait_node_ready(self, deadline: float) -> None:
        last = "no answer"
        while True:
            for group in (self.node, self.control, self.forward):
                exited = group.exited()
                if exited:
                    raise ClusterError(exited)
            try:
                node = self.get(f"/api/v1/nodes/{NODE_NAME}")
                conditions = {c["type"]: c for c in node.get("status", {}).get("conditions", [])}
                ready = conditions.get("Ready", {})
                if ready.get("status") == "True":
                    return
                last = f"Ready={ready.get('status')}: {ready.get('message')}"
            except (OSError, ValueError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise ClusterError(f"node not Ready in time ({last})\n{self.node.tails()}")
            time.sleep(0.25)

    def get(self, path: str) -> dict[str, Any]:
        """GET an API path as admin, synchronously (for bring-up and checks)."""
        api = self._api()
        request = urllib.request.Request(
            api.url + path, headers={"Authorization": f"Bearer {api.token}"}
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    # --- teardown --------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything and put the host back as it was; raise if something is left.

        Every step runs even when an earlier one failed: what failed is reported.
        """
        if not self._started:
            return
        self.timings.rss_end_mib = self.node_rss()
        began = time.monotonic()
        problems: list[str] = []
        inside: list[str] = []

        def step(what: str, action: Callable[[], object]) -> None:
            started = time.monotonic()
            try:
                action()
            except Exception as exc:
                problems.append(f"{what}: {exc!r}")
            self.timings.teardown_steps[what] = time.monotonic() - started

        # kubelet first, so nothing restarts what the next steps kill.
        step("stopping the node", lambda: self.node.stop(timeout=5))
        step("the Pods' cgroups", lambda: hoststate.remove_cgroup(self.cgroup_root))
        step("stopping the controllers", lambda: self.control.stop(timeout=5))
        if self.apiserver is not None:
            step("stopping the API server", self.apiserver.stop)
        step("stopping the forward", lambda: self.forward.stop(timeout=5))
        # containerd's shims outlive it by design; anything else is a leak.
        step("the namespace", lambda: inside.extend(self.namespace.destroy()))

        def restore_sysctls() -> None:
            self.restored_sysctls, self.last_node = self.sysctls.leave()

        step("the sysctls", restore_sysctls)
        step("checking the host", lambda: problems.extend(self.leftovers()))
        problems += [f"still inside the namespace: {line}" for line in inside if "shim" not in line]
        step("removing scratch", lambda: shutil.rmtree(self.namespace.scratch, ignore_errors=True))
        self._started = False
        self.timings.teardown = time.monotonic() - began
        if problems:
            raise ClusterError("teardown left the host changed:\n" + "\n".join(problems))

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's output, read from kubelet's files (the API server has no
        client certificate for kubelet's log endpoint)."""
        pods = self.namespace.scratch / "var-log" / "pods"
        logs = sorted(pods.glob(f"{namespace}_{pod}_*/{container}/*.log"))
        return "".join(path.read_text(errors="replace") for path in logs)

    def leftovers(self) -> list[str]:
        """What the node left on the host: changed sysctls, processes, mounts, cgroups."""
        found = []
        if self.last_node:
            still = hoststate.changed(self.sysctls.before, hoststate.writable_sysctls())
            if still:
                found.append(f"sysctls differ from before the node: {still}")
        mark = str(self.directory)
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and mark in command_line(int(entry)):
                found.append(f"process {entry} still runs: {command_line(int(entry))}")
        with open("/proc/self/mountinfo") as mounts:
            found += [f"mount left: {line.split()[4]}" for line in mounts if mark in line]
        found += [f"cgroup left: {d}" for d in hoststate.cgroup_dirs(self.cgroup_root)]
        return found

    # --- measurements ------------------------------------------------------------

    def node_rss(self) -> float:
        """MiB resident in every process of the cluster (control plane, node, Pods)."""
        pids = set(self.namespace.members()) | hoststate.cgroup_pids(
            hoststate.cgroup_dirs(self.cgroup_root)
        )
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    # --- for tests ---------------------------------------------------------------

    def take_address(self) -> str:
        """A node address of its own for a server a test runs inside the namespace."""
        if not self._free_addresses:
            raise ClusterError("no server address left in the node's namespace")
        return self._free_addresses.pop(0)

    def write_hosts_toml(
        self, host: str, *, scheme: str = "http", ca_file: Path | None = None
    ) -> None:
        """Tell containerd how to reach registry ``host`` (plain HTTP, or TLS with a CA)."""
        directory = self.hosts_dir / host
        directory.mkdir(parents=True, exist_ok=True)
        ca = f'\n  ca = "{ca_file}"' if ca_file is not None else ""
        (directory / "hosts.toml").write_text(
            f'server = "{scheme}://{host}"\n\n'
            f'[host."{scheme}://{host}"]\n'
            f'  capabilities = ["pull", "resolve"]{ca}\n'
        )

    @contextlib.asynccontextmanager
    async def api_client(self) -> AsyncIterator[k8s.ApiClient]:
        async with self._api().api_client() as api:
            yield api

    def helm_env(self) -> dict[str, str]:
        """Environment for a real ``helm`` run against this cluster from the root namespace."""
        home = self.directory / "helm"
        env = {
            k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")
        }
        env.update(
            KUBECONFIG=str(self.kubeconfig_path),
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_DATA_HOME=str(home / "data"),
        )
        return env


@contextlib.contextmanager
def running_cluster(directory: Path) -> Iterator[Cluster]:
    cluster = Cluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
