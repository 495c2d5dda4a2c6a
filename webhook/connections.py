"""The listening sockets: bounded connections, timeouts, and a drain that loses no request.

aiohttp serves the HTTP; this module owns the sockets under it, because the bounds a
port open to the whole cluster network needs are below HTTP:

- at most ``server.maxConnections`` open at once: beyond that the listener stops
  accepting, so new connections wait in the kernel's backlog (as Go's LimitListener
  does) instead of costing a descriptor and a TLS session each;
- a TLS handshake must finish within ``server.tlsHandshakeTimeoutSeconds``;
- a request's headers must arrive within ``server.headerTimeoutSeconds`` of its
  first byte;
- a connection idle between requests is closed after ``server.idleTimeoutSeconds``.

Drain (SIGTERM): stop accepting, cancel handshakes in progress (their requests were
never read), close every idle connection at once, and answer every request already
read with ``Connection: close``; the process exits when the last connection closes
or at ``server.shutdownTimeoutSeconds``. A request written on a keep-alive
connection as it is closed is never read: its client sees the connection close
without an answer, which Go's HTTP client (the API server's) reports as an error
before any byte of an answer, never as half an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from webhook.config import ServerSettings

log = logging.getLogger(__name__)

BACKLOG = 128

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _Slot:
    """One of the ``maxConnections`` places, given back exactly once."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


class Connection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: timers and idle tracking.

    Idle means: no request being handled and no byte received since the last
    request's body was complete. Only an idle connection is closed by the idle
    timer or by a drain, so a request whose bytes have arrived is always handled.
    """

    def __init__(self, owner: Listener, inner: asyncio.Protocol, slot: _Slot) -> None:
        self._owner = owner
        self._inner = inner
        self._inner_data_received = inner.data_received
        self._slot = slot
        self.transport: asyncio.Transport | None = None
        self._received = 0  # data_received calls so far
        self._read_up_to = 0  # ... of which belong to requests already read
        self._busy = 0  # requests being handled
        self._refused = False  # answered without reading the body: aiohttp closes it
        settings = owner.settings
        self._header_timeout = settings.header_timeout_seconds
        self._idle_timeout = settings.idle_timeout_seconds
        # The timer sleeps at most this long, so that no deadline set later is earlier
        # than its next firing: a request moves the deadline, never the timer.
        self._step = min(self._header_timeout, self._idle_timeout)
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0  # closed then, unless a request is being handled
        self._timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        return self._busy == 0 and self._received == self._read_up_to

    # --- asyncio.Protocol, delegated ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self._owner._open[transport] = self
        self._deadline = self._loop.time() + self._idle_timeout
        self._arm()
        self._inner.connection_made(transport)
        if self._owner.draining:
            # the handshake finished as the drain began: this connection has no request yet
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._received == self._read_up_to and not self._busy:  # idle: a request begins
            self._deadline = self._loop.time() + self._header_timeout
        self._received += 1
        self._inner_data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self._owner._open.pop(self.transport, None)
        self._slot.release()
        self._inner.connection_lost(exc)
        self._owner._closed_one()

    # --- requests ------------------------------------------------------------------------

    def begin(self) -> None:
        """A request's headers were read and its handler runs (no deadline meanwhile)."""
        self._busy += 1

    def body_read(self) -> None:
        """Every byte received so far belongs to requests already read."""
        self._read_up_to = self._received

    def refused(self) -> None:
        """Answered without reading the body: aiohttp reads the rest of it (for at most
        its lingering time, so that the client sees the answer) and then closes."""
        self._refused = True

    def end(self) -> None:
        """The handler's answer is written (into the transport's buffer)."""
        self._busy -= 1
        if self._busy or self._refused:
            return
        if self._received == self._read_up_to:  # idle
            if self._owner.draining and self.transport is not None:
                self.transport.close()  # the answer said Connection: close
                return
            self._deadline = self._loop.time() + self._idle_timeout
        else:  # the next request has begun to arrive (pipelined)
            self._deadline = self._loop.time() + self._header_timeout
        if self._timer is None:
            self._arm()

    # --- the timer -----------------------------------------------------------------------

    def _arm(self) -> None:
        """Wake at the deadline, or sooner (``_step``) to look at a deadline moved since."""
        self._timer = self._loop.call_at(
            min(self._deadline, self._loop.time() + self._step), self._wake
        )

    def _wake(self) -> None:
        """Idle too long, or headers too slow: nothing of a request was read; close.
        A request being handled (or refused, aiohttp closing) has no deadline: its
        end arms the timer again."""
        self._timer = None
        if self._busy or self._refused or self.transport is None:
            return
        if self._loop.time() >= self._deadline:
            self.transport.close()
        else:
            self._arm()

    def close_if_idle(self) -> None:
        if self.idle and self.transport is not None:
            self.transport.close()


class Listener:
    """Accepts connections for one aiohttp runner on ``host:port``, within the bounds."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._open: dict[asyncio.Transport, Connection] = {}
        self._all_closed = asyncio.Event()
        self.draining = False

    @property
    def addresses(self) -> list[Any]:
        return [sock.getsockname() for sock in self._sockets]

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def start(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Serve ``runner`` (set up) on every address ``host`` resolves to; OSError
        when one cannot be bound."""
        server = runner.server
        assert server is not None, "call runner.setup() first"
        # Every request of this runner, routed or not (a 404 too), goes through the
        # tracking: cheaper than an application middleware, which aiohttp runs with
        # machinery of its own per request.
        server.request_handler = self._tracked(server.request_handler)
        self._factory = server
        self._ssl = ssl_context
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, _type, _proto, _name, address in dict.fromkeys(infos):
                sock = socket.create_server(address[:2], family=family, backlog=BACKLOG)
                sock.setblocking(False)
                self._sockets.append(sock)
        except OSError:
            self._close_sockets()
            raise
        for sock in self._sockets:
            self._accepting.append(loop.create_task(self._accept(sock), name="accept"))

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Wait for a free place before accepting: the excess stays in the backlog.
            await self._slots.acquire()
            slot = _Slot(self._slots)
            try:
                sock, _peer = await loop.sock_accept(listening)
            except OSError as exc:  # EMFILE and the like: back off, keep serving
                slot.release()
                log.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            except BaseException:
                slot.release()
                raise
            task = loop.create_task(self._setup(sock, slot), name="handshake")
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _setup(self, sock: socket.socket, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        factory = self._factory
        assert factory is not None
        try:
            await loop.connect_accepted_socket(
                lambda: Connection(self, factory(), slot),
                sock,
                ssl=self._ssl,
                ssl_handshake_timeout=(
                    self.settings.tls_handshake_timeout_seconds if self._ssl else None
                ),
            )
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError) as exc:
            # No request was read. (A cancelled handshake is the drain's doing.)
            slot.release()
            with contextlib.suppress(OSError):
                sock.close()
            if not isinstance(exc, asyncio.CancelledError):
                log.debug("connection setup failed: %s", exc)

    def _tracked(self, handler: Handler) -> Handler:
        """``handler`` marking the connection busy while it runs; it writes the answer
        before marking the connection idle again (so that a drain never closes a
        connection with an answer still unwritten) and, while draining, answers with
        ``Connection: close``."""
        connections = self._open

        async def tracked(request: web.BaseRequest) -> web.StreamResponse:
            connection = connections.get(request.transport)  # type: ignore[arg-type]
            if connection is None:  # closed already
                return await handler(request)
            connection.begin()
            try:
                if request.content.is_eof():
                    connection.body_read()
                try:
                    response = await handler(request)
                except web.HTTPException as exc:  # 404, 405 from the router: written here too
                    response = web.Response(status=exc.status, text=exc.text, headers=exc.headers)
                if request.content.is_eof():
                    connection.body_read()
                else:
                    # refused without reading the body: aiohttp discards the rest of it
                    # (for at most its lingering time) and closes after the answer
                    response.force_close()
                    connection.refused()
                if self.draining:
                    response.force_close()
                await response.prepare(request)
                await response.write_eof()
                return response
            finally:
                connection.end()

        return tracked

    def _closed_one(self) -> None:
        if self.draining and not self._open:
            self._all_closed.set()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def stop_accepting(self) -> None:
        for task in self._accepting:
            task.cancel()
        await _settle(self._accepting)
        self._accepting.clear()
        self._close_sockets()

    async def drain(self, timeout: float) -> None:
        """Stop accepting; close idle connections; wait up to ``timeout`` for the rest.

        Requests already read are answered with ``Connection: close``; see the module
        docstring.
        """
        self.draining = True
        await self.stop_accepting()
        handshakes = list(self._handshakes)
        for task in handshakes:
            task.cancel()
        await _settle(handshakes)
        for connection in list(self._open.values()):
            connection.close_if_idle()
        if self._open:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._all_closed.wait()


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
