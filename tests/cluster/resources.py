"""A container's memory and CPU read from its own cgroup (v1, as kubelet's cgroupfs driver
lays it out under the node's cgroup root: ``kubepods/<qos>/pod<uid>/<container id>``).

What the kernel charges the container is what its limit is enforced against, so this
is the figure to hold against the chart's requests and limits (not the RSS of one
process, which misses the page cache and the preStop hook's process).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.cluster import hoststate

MIB = 1024 * 1024


def _controller_dir(cgroup_root: str, controller: str, container_id: str) -> Path:
    top = hoststate.CGROUP_FS / controller / cgroup_root
    found = sorted(top.glob(f"kubepods/**/{container_id}"))
    if not found:
        raise AssertionError(f"no {controller} cgroup for container {container_id} under {top}")
    return found[0]


@dataclass(frozen=True)
class ContainerCgroup:
    memory: Path
    cpu: Path

    @classmethod
    def of(cls, cgroup_root: str, container_id: str) -> ContainerCgroup:
        return cls(
            _controller_dir(cgroup_root, "memory", container_id),
            _controller_dir(cgroup_root, "cpuacct", container_id),
        )

    def _read(self, directory: Path, name: str) -> str:
        return (directory / name).read_text()

    @property
    def limit_bytes(self) -> int:
        return int(self._read(self.memory, "memory.limit_in_bytes"))

    @property
    def usage_bytes(self) -> int:
        """What the limit is enforced against: RSS, page cache, kernel memory."""
        return int(self._read(self.memory, "memory.usage_in_bytes"))

    @property
    def peak_bytes(self) -> int:
        return int(self._read(self.memory, "memory.max_usage_in_bytes"))

    def reset_peak(self) -> None:
        (self.memory / "memory.max_usage_in_bytes").write_text("0\n")

    def stat(self) -> dict[str, int]:
        pairs = (line.split() for line in self._read(self.memory, "memory.stat").splitlines())
        return {key: int(value) for key, value in pairs}

    @property
    def rss_bytes(self) -> int:
        return self.stat()["total_rss"]  # anonymous memory, transparent huge pages included

    @property
    def oom_kills(self) -> int:
        """Processes the OOM killer killed in this cgroup (Linux 4.13+ counts them)."""
        for line in self._read(self.memory, "memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"{self.memory}/memory.oom_control has no oom_kill count")

    @property
    def cpu_seconds(self) -> float:
        return int(self._read(self.cpu, "cpuacct.usage")) / 1e9
