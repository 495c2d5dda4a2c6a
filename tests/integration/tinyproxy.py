"""A real HTTP(S) forward proxy for tests: Debian's ``tinyproxy`` on loopback.

:meth:`TinyProxy.requests` reads the proxy's own log: one line per request it
was asked to forward, ``HEAD http://host:port/v2/...`` for plain HTTP and
``CONNECT host:port`` for a TLS tunnel.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.integration.registries import _wait_for_port, stop_process
from tests.support import free_port

_REQUEST_LINE = re.compile(r"Request \(file descriptor \d+\): (?P<request>\S+ \S+) HTTP/")


class TinyProxy:
    def __init__(
        self, directory: Path, binary: str, *, credentials: tuple[str, str] | None = None
    ) -> None:
        self.directory = directory
        self.binary = binary
        self.credentials = credentials
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.log_file = directory / "tinyproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> TinyProxy:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "tinyproxy.conf"
        lines = [
            f"Port {self.port}",
            f"Listen {self.host}",
            "Allow 127.0.0.1",
            f'LogFile "{self.log_file}"',
            "LogLevel Connect",  # one line per request; no ConnectPort: any port may be tunnelled
            f'PidFile "{self.directory / "tinyproxy.pid"}"',
            "Timeout 10",
        ]
        if self.credentials is not None:
            lines.append("BasicAuth {} {}".format(*self.credentials))
        config.write_text("\n".join(lines) + "\n")
        self._process = subprocess.Popen(
            [self.binary, "-d", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_port(self.host, self.port, 10.0, alive=lambda: self.running)
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    def requests(self) -> list[str]:
        """Every request line the proxy was asked to forward, oldest first."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return []
        return [m["request"] for m in map(_REQUEST_LINE.search, text.splitlines()) if m]
