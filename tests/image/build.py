"""The webhook's image, built once per test session by ``.ci/build-image``.

``build_webhook_image(out_dir)`` returns ``(archive, ref)``: an OCI archive of the
image built from the working tree and the Dockerfile, and the image reference it
holds. The first call of a process builds (a warm build takes seconds: the Debian
base and podman's layers are cached outside the repository); later calls return the
same archive, whatever directory they pass. Missing tools or no root skip the
calling test locally and fail it under ``CI=true``.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.integration.registries import require_binary

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / ".ci" / "build-image"
IMAGE_REF = "localhost/image-proxy-webhook:test"


class WebhookImage(NamedTuple):
    archive: Path
    ref: str


class ImageBuildError(Exception):
    """``.ci/build-image`` failed; the message ends with its output."""


_lock = threading.Lock()
_built: WebhookImage | None = None


def require_image_tools() -> None:
    """Skip (fail under CI=true) unless this machine can build the image here."""
    if os.geteuid() != 0:
        message = "building the image needs root (mmdebstrap, podman's storage); CI runs as root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    require_binary("mmdebstrap", "mmdebstrap")
    require_binary("podman", "podman")


def build_webhook_image(out_dir: Path) -> WebhookImage:
    """The image as ``(archive, ref)``, built into ``out_dir`` on the first call."""
    global _built
    with _lock:
        if _built is None:
            require_image_tools()
            archive = out_dir / "image-proxy-webhook.tar"
            result = subprocess.run(
                [str(BUILD_SCRIPT), str(archive), IMAGE_REF],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise ImageBuildError(
                    f".ci/build-image exited {result.returncode}:\n{result.stderr[-4000:]}"
                )
            lines = result.stdout.strip().splitlines()
            if not lines or not archive.is_file():
                raise ImageBuildError(f".ci/build-image wrote no image:\n{result.stderr[-4000:]}")
            _built = WebhookImage(archive, lines[-1])
        return _built
