"""The real Helm CLI against the test cluster, and the README's install command as written.

Helm v4 is installed by ``.ci/install-helm`` beside the Kubernetes binaries; its
version is read from that script, so the two never disagree. Commands run from
the root namespace through the cluster's kubeconfig (127.0.0.1, forwarded into
the node), with a Helm home of the cluster's own.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.node import Cluster, kube_binary_dir

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
