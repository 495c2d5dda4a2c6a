"""What a test node changes on the host itself, saved before and put back after.

Namespaces keep addresses, routes, rulesets and mounts apart, but a few things
are global: kubelet writes kernel.panic, kernel.panic_on_oops and
vm.overcommit_memory whatever its flags say, and the cgroups of its Pods live in
the host's hierarchies (under a cgroup root of the node's own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

PROC_SYS = Path("/proc/sys")
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
