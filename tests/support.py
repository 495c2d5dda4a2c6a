"""Helpers every suite shares, one contract each.

- :func:`unavailable` / :func:`require`: a tool or library a test needs is missing:
  skip locally, fail under ``CI=true`` (any case), where nothing may pass by skipping.
- :func:`free_port` / :func:`free_loopback_address`: loopback ports and addresses,
  never handed out twice by this process.
- :func:`eventually`: wait for a condition; an AssertionError naming it on timeout.
- :func:`certificates`: a development CA and serving certificate for localhost.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import ipaddress
import os
import random
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from webhook import pki

# --- what a test needs ------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> NoReturn:
    """Skip the test (or the module, at import) locally; fail it under CI=true."""
    import pytest  # when a test runs: the benchmarks use these helpers without it

    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module: str, pip_name: str) -> ModuleType:
    """Import a test dependency, or :func:`unavailable`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        unavailable(f"{pip_name} is not installed ({exc}); pip install {pip_name}")


# --- addresses --------------------------------------------------------------------------

_address_lock = threading.Lock()
_handed_out: set[tuple[str, int]] = set()


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on host right now (and not handed out by this process)."""
    with _address_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if (host, port) not in _handed_out:
                _handed_out.add((host, port))
                return port
    raise OSError(f"no free port on {host}")


def free_loopback_address(port: int = 80) -> str:
    """A 127.x.y.z address whose ``port`` is free: a portless name needs one per server.

    Random within 127.64.0.0/10 so suites running side by side rarely meet, and
    checked by binding.
    """
    with _address_lock:
        for _ in range(200):
            host = str(ipaddress.IPv4Address(0x7F400000 + random.randrange(1, 0x3FFFFE)))
            if host.endswith((".0", ".255")) or (host, port) in _handed_out:
                continue
            if _bindable(host, port):
                _handed_out.add((host, port))
                return host
    raise OSError(f"no loopback address with port {port} free")


def can_bind_low_ports() -> bool:
    return os.geteuid() == 0


# --- waiting ----------------------------------------------------------------------------


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 20.0,
    what: str | Callable[[], object] = "condition",
    interval: float = 0.05,
) -> None:
    """Until ``check()`` (a function or a coroutine function) is true; past ``timeout``
    seconds an AssertionError naming ``what`` (called then, when it is a function, to
    show the state the wait ended in)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if loop.time() > deadline:
            shown = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {shown}")
        await asyncio.sleep(interval)


# --- certificates -----------------------------------------------------------------------


def certificates(directory: Path) -> pki.CertPaths:
    """A development CA (``ca_file``) and a serving pair for localhost, 127.0.0.1, ::1."""
    return pki.generate(directory, pki.DEV_NAMES)
