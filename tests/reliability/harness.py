"""Shared pieces of the reliability suite.

- :func:`sockets`: this process's TCP sockets from /proc (no psutil), with their
  endpoints and state, so a test can tell the webhook's connections from a fake's.
- :class:`FakeThread`: runs the registry fakes of tests/fakes/registries.py
  on an event loop of their own thread, so their tasks do not mix with the
  webhook's and a hanging fake cannot starve the server under test.
- :func:`on_address`: starts one of those fakes on a given host and port (a
  loopback address on port 80 gives port-less image names, which the proxy path
  can carry).
- :class:`ServerProcess`: ``python -m webhook serve --config ...`` as a subprocess;
  :func:`run_cli` for a command that runs to completion.
- :func:`write_config`, small HTTP helpers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from tests.fakes.registries import FakeRegistry, RawRegistry
from tests.support import can_bind_low_ports, free_loopback_address, free_port, unavailable
from webhook import pki

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def require_root_for_low_ports() -> None:
    """Port-less image names need a loopback address's port 80: root (as in CI)."""
    if can_bind_low_ports():
        return
    unavailable("binding loopback port 80 needs root (CI runs as root)")


# --- sockets ------------------------------------------------------------------------

TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


@dataclass(frozen=True)
class Sock:
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str


def _address(text: str) -> tuple[str, int]:
    host_hex, port_hex = text.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        host = socket.inet_ntop(socket.AF_INET6, words)
        if host.startswith("::ffff:"):
            host = host[len("::ffff:") :]
    return host, int(port_hex, 16)


def sockets(pid: int | str = "self") -> list[Sock]:
    """Every TCP socket a file descriptor of the process holds."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found: list[Sock] = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                if fields[9] in inodes:
                    found.append(
                        Sock(
                            _address(fields[1]),
                            _address(fields[2]),
                            TCP_STATES.get(fields[3], fields[3]),
                        )
                    )
    return found


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    """Resident memory now, or at its peak so far with ``field="VmHWM"``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


# --- fakes on a thread of their own ------------------------------------------------------


class FakeThread:
    """An event loop in a daemon thread that hosts registry fakes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fakes", daemon=True)
        self.thread.start()
        self.started: list[Any] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await asyncio.wrap_future(future)

    async def start(self, fake: Any, host: str = "127.0.0.1", port: int = 0, **ssl: Any) -> Any:
        await self.arun(on_address(fake, host, port, **ssl))
        self.started.append(fake)
        return fake

    def close(self) -> None:
        for fake in reversed(self.started):
            with contextlib.suppress(Exception):
                self.run(fake.stop(), timeout=10)

        async def cancel_the_rest() -> None:
            # a hanging fake's handlers wait forever: end them before the loop closes
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_the_rest(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def on_address(fake: Any, host: str, port: int, ssl_context: Any = None) -> None:
    """Start a FakeRegistry or RawRegistry on host:port (optionally with TLS)."""
    if isinstance(fake, FakeRegistry):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", fake._dispatch)
        fake._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await fake._runner.setup()
        site = web.TCPSite(fake._runner, host, port, ssl_context=ssl_context)
        await site.start()
        fake.port = int(fake._runner.addresses[0][1])
    elif isinstance(fake, RawRegistry):
        fake._server = await asyncio.start_server(fake._accept, host, port, ssl=ssl_context)
        fake.port = int(fake._server.sockets[0].getsockname()[1])
    else:
        raise TypeError(f"not a registry fake: {fake!r}")
    fake.host = host


def loopback_host(port: int = 80) -> str:
    """A 127.x.y.z address whose ``port`` is free (port 80: images without a port)."""
    return free_loopback_address(port)


# --- config -------------------------------------------------------------------------------


def config_data(certs: pki.CertPaths, **overrides: Any) -> dict[str, Any]:
    """Config for a webhook on free loopback ports; a mapping in ``overrides`` is merged."""
    data: dict[str, Any] = {
        "appSlug": "my-app",
        "licenseID": "license-for-tests",
        "namespaces": ["my-app"],
        "server": {
            "host": "127.0.0.1",
            "port": free_port(),
            "healthPort": free_port(),
            "certFile": str(certs.cert_file),
            "keyFile": str(certs.key_file),
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def write_config(path: Path, certs: pki.CertPaths, **overrides: Any) -> dict[str, Any]:
    """A config file for ``serve`` on free loopback ports; returns the data written."""
    data = config_data(certs, **overrides)
    path.write_text(yaml.safe_dump(data))
    return data


# --- the server as a subprocess ---------------------------------------------------------------


class ServerProcess:
    """``python -m webhook serve --config FILE`` with its log in a file."""

    def __init__(
        self,
        config: Path,
        log: Path,
        *,
        log_format: str = "json",
        log_level: str = "INFO",
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.log_format = log_format
        self.log_level = log_level
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        data = yaml.safe_load(config.read_text())
        self.port = int(data["server"]["port"])
        self.health_port = int(data["server"]["healthPort"])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30) -> ServerProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *cli(),
                    "--log-format",
                    self.log_format,
                    "--log-level",
                    self.log_level,
                    "serve",
                    "--config",
                    str(self.config),
                ],
                cwd=REPO,
                env=server_env(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log_text()}")
            if http_status("127.0.0.1", self.health_port, "/readyz") == 200:
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_text()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records


def cli() -> list[str]:
    return [sys.executable, "-m", "webhook"]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a server process: no API server unless ``extra`` names one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["KUBECONFIG"] = "/nonexistent"  # no API server: pull secrets are not managed
    env.pop("POD_NAMESPACE", None)
    env.update(extra or {})
    return env


def run_cli(
    args: list[str], timeout: float = 60, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """``python -m webhook ARGS`` to completion: (exit code, stdout and stderr)."""
    done = subprocess.run(
        [*cli(), *args],
        cwd=REPO,
        env=server_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def http_status(host: str, port: int, path: str, timeout: float = 1.0) -> int | None:
    """A plain HTTP GET's status, or None when nothing answers (stdlib, blocking)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            sock.settimeout(timeout)
            head = sock.recv(64)
    except OSError:
        return None
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


AsyncFn = Callable[[], Awaitable[Any]]
