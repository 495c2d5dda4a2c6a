"""Tiny OCI images written in Python, small enough to pull in a blink.

An image whose one file is the static ``pause`` binary runs as a Pod's container
(it sleeps until signalled) and as the node's sandbox image. A second file names
the image, so each name gets a digest of its own: a pull of the wrong image
cannot pass for the right one.

:func:`write_oci_archive` writes an OCI image layout as a tar (``oci-archive:``
for skopeo, ``ctr images import`` for containerd).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# containerd names an imported image after this annotation; skopeo and the OCI
# layout after the second.
CONTAINERD_IMAGE_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def architecture() -> str:
    """This machine's architecture as OCI names it."""
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, machine)


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def layer(files: Mapping[str, tuple[bytes, int]]) -> tuple[bytes, str]:
    """A gzipped tar of ``path -> (content, mode)``: (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(content)
            info.mode = mode
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def write_oci_archive(
    path: Path,
    *,
    name: str,
    files: Mapping[str, tuple[bytes, int]],
    entrypoint: Sequence[str],
    user: str = "",
) -> str:
    """Write a one-layer image as an OCI layout tar at ``path``; its manifest digest.

    ``name`` is the full reference (``registry/repository:tag``) the archive
    carries for containerd; the OCI ref name is its tag.
    """
    layer_blob, diff_id = layer(files)
    config_blob = _json(
        {
            "architecture": architecture(),
            "os": "linux",
            "config": {"Entrypoint": list(entrypoint), "User": user},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    )
    layer_digest, _ = _blob(layer_blob)
    config_digest, _ = _blob(config_blob)
    manifest_blob = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_blob)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer_blob)}],
        }
    )
    manifest_digest, _ = _blob(manifest_blob)
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest_blob),
                    "platform": {"architecture": architecture(), "os": "linux"},
                    "annotations": {CONTAINERD_IMAGE_NAME: name, OCI_REF_NAME: tag},
                }
            ],
        }
    )
    entries = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        **{
            "blobs/sha256/" + digest.split(":", 1)[1]: data
            for digest, data in (
                (layer_digest, layer_blob),
                (config_digest, config_blob),
                (manifest_digest, manifest_blob),
            )
        },
    }
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for entry, data in entries.items():
            info = tarfile.TarInfo(entry)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return manifest_digest


def pause_image(path: Path, *, name: str, pause_binary: Path) -> str:
    """An image of ``name`` holding only the static pause binary (and its own name)."""
    return write_oci_archive(
        path,
        name=name,
        files={
            "/pause": (pause_binary.read_bytes(), 0o755),
            "/image-name": (name.encode() + b"\n", 0o644),
        },
        entrypoint=["/pause"],
        user="65535:65535",  # as upstream's pause image: runs under runAsNonRoot
    )
