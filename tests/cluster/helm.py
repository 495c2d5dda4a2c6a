"""The real Helm CLI against the test cluster, and the README's install command as written.

Helm v4 is installed by ``.ci/install-helm`` beside the Kubernetes binaries; its
version is read from that script, so the two never disagree. Commands run from
the root namespace through the cluster's kubeconfig (127.0.0.1, forwarded into
the node), with a Helm home of the cluster's own.

- :func:`run_shell`: a command line as a user types it (the README's);
- :class:`ChartRelease`: the chart installed with a test's values (``helm install
  --rollback-on-failure``, which waits for the webhook Pods to be Ready and removes a
  release that fails), uninstalled, and the objects it holds (``helm get manifest``).
  Helm blocks, so each action runs in a worker thread and the event loop keeps going.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.node import Cluster, kube_binary_dir
from tests.e2e.chart_release import CHART

REPO = Path(__file__).resolve().parents[2]
INSTALL_HELM = REPO / ".ci" / "install-helm"
README = REPO / "README.md"
HELM_TIMEOUT = 600.0


def helm_binary() -> Path:
    """Where ``.ci/install-helm`` puts the helm binary of the version it pins."""
    match = re.search(r"^HELM_VERSION=(\S+)$", INSTALL_HELM.read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no HELM_VERSION= line in {INSTALL_HELM}")
    return kube_binary_dir() / f"helm-{match.group(1)}"


def helm_missing() -> str | None:
    binary = helm_binary()
    if not os.access(binary, os.X_OK):
        return f"{binary} not found (install it with .ci/install-helm)"
    return None


def readme_install_command() -> str:
    """The ``helm install`` command of the README's "Installing with Helm", verbatim."""
    text = README.read_text()
    section = text[text.index("## Installing with Helm") :]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    commands = [str(b).strip() for b in blocks if str(b).lstrip().startswith("helm install ")]
    if not commands:
        raise RuntimeError("README.md has no helm install command under 'Installing with Helm'")
    return commands[0]


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    output: str


def run_shell(cluster: Cluster, command: str, **env: str) -> HelmResult:
    """Run a shell command line as a user would, with ``helm`` on PATH for this cluster."""
    bin_dir = cluster.directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "helm"
    if not link.exists():
        link.symlink_to(helm_binary())
    environment = cluster.helm_env()
    environment["PATH"] = f"{bin_dir}:{environment.get('PATH', '/usr/bin:/bin')}"
    environment.update(env)
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT,
        check=False,
    )
    return HelmResult(result.returncode, result.stdout + result.stderr)


def helm(cluster: Cluster, *args: str) -> str:
    """Run ``helm ARGS`` against the cluster; its stdout (an error says why it failed)."""
    result = subprocess.run(
        [str(helm_binary()), *args],
        env=cluster.helm_env(),
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"helm {shlex.join(args)} exited with {result.returncode}:\n"
            f"{(result.stderr or result.stdout).strip()[-4000:]}"
        )
    return result.stdout


@dataclass
class ChartRelease:
    """One release of the chart in ``charts/image-proxy-webhook``."""

    cluster: Cluster
    name: str
    namespace: str
    documents: list[dict[str, Any]] = field(default_factory=list)

    async def install(self, values: dict[str, Any]) -> None:
        """``helm install`` with these values, waiting for the webhook Pods to be Ready."""
        await asyncio.to_thread(self._install, values)

    async def uninstall(self) -> None:
        await asyncio.to_thread(
            helm,
            *(self.cluster, "uninstall", self.name, "-n", self.namespace),
            *("--wait", "--ignore-not-found"),  # a failed install was rolled back already
        )

    def _install(self, values: dict[str, Any]) -> None:
        values_file = self.cluster.directory / "helm" / f"{self.name}-values.yaml"
        values_file.parent.mkdir(parents=True, exist_ok=True)
        values_file.write_text(yaml.safe_dump(values, sort_keys=False))
        helm(
            self.cluster,
            *("install", self.name, str(CHART), "-n", self.namespace, "--create-namespace"),
            *("--rollback-on-failure", "--timeout", "180s", "--values", str(values_file)),
        )
        manifest = helm(self.cluster, "get", "manifest", self.name, "-n", self.namespace)
        self.documents = [d for d in yaml.safe_load_all(manifest) if d]

    def one(self, kind: str) -> dict[str, Any]:
        [only] = [d for d in self.documents if d["kind"] == kind]
        return only
