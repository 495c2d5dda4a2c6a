"""What a test node changes on the host itself, saved before and put back after.

Namespaces keep addresses, routes, rulesets and mounts apart, but a few things
are global: kubelet writes kernel.panic, kernel.panic_on_oops and
vm.overcommit_memory whatever its flags say, and the cgroups of its Pods live in
the host's hierarchies (under a cgroup root of the node's own).

Several test sessions may run nodes at once (each in namespaces of its own), and
one that starts while another's kubelet runs would take kubelet's values for the
host's. :class:`SysctlRecord` keeps the values from before the first node in a
file shared by all of them, with the sessions still running; the last one to
finish puts them back. A record whose sessions all died (a crash) still holds the
host's values, and the next session restores them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

PROC_SYS = Path("/proc/sys")
RECORD_DIR = Path("/run/image-proxy-webhook-test-nodes")
CGROUP_FS = Path("/sys/fs/cgroup")
# Counters and seeds that move on their own: not settings anyone changed.
_VOLATILE = (
    "kernel/random/",
    "kernel/ns_last_pid",
    "fs/dentry-state",
    "fs/inode-nr",
    "fs/inode-state",
    "fs/file-nr",
    "fs/quota/",
    "kernel/pty/nr",
)


def writable_sysctls() -> dict[str, str]:
    """Every writable setting under /proc/sys of this (the root) namespace, by dotted name."""
    values: dict[str, str] = {}
    for directory, _, files in os.walk(PROC_SYS):
        for name in files:
            path = Path(directory, name)
            relative = str(path.relative_to(PROC_SYS))
            if relative.startswith(_VOLATILE):
                continue
            try:
                if not path.stat().st_mode & 0o200:
                    continue
                values[relative.replace("/", ".")] = path.read_text().strip()
            except OSError:
                continue  # write-only or refusing reads (e.g. vm.compact_memory)
    return values


def changed(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Settings whose value differs: name -> (before, after)."""
    return {
        name: (value, after[name])
        for name, value in before.items()
        if name in after and after[name] != value
    }


def restore_sysctls(before: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Write back every setting that changed since ``before``; what was restored."""
    differences = changed(before, writable_sysctls())
    for name, (value, _) in differences.items():
        with contextlib.suppress(OSError):
            (PROC_SYS / name.replace(".", "/")).write_text(value + "\n")
    return differences


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SysctlRecord:
    """The host's settings from before the first running node, shared by every session."""

    def __init__(self, directory: Path = RECORD_DIR) -> None:
        self.directory = directory
        self.file = directory / "sysctls.json"
        self.before: dict[str, str] = {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, object]]:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        with open(self.directory / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                record = json.loads(self.file.read_text())
            except (OSError, ValueError):
                record = {}
            yield record
            if record:
                self.file.write_text(json.dumps(record))

    def join(self) -> None:
        """Before a node starts: record the host's values, or join the record there is."""
        with self._locked() as record:
            if not record:
                record["sysctls"] = writable_sysctls()
                record["sessions"] = []
            sessions = record["sessions"]
            assert isinstance(sessions, list)
            record["sessions"] = [pid for pid in sessions if _alive(pid)] + [os.getpid()]
            sysctls = record["sysctls"]
            assert isinstance(sysctls, dict)
            self.before = sysctls

    def leave(self) -> tuple[dict[str, tuple[str, str]], bool]:
        """After a node stopped: (what was restored, whether this session was the last).

        Only the last session restores: another's kubelet still holds the values
        it wrote.
        """
        with self._locked() as record:
            sessions = record.get("sessions", [])
            assert isinstance(sessions, list)
            others = [pid for pid in sessions if pid != os.getpid() and _alive(pid)]
            if others:
                record["sessions"] = others
                return {}, False
            restored = restore_sysctls(self.before)
            record.clear()
            self.file.unlink(missing_ok=True)
        (self.directory / "lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()
        return restored, True


def cgroup_dirs(root: str) -> list[Path]:
    """The directories of cgroup ``root`` in every mounted hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in CGROUP_FS.iterdir():
        top = hierarchy / root.strip("/")
        if top.is_dir():
            found += sorted(
                (Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True
            )
    return found


def cgroup_pids(directories: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for directory in directories:
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
    return pids


def remove_cgroup(root: str, timeout: float = 15) -> list[int]:
    """Kill every process under cgroup ``root`` and remove its directories; the killed pids."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        directories = cgroup_dirs(root)
        if not directories:
            return killed
        for pid in cgroup_pids(directories):
            killed.append(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for directory in directories:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if time.monotonic() > deadline:
            left = [str(d) for d in cgroup_dirs(root)]
            raise RuntimeError(f"cgroups of the node could not be removed: {left}")
        time.sleep(0.1)
