"""The webhook's image, built by ``.ci/build-image`` from the Dockerfile, runs as the
chart runs it: its entry point exists, it runs as uid 65532, and its default command
serves on a read-only root filesystem with only /tmp writable, answering /healthz and
the README's worked example with the README's patch.

No container engine can run containers here (``podman run`` cannot raise rlimits),
so the root filesystem is unpacked from the OCI archive and run with ``unshare`` and
``chroot`` (tests/image/rootfs.py), with the mounts the chart's Deployment makes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.image import rootfs
from tests.image.build import IMAGE_REF, REPO, WebhookImage
from tests.image.running import Server, Unpacked, start_server, stop_server

NON_ROOT = 65532  # the chart's securityContext.runAsUser and runAsGroup


def readme_patch() -> list[dict[str, Any]]:
    """The decoded patch of the README's worked example."""
    text = (REPO / "README.md").read_text()
    found = re.search(r"The decoded patch:\s*```json\n(.*?)```", text, re.DOTALL)
    assert found, "README.md: no decoded patch under 'A worked example'"
    patch: list[dict[str, Any]] = json.loads(found.group(1))
    return patch


def post_review(server: Server, path: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"https://localhost:{server.port}{path}",
        data=(REPO / "examples" / "admission-review.json").read_bytes(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=server.ssl_context(), timeout=10) as answer:
        assert answer.status == 200
        review: dict[str, Any] = json.load(answer)
        return review


def run(unpacked: Unpacked, argv: list[str], tmp: Path) -> tuple[int, str]:
    result = subprocess.run(
        rootfs.command(
            unpacked.root, unpacked.config, argv, [rootfs.Mount(tmp, "/tmp", read_only=False)]
        ),
        env=rootfs.environment(unpacked.root, unpacked.config),
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_build_names_the_image_the_archive_holds(webhook_image: WebhookImage) -> None:
    assert webhook_image.ref == IMAGE_REF
    with tarfile.open(webhook_image.archive) as archive:
        handle = archive.extractfile("index.json")
        assert handle is not None
        index = json.load(handle)
    [manifest] = index["manifests"]
    assert manifest["annotations"]["org.opencontainers.image.ref.name"] == IMAGE_REF


def test_config_runs_the_entry_point_as_non_root(unpacked: Unpacked) -> None:
    config = unpacked.config
    assert config.user == f"{NON_ROOT}:{NON_ROOT}"
    assert config.entrypoint == ["image-proxy-webhook"]
    # The chart's args (templates/deployment.yaml), which the CLI accepts.
    assert config.cmd == [
        "--log-format",
        "json",
        "serve",
        "--config",
        "/etc/image-proxy-webhook/config.yaml",
    ]
    # The entry point is found on the image's PATH, as the runtime looks it up.
    found = [
        unpacked.root / directory.lstrip("/") / "image-proxy-webhook"
        for directory in config.env["PATH"].split(":")
    ]
    executable = [path for path in found if path.is_file() and os.access(path, os.X_OK)]
    assert executable, f"image-proxy-webhook is not on the image's PATH {config.env['PATH']}"
    shebang = executable[0].read_text().splitlines()[0]
    interpreter = unpacked.root / shebang.removeprefix("#!").strip().lstrip("/")
    assert interpreter.exists(), f"the entry point's interpreter {shebang} is missing"


def test_help_runs_as_the_image_user(
    unpacked: Unpacked, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = rootfs.writable_dir(tmp_path_factory.mktemp("help") / "tmp")
    code, output = run(unpacked, [*unpacked.config.entrypoint, "--help"], tmp)
    assert code == 0, output
    assert "{serve,rewrite,validate,probe,certs}" in output

    code, output = run(unpacked, ["id", "-u"], tmp)
    assert (code, output.strip()) == (0, str(NON_ROOT))


def test_the_charts_pre_stop_command_runs_in_the_image(
    unpacked: Unpacked, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Before Kubernetes 1.30 the chart's preStop hook is an exec of python3
    (templates/deployment.yaml): the image has one on its PATH."""
    tmp = rootfs.writable_dir(tmp_path_factory.mktemp("prestop") / "tmp")
    code, output = run(unpacked, ["python3", "-c", "import time; time.sleep(0)"], tmp)
    assert code == 0, output


def test_serve_runs_non_root_on_a_read_only_root(server: Server) -> None:
    status = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split() == [str(NON_ROOT)] * 4
    assert status["Gid"].split() == [str(NON_ROOT)] * 4
    # The image's default command, through the entry point's interpreter.
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert Path(cmdline[1]).name == "image-proxy-webhook"
    assert cmdline[2:] == [
        "--log-format",
        "json",
        "serve",
        "--config",
        "/etc/image-proxy-webhook/config.yaml",
    ]

    mounts = {}
    for line in Path(f"/proc/{server.process.pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mounts[fields[4]] = fields[5].split(",")
    assert "ro" in mounts["/"], mounts["/"]
    assert "rw" in mounts["/tmp"]
    assert "ro" in mounts["/etc/image-proxy-webhook/config.yaml"]


def test_serve_answers_health_and_readiness(server: Server) -> None:
    for path in ("/healthz", "/readyz"):
        url = f"http://127.0.0.1:{server.health_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")


def test_serve_rewrites_the_worked_example_as_the_readme_says(server: Server) -> None:
    review = post_review(server, "/mutate")
    response = review["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == readme_patch()


def test_nothing_is_compiled_at_run_time(
    unpacked: Unpacked, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every module serve imports, up to an admission, loads from the image's
    bytecode: none is compiled from source (which a read-only root could not cache,
    so it would be compiled again at every start)."""
    server = start_server(unpacked, tmp_path_factory.mktemp("verbose"), {"PYTHONVERBOSE": "1"})
    try:
        post_review(server, "/mutate")
    finally:
        stop_server(server)
    log = server.log.read_text()
    from_bytecode = re.findall(r"^# code object from '(/\S+\.pyc)'$", log, re.MULTILINE)
    from_source = re.findall(r"^# code object from (/\S+\.py)$", log, re.MULTILINE)
    assert any("/webhook/" in path for path in from_bytecode), "no import was logged"
    assert from_source == []
