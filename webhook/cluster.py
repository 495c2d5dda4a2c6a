"""The one Kubernetes API client the process uses (pull secrets, self-managed TLS).

In a cluster: the Pod's service account. Elsewhere: the kubeconfig named by
``KUBECONFIG`` (read when the client is built, not when kubernetes_asyncio was
imported), else ``~/.kube/config``. Having neither is no error in itself: on a
laptop the webhook runs without a cluster, and the service says so in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes_asyncio import client
from kubernetes_asyncio import config as kube_config

DEFAULT_KUBECONFIG = "~/.kube/config"


class NoAPIError(Exception):
    """No Kubernetes API to talk to; the message says why, in one line."""


def _kubeconfig() -> tuple[str | None, str]:
    """The kubeconfig to load (None: no file is there) and where it was looked for."""
    named = os.environ.get("KUBECONFIG", "")
    if not named:
        found = Path(DEFAULT_KUBECONFIG).expanduser().is_file()
        return (DEFAULT_KUBECONFIG if found else None), f"KUBECONFIG unset, no {DEFAULT_KUBECONFIG}"
    paths = [path for path in named.split(os.pathsep) if path]
    found = any(Path(path).expanduser().is_file() for path in paths)
    return (named if found else None), f"KUBECONFIG={named}: no such file"


async def api_client() -> client.ApiClient:
    """The client for the cluster this process runs in, or its kubeconfig's; NoAPIError
    when there is neither, or the kubeconfig cannot be used."""
    configuration = client.Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        path, named = _kubeconfig()
        if path is None:  # asked to load it, kubernetes_asyncio would first warn on its own
            raise NoAPIError(
                f"no Kubernetes API: not in a cluster, and no kubeconfig ({named})"
            ) from None
        try:
            await kube_config.load_kube_config(config_file=path, client_configuration=configuration)
        except (kube_config.ConfigException, OSError) as exc:
            raise NoAPIError(f"no Kubernetes API configured ({exc})") from None
    return client.ApiClient(configuration)
