"""Real distribution registries on the node's own addresses, for kubelet to pull from.

Each registry is ``docker-registry`` (the Registry class of the integration
tests) started from a thread inside the node's network namespace, on port 80 of
an address of its own there: image names carry no port, as the proxy's contract
needs (a port cannot be carried in the proxy path). containerd learns from a
``hosts.toml`` that it is plain HTTP. Images are pushed with skopeo, run inside
the namespace too. Each registry logs at debug level, where distribution names the
user of every authorized request: :meth:`Registry.served` tells who pulled what.

- :func:`start_registry`: anonymous or htpasswd;
- :func:`license_checking_registry`: a stand-in for the vendor's proxy. The proxy
  takes the license ID as password, with either ``LICENSE_ID`` or the license ID
  itself as user name; an htpasswd holding both pairs checks exactly that. It
  answers to the proxy's own name: the node's /etc/hosts maps it to its address;
- :func:`push_archive`: an OCI archive (the tiny images of :mod:`tests.cluster.images`,
  or the webhook's own image) into a registry, under any name;
- :func:`copy_image`: an image from one registry into another, as a pull-through
  proxy serves what it pulled;
- :func:`containerd_user_agent`: how containerd names itself to registries.
"""

from __future__ import annotations

import subprocess
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
        log_level="debug",
    )
    cluster.namespace.call(registry.start)
    cluster.write_hosts_toml(registry.domain)
    return registry


def license_checking_registry(cluster: Cluster, license_id: str, *, domain: str) -> Registry:
    """The proxy's credential check: password = license ID, user ``LICENSE_ID`` or the ID.

    Reached as ``domain`` (the proxy's name in rewritten images and in the pull
    Secret) over plain HTTP; it holds images where the proxy serves them, at
    ``proxy/<appSlug>/<registry>/<path>``.
    """
    registry = start_registry(
        cluster, "proxy", users={LICENSE_USER: license_id, license_id: license_id}
    )
    cluster.namespace.add_host_name(domain, registry.host)
    cluster.write_hosts_toml(domain)
    return registry


def _credentials(registry: Registry) -> str:
    user, password = next(iter(registry.users.items()))
    return f"{user}:{password}"


def push_archive(
    cluster: Cluster, registry: Registry, archive: Path, repository: str, tag: str
) -> str:
    """Copy an OCI archive into ``registry`` as ``repository:tag``; the image reference."""
    image = f"{registry.domain}/{repository}:{tag}"
    credentials = ["--dest-creds", _credentials(registry)] if registry.users else []
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


def copy_image(
    cluster: Cluster, image: str, source: Registry, destination: Registry, name: str
) -> str:
    """Copy ``image`` from ``source`` into ``destination`` as ``name`` (``repository:tag``).

    The manifest is copied as it is, so the image keeps its digest; the new reference.
    """
    target = f"{destination.domain}/{name}"
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet"]  # no policy.json needed
    argv += ["--src-tls-verify=false", "--dest-tls-verify=false", "--preserve-digests"]
    if source.users:
        argv += ["--src-creds", _credentials(source)]
    if destination.users:
        argv += ["--dest-creds", _credentials(destination)]
    cluster.namespace.run([*argv, f"docker://{image}", f"docker://{target}"])
    return target


def containerd_user_agent() -> str:
    """The User-Agent containerd sends registries: ``containerd/<its version>``."""
    # "containerd github.com/containerd/containerd 1.6.20~ds1 <revision>"
    version = subprocess.run(
        ["containerd", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    return f"containerd/{version}"
