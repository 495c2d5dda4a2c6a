"""Processes under test and the load tool: start, measure, stop.

- :class:`Process`: a server subprocess with its peak RSS (``VmHWM`` from
  ``/proc/PID/status``, reset between scenarios through ``/proc/PID/clear_refs``).
- :func:`start_webhook` runs the real CLI (``python -m webhook serve``);
  :func:`start_floor` runs :mod:`bench.floor`.
- :func:`wrk` drives one URL with ``wrk`` over keep-alive TLS using ``post.lua``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA_SCRIPT = HERE / "post.lua"


class BenchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def wrk_binary() -> str | None:
    return shutil.which("wrk")


# --- processes ---------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB: VmRSS and VmHWM."""
    fields = _status(pid)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime from /proc/PID/stat (its fields after the command name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_file: Path
    base_url: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def reset_peak(self) -> None:
        """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
        # not permitted: the peak then covers the process's whole life
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        return cpu_seconds(self.pid)

    def rss_mib(self) -> tuple[float, float]:
        current, peak = rss_kib(self.pid)
        return current / 1024, peak / 1024

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # No Kubernetes API: the webhook then manages no pull secrets (nothing to measure there).
    env["KUBECONFIG"] = str(Path("/nonexistent") / "kubeconfig")
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _spawn(name: str, argv: list[str], log_file: Path, base_url: str) -> Process:
    log = log_file.open("ab")
    try:
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=_child_env(),
            start_new_session=True,
        )
    finally:
        log.close()
    return Process(name, popen, log_file, base_url)


def _wait(process: Process, ready: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise BenchError(f"{process.name} exited during start:\n{process.log_tail()}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.05)
    process.stop()
    raise BenchError(f"{process.name} not ready after {timeout}s:\n{process.log_tail()}")


def _http_ok(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _tls_listening(host: str, port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=1) as raw,
        context.wrap_socket(raw, server_hostname=host),
    ):
        return True


# The CLI runs on uvloop when it is installed; to measure it on asyncio's loop
# instead, the bench hides uvloop from it.
_ASYNCIO_MAIN = (
    "import sys; sys.modules['uvloop'] = None; from webhook.__main__ import main; sys.exit(main())"
)


def default_loop() -> str:
    """The event loop the webhook's serve command picks: uvloop when importable."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def start_webhook(
    config: Path,
    host: str,
    port: int,
    health_port: int,
    log_file: Path,
    *,
    python: str = sys.executable,
    log_format: str = "json",
    loop: str = "default",
    timeout: float = 30.0,
) -> Process:
    """The webhook as a cluster runs it: the CLI, JSON logs (the chart's default)."""
    cli = ["--log-format", log_format, "serve", "--config", str(config)]
    if loop == "asyncio":
        argv = [python, "-c", _ASYNCIO_MAIN, *cli]
    elif loop in ("default", default_loop()):
        argv = [python, "-m", "webhook", *cli]
    else:
        raise BenchError(f"the webhook cannot run on {loop}: uvloop is not installed")
    process = _spawn("webhook", argv, log_file, f"https://{host}:{port}")
    process.extra["metrics_url"] = f"http://{host}:{health_port}/metrics"
    _wait(process, lambda: _http_ok(f"http://{host}:{health_port}/readyz"), timeout)
    return process


def start_floor(
    host: str,
    port: int,
    cert: Path,
    key: Path,
    responses: Path | None,
    log_file: Path,
    *,
    loop: str = "",
    echo: bool = False,
    python: str = sys.executable,
    timeout: float = 30.0,
) -> Process:
    """:mod:`bench.floor`; with ``echo`` the echo floor, which echoes each review's uid."""
    argv = [python, "-m", "bench.floor", "--host", host, "--port", str(port)]
    argv += ["--cert", str(cert), "--key", str(key), "--loop", loop or default_loop()]
    if responses is not None:
        argv += ["--responses", str(responses)]
    if echo:
        argv.append("--echo")
    name = "echo floor" if echo else "floor"
    process = _spawn(name, argv, log_file, f"https://{host}:{port}")
    _wait(process, lambda: _tls_listening(host, port), timeout)
    return process


# --- load ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    connections: int
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return self.latency_us["p50"] / 1000

    @property
    def p99_ms(self) -> float:
        return self.latency_us["p99"] / 1000

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def write_bodies(path: Path, bodies: list[bytes]) -> Path:
    """One compact JSON body per line, as post.lua reads them."""
    with path.open("wb") as out:
        for body in bodies:
            if b"\n" in body:
                raise BenchError("a body for wrk must be one line of JSON")
            out.write(body + b"\n")
    return path


def wrk(
    url: str,
    bodies_file: Path,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    timeout_s: float = 10.0,
    bearer: str | None = None,
) -> WrkResult:
    """One wrk run: keep-alive TLS, POST the bodies; the figures from post.lua's report.

    ``bearer``: a token sent as ``Authorization: Bearer`` (for the API server).
    """
    binary = wrk_binary()
    if binary is None:
        raise BenchError("wrk is not installed: apt-get install -y wrk")
    argv = [
        binary,
        "-t",
        str(min(threads, connections)),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",  # whole seconds: wrk reads no fractions
        "--timeout",
        f"{timeout_s:g}s",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    env = dict(os.environ, BENCH_BODIES=str(bodies_file))
    if bearer is not None:
        env["BENCH_BEARER"] = bearer
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            data = json.loads(line.removeprefix("BENCH-RESULT "))
            return WrkResult(
                connections=connections,
                requests=int(data["requests"]),
                seconds=data["duration_us"] / 1e6,
                errors={k: int(v) for k, v in data["errors"].items()},
                latency_us={k: float(v) for k, v in data["latency_us"].items()},
            )
    raise BenchError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


# --- talking to the servers --------------------------------------------------------------


def insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def post(url: str, body: bytes, context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context or insecure_context()),
        urllib.request.ProxyHandler({}),
    )
    with opener.open(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def get_text(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return str(response.read().decode())
