"""Real distribution registries on the node's own addresses, for kubelet to pull from.

Each registry is ``docker-registry`` (the Registry class of the integration
tests) started from a thread inside the node's network namespace, on port 80 of
an address of its own there: image names carry no port, as the proxy's contract
needs (a port cannot be carried in the proxy path). containerd learns from a
``hosts.toml`` that it is plain HTTP. Images are pushed with skopeo, run inside
the namespace too.

- :func:`start_registry`: anonymous or htpasswd;
- :func:`license_checking_registry`: a stand-in for the vendor's proxy. The proxy
  takes the license ID as password, with either ``LICENSE_ID`` or the license ID
  itself as user name; an htpasswd holding both pairs checks exactly that;
- :func:`push_archive`: an OCI archive (the tiny images of :mod:`tests.cluster.images`,
  or the webhook's own image) into a registry, under any name.
"""

from __future__ import annotations

from pathlib import Path

from tests.cluster.node import Cluster
from tests.integration.registries import Registry

LICENSE_USER = "LICENSE_ID"


def start_registry(cluster: Cluster, name: str, *, users: dict[str, str] | None = None) -> Registry:
    """A registry on a node address of its own, port 80; htpasswd when ``users`` is given."""
    registry = Registry(
        cluster.directory / "registries" / name,
        auth="htpasswd" if users else "none",
        users=dict(users or {}),
        host=cluster.take_address(),
        port=80,
        realm=name,
    )
    cluster.namespace.call(registry.start)
    cluster.write_hosts_toml(registry.domain)
    return registry


def license_checking_registry(cluster: Cluster, license_id: str) -> Registry:
    """The proxy's credential check: password = license ID, user ``LICENSE_ID`` or the ID."""
    return start_registry(
        cluster, "proxy", users={LICENSE_USER: license_id, license_id: license_id}
    )


def push_archive(
    cluster: Cluster, registry: Registry, archive: Path, repository: str, tag: str
) -> str:
    """Copy an OCI archive into ``registry`` as ``repository:tag``; the image reference."""
    image = f"{registry.domain}/{repository}:{tag}"
    credentials: list[str] = []
    if registry.users:
        user, password = next(iter(registry.users.items()))
        credentials = ["--dest-creds", f"{user}:{password}"]
    cluster.namespace.run(
        [
            "skopeo",
            "--insecure-policy",  # no /etc/containers/policy.json needed
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            *credentials,
            f"oci-archive:{archive}",
            f"docker://{image}",
        ]
    )
    return image
