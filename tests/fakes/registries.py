"""Registries that misbehave, each named for what it fakes: faults a real registry
cannot be made to produce (a hang, a reset, a garbled answer), on 127.0.0.1.

``FakeRegistry`` subclasses answer over HTTP with aiohttp; ``RawRegistry`` ones
write (or withhold) the bytes themselves. Each starts with ``await fake.start()``
and stops with ``await fake.stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

from aiohttp import web

from tests.loopback import serve_app


class FakeRegistry:
    """An aiohttp server on 127.0.0.1:PORT answering every request with ``handle``."""

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.authorizations: list[str | None] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.domain}"

    def image(self, repository: str = "team/app", tag: str = "v1") -> str:
        return f"{self.domain}/{repository}:{tag}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.authorizations.append(request.headers.get("Authorization"))
        return await self.handle(request)

    async def start(self) -> FakeRegistry:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner, self.port = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class ErroringRegistry(FakeRegistry):
    def __init__(self, status: int = 500, retry_after: str | None = None) -> None:
        super().__init__()
        self.status = status
        self.retry_after = retry_after

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return web.Response(status=self.status, headers=headers)


class RateLimitingRegistry(ErroringRegistry):
    def __init__(self, retry_after: str | None) -> None:
        super().__init__(429, retry_after)


class GarbageChallengeRegistry(FakeRegistry):
    """401 with the given WWW-Authenticate values (none at all when empty)."""

    def __init__(self, *challenges: str) -> None:
        super().__init__()
        self.challenges = challenges

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(status=401)
        for challenge in self.challenges:
            response.headers.add("WWW-Authenticate", challenge)
        return response


class BearerRegistry(FakeRegistry):
    """Docker-Hub-like: 401 with a Bearer challenge; with ``good_token`` answers ``status``."""

    def __init__(
        self,
        realm: str,
        *,
        scope: str | None = "repository:team/app:pull",
        service: str | None = "fake-registry",
        good_token: str = "good-token",
        status: int = 200,
    ) -> None:
        super().__init__()
        self.realm = realm
        self.scope = scope
        self.service = service
        self.good_token = good_token
        self.status = status

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") == f"Bearer {self.good_token}":
            return web.Response(status=self.status)
        challenge = f'Bearer realm="{self.realm}"'
        if self.service is not None:
            challenge += f',service="{self.service}"'
        if self.scope is not None:
            challenge += f',scope="{self.scope}"'
        if request.headers.get("Authorization"):
            challenge += ',error="insufficient_scope"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})


class TokenRealm(FakeRegistry):
    """A token endpoint answering ``status`` with ``body`` (after ``delay`` seconds)."""

    def __init__(
        self, body: bytes | dict[str, Any] | None = None, status: int = 200, delay: float = 0.0
    ) -> None:
        super().__init__()
        self.body = body if body is not None else {"token": "good-token", "expires_in": 300}
        self.status = status
        self.delay = delay

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        data = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        return web.Response(status=self.status, body=data, content_type="application/json")


class RedirectingRegistry(FakeRegistry):
    def __init__(self, location: str, status: int = 307) -> None:
        super().__init__()
        self.location = location
        self.status = status

    async def handle(self, request: web.Request) -> web.StreamResponse:
        location = self.location.format(self=self)
        return web.Response(status=self.status, headers={"Location": location})


class PublicRegistry(FakeRegistry):
    async def handle(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)


class RawRegistry:
    """A bare TCP server whose ``serve`` decides what goes on the wire."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}"

    def image(self, repository: str = "team/app", tag: str = "v1") -> str:
        return f"{self.domain}/{repository}:{tag}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.serve(reader, writer)

    async def start(self) -> RawRegistry:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


class HangingRegistry(RawRegistry):
    """Accepts the connection, reads the request, never answers."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.Event().wait()


class SilentAcceptingRegistry(RawRegistry):
    """Accepts and never even reads (a black hole behind a load balancer)."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()


class ResettingRegistry(RawRegistry):
    """Starts answering, then resets the connection (RST) mid-response."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.ima")
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


class ResettingTokenRealm(ResettingRegistry):
    @property
    def realm(self) -> str:
        return f"http://{self.domain}/token"


class GarbageResponseRegistry(RawRegistry):
    """Answers with something that is not HTTP."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        writer.close()


class OversizedTokenRealm(RawRegistry):
    """A 200 token response that never ends (chunked, no length)."""

    @property
    def realm(self) -> str:
        return f"http://{self.domain}/token"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 8192
        for _ in range(64):  # 512 KiB, far over the cap
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
