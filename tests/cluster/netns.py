"""A network namespace and a private mount namespace for a test cluster's node.

Test traffic must never leave the machine: every node, Pod, Service and registry
address lives inside a network namespace the tests create, which has routes for
its own ranges only and no default route. The namespace is kept as a file
(``unshare --net=FILE``), so it outlives the command that made it and processes
join it with ``nsenter --net=FILE --mount=FILE`` (not ``ip netns exec``, which
remounts /sys and leaves /sys/fs/cgroup empty for kubelet).

The private mount namespace binds scratch directories over /var/lib, /var/log and
/usr/libexec and a tmpfs over /run: what kubelet, containerd, CNI and iptables
create there whatever their flags say stays out of the host, and teardown never
has to delete a shared host path. It also binds a hosts file of its own over
/etc/hosts: there is no DNS server in the namespace, so a name a test gives a
server (:meth:`NodeNamespace.add_host_name`) resolves there and nowhere else.

Python code joins the network namespace through :meth:`NodeNamespace.call`: a
thread of its own that ``setns``-ed into it, so sockets it opens, and processes it
starts, live in the namespace (a network namespace is per thread).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
# Host paths the node's tools write to whatever their flags say, hidden behind
# scratch directories inside the mount namespace (and /run behind a tmpfs).
SCRATCH_OVER = ("/var/lib", "/var/log", "/usr/libexec")


class NamespaceError(RuntimeError):
    """The namespace could not be made, joined or removed."""


def _run(argv: Sequence[str], *, input_text: str | None = None) -> str:
    result = subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise NamespaceError(
            f"{shlex.join(argv)} exited with {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


def _setns(path: Path) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NamespaceError(f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def namespace_inode(pid: int | str, kind: str) -> int | None:
    """The inode of a process's ``kind`` namespace (net, mnt), None once it is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


class NodeNamespace:
    """A network namespace plus a private mount namespace, both kept as files.

    ``addresses`` are /32s put on the namespace's own ``lo`` (this kernel has no
    ``dummy`` driver, and kubelet accepts a node address there); ``routes`` are
    extra prefixes routed to ``lo`` (the Service range: a connect to a ClusterIP
    needs a route before kube-proxy's NAT rewrites it). Nothing else is routed.
    """

    def __init__(
        self, directory: Path, *, addresses: Iterable[str], routes: Iterable[str] = ()
    ) -> None:
        self.directory = Path(directory)
        self.addresses = tuple(addresses)
        self.routes = tuple(routes)
        self.net_file = self.directory / "ns" / "net"
        self.mnt_file = self.directory / "ns" / "mnt"
        self.scratch = self.directory / "scratch"
        self.hosts_file = self.directory / "hosts"  # bound over /etc/hosts inside
        self._bound_ns_dir = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.net_inode: int | None = None
        self.mnt_inode: int | None = None

    # --- lifecycle -----------------------------------------------------------

    def create(self) -> None:
        ns_dir = self.net_file.parent
        ns_dir.mkdir(parents=True, exist_ok=True)
        # A namespace file may only be bound on a privately propagated mount.
        _run(["mount", "--bind", str(ns_dir), str(ns_dir)])
        self._bound_ns_dir = True
        _run(["mount", "--make-private", str(ns_dir)])
        self.net_file.touch()
        self.mnt_file.touch()
        lines = ["set -e"]
        for target in SCRATCH_OVER:
            source = self.scratch / target.strip("/").replace("/", "-")
            source.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount --bind {shlex.quote(str(source))} {target}")
        lines.append("mount -t tmpfs -o mode=755 node-run /run")
        self.hosts_file.write_text("127.0.0.1 localhost\n")
        lines.append(f"mount --bind {shlex.quote(str(self.hosts_file))} /etc/hosts")
        lines.append("ip link set lo up")
        lines += [f"ip addr add {address}/32 dev lo" for address in self.addresses]
        lines += [f"ip route add {prefix} dev lo" for prefix in self.routes]
        _run(
            [
                "unshare",
                f"--net={self.net_file}",
                f"--mount={self.mnt_file}",
                "--propagation=private",
                "sh",
                "-c",
                "\n".join(lines),
            ]
        )
        self.net_inode = os.stat(self.net_file).st_ino
        self.mnt_inode = os.stat(self.mnt_file).st_ino
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4,
            thread_name_prefix="node-netns",
            initializer=_setns,
            initargs=(self.net_file,),
        )

    def destroy(self) -> list[str]:
        """Kill what still runs inside, unbind the namespace files; return what was killed."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        killed = self.kill_members()
        for path in (self.net_file, self.mnt_file):
            if self._is_mountpoint(path):
                _run(["umount", str(path)])
        if self._bound_ns_dir:
            _run(["umount", str(self.net_file.parent)])
            self._bound_ns_dir = False
        return killed

    @staticmethod
    def _is_mountpoint(path: Path) -> bool:
        with open("/proc/self/mountinfo") as mounts:
            return any(line.split()[4] == str(path) for line in mounts)

    def add_host_name(self, name: str, address: str) -> None:
        """Resolve ``name`` to ``address`` for every process in the namespace."""
        with self.hosts_file.open("a") as hosts:  # in place: the bind mount holds this inode
            hosts.write(f"{address} {name}\n")

    # --- joining -------------------------------------------------------------

    def enter(self, *, mount: bool = True) -> list[str]:
        """The ``nsenter`` prefix that starts a command inside the namespace."""
        argv = ["nsenter", f"--net={self.net_file}"]
        if mount:
            argv.append(f"--mount={self.mnt_file}")
        return [*argv, "--"]

    def run(self, argv: Sequence[str], *, timeout: float = 60) -> str:
        """Run a command inside both namespaces; its stdout (an error says why it failed)."""
        result = subprocess.run(
            [*self.enter(), *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise NamespaceError(
                f"{shlex.join(argv)} exited with {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result.stdout

    def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` in a thread that joined the network namespace.

        Sockets it opens connect inside the namespace; processes it starts are
        born there (with the host's mount namespace).
        """
        if self._executor is None:
            raise NamespaceError("the namespace is not created")
        return self._executor.submit(function).result()

    @property
    def executor(self) -> concurrent.futures.Executor:
        """For ``loop.run_in_executor``: the same threads as :meth:`call`."""
        if self._executor is None:
            raise NamespaceError("the namespace is not created")
        return self._executor

    # --- members ---------------------------------------------------------------

    def members(self) -> list[int]:
        """Processes in the namespace's network or mount namespace (not this one)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            if (self.net_inode is not None and namespace_inode(entry, "net") == self.net_inode) or (
                self.mnt_inode is not None and namespace_inode(entry, "mnt") == self.mnt_inode
            ):
                found.append(int(entry))
        return found

    def kill_members(self, timeout: float = 10) -> list[str]:
        """SIGKILL every member until none is left; their command lines."""
        killed: list[str] = []
        deadline = time.monotonic() + timeout
        while pids := self.members():
            for pid in pids:
                killed.append(command_line(pid))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise NamespaceError(f"processes survive SIGKILL in the namespace: {pids}")
            time.sleep(0.1)
        return killed


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"<pid {pid}>"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or f"<pid {pid}>"
