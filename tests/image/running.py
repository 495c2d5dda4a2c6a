"""The image's default command served from its unpacked root filesystem, as the
chart runs it: the example config mounted where the chart mounts its ConfigMap, a
writable /tmp (the chart's emptyDir), POD_NAMESPACE, on free loopback ports."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.image import rootfs
from tests.image.build import REPO
from tests.support import free_port

CONFIG_PATH = "/etc/image-proxy-webhook/config.yaml"  # where the chart mounts it
POD_NAMESPACE = "image-proxy-webhook"
START_TIMEOUT = 30.0
PORT_ATTEMPTS = 3
IN_USE = "Address already in use"


@dataclass(frozen=True)
class Unpacked:
    root: Path
    config: rootfs.ImageConfig


@dataclass(frozen=True)
class Server:
    """The image's ENTRYPOINT and CMD running in the unpacked root filesystem."""

    process: subprocess.Popen[bytes]
    port: int
    health_port: int
    tmp: Path  # the host side of the container's /tmp
    log: Path

    def ssl_context(self) -> ssl.SSLContext:
        # No certFile configured: the server writes a development CA into its /tmp.
        return ssl.create_default_context(
            cafile=str(self.tmp / "image-proxy-webhook-tls" / "ca.crt")
        )


def example_config(path: Path, port: int, health_port: int) -> Path:
    """examples/config.yaml on the given loopback ports, readable by the image's user."""
    config = yaml.safe_load((REPO / "examples" / "config.yaml").read_text())
    config["server"].update(host="127.0.0.1", port=port, healthPort=health_port)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    return path


def wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    url = f"http://127.0.0.1:{server.health_port}/healthz"
    while True:
        if server.process.poll() is not None:
            pytest.fail(
                f"serve exited {server.process.returncode}:\n{server.log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                pytest.fail(f"no /healthz after {START_TIMEOUT} s:\n{server.log.read_text()}")
            time.sleep(0.1)


def start_server(unpacked: Unpacked, work: Path, extra_env: dict[str, str]) -> Server:
    """The image's default command with the example config mounted where the chart
    mounts its ConfigMap, an emptyDir-like /tmp, and the Pod's POD_NAMESPACE.

    A port found free can be taken by another process's outgoing connection before
    the server binds it (both come from the ephemeral range): the server then exits
    with "Address already in use" and is started again on other ports."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        server = _spawn(unpacked, work, extra_env)
        try:
            wait_healthy(server)
        except BaseException:
            stop_server(server)
            lost_port = server.process.returncode == 2 and IN_USE in server.log.read_text()
            if lost_port and attempt < PORT_ATTEMPTS:
                continue
            raise
        return server
    raise AssertionError("unreachable")


def _spawn(unpacked: Unpacked, work: Path, extra_env: dict[str, str]) -> Server:
    port, health_port = free_port(), free_port()
    config = example_config(work / "config.yaml", port, health_port)
    tmp = rootfs.writable_dir(work / "tmp")
    log = work / "serve.log"
    argv = [*unpacked.config.entrypoint, *unpacked.config.cmd]
    mounts = [rootfs.Mount(config, CONFIG_PATH), rootfs.Mount(tmp, "/tmp", read_only=False)]
    env = rootfs.environment(
        unpacked.root, unpacked.config, {"POD_NAMESPACE": POD_NAMESPACE, **extra_env}
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            rootfs.command(unpacked.root, unpacked.config, argv, mounts),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(process, port, health_port, tmp, log)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
