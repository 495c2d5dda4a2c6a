"""The listening sockets: a bounded table of connections, timeouts, and a drain that loses
no request.

aiohttp serves the HTTP; this module owns the sockets under it, because the bounds a
port open to the whole cluster network needs are below HTTP:

- at most ``server.maxConnections`` are open at once. When the table is full, the next
  connection is still accepted and a connection with no request in progress is closed
  to make room: the one least recently active of the client (source address) holding
  the most connections. One client filling the table therefore only replaces its own
  connections, and the API server's few kept-alive ones are left alone. Only when
  every connection has a request in progress does a new one wait in the kernel's
  backlog;
- a TLS handshake must finish within ``server.tlsHandshakeTimeoutSeconds``;
- a connection's first request must have its headers complete within
  ``server.headerTimeoutSeconds`` of the accept; a later one within as long of its
  first byte;
- a connection idle after an answer is closed after ``server.idleTimeoutSeconds``.

A connection closed for a bound has nothing of a request read on it: it is aborted
(no TLS close_notify to wait for, so a client that never reads cannot keep the
descriptor).

Requests are tracked by :func:`track`, an aiohttp middleware: it marks the
connection busy while the handler runs and writes the answer itself (``prepare``
and ``write_eof``, the documented way a handler streams a response) before marking
it free again, so that no close ever lands between a handler's return and its
answer.

Drain (SIGTERM): stop accepting, cancel handshakes in progress (their requests were
never read), answer every request with ``Connection: close`` and close its
connection after the answer, and close a connection that stays idle for
:data:`DRAIN_IDLE_SECONDS`; the process exits when the last connection closes or at
``server.shutdownTimeoutSeconds``.

Why idle connections are not closed at once: by SIGTERM the preStop pause has taken
the Pod out of the endpoints, so the API server opens no new connection to it, but
it still sends on the kept-alive ones it holds (it picks an endpoint only when it
dials). A request it writes just as the server closes such a connection is never
read: Go's HTTP client (the API server's) reports the close as an error (``EOF``)
and does not resend a POST, so the API server applies the webhook's
``failurePolicy``: a Pod created unmutated, or refused. Answering the next request
with ``Connection: close`` instead ends the connection without that race; only a
connection the client leaves idle for a whole second is closed under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from webhook.config import ServerSettings

log = logging.getLogger(__name__)

BACKLOG = 128
# While draining, a kept-alive connection idle this long is closed; one in use is
# closed after the answer to its next request (module docstring).
DRAIN_IDLE_SECONDS = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Client:
    """The connections from one source address."""

    __slots__ = ("address", "count", "free")

    def __init__(self, address: str) -> None:
        self.address = address
        self.count = 0
        # those with no request in progress, the least recently active first
        self.free: OrderedDict[Connection, None] = OrderedDict()


class Table:
    """The open connections, by client, and the choice of which one makes room."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.open = 0
        self.clients: dict[str, Client] = {}
        self._room = asyncio.Event()
        self._waiting = False

    @property
    def full(self) -> bool:
        return self.open >= self.size

    def client(self, address: str) -> Client:
        client = self.clients.get(address)
        if client is None:
            client = self.clients[address] = Client(address)
        return client

    def add(self, connection: Connection) -> None:
        self.open += 1
        connection.client.count += 1
        connection.client.free[connection] = None

    def remove(self, connection: Connection) -> None:
        self.open -= 1
        client = connection.client
        client.count -= 1
        client.free.pop(connection, None)
        if not client.count:
            del self.clients[client.address]
        self.changed()

    def victim(self) -> Connection | None:
        """The least recently active free connection of the client holding the most
        connections (among clients with a free one); None when every one is busy."""
        most: Client | None = None
        for client in self.clients.values():
            if client.free and (most is None or client.count > most.count):
                most = client
        return None if most is None else next(iter(most.free))

    def changed(self) -> None:
        """A connection closed or became free: a waiting accept may go on."""
        if self._waiting:
            self._room.set()

    async def room(self) -> None:
        """Until the table has room, or a connection that can be closed to make it."""
        while self.full and not any(client.free for client in self.clients.values()):
            self._waiting = True
            self._room.clear()
            await self._room.wait()
        self._waiting = False


class Connection(asyncio.Protocol):
    """One accepted connection from its accept to its close: its place in the table,
    its deadline, and aiohttp's protocol under it (every asyncio.Protocol call is
    passed on).

    Idle means: no request being handled and no byte received since the last
    request's body was complete. Only an idle connection is closed by the idle
    timer or by a drain, so a request whose bytes have arrived is always handled.
    Free means: no request being handled; only a free connection is closed to make
    room.
    """

    def __init__(self, owner: Listener, client: Client) -> None:
        self._owner = owner
        self.client = client
        self._inner: asyncio.Protocol | None = None
        self._inner_data_received: Callable[[bytes], None] | None = None
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Task[None] | None = None
        self.closed = False  # out of the table
        self._received = 0  # data_received calls so far
        self._read_up_to = 0  # ... of which belong to requests already read
        self._busy = 0  # requests being handled
        self._answered = False  # at least one answer written: the idle timeout applies
        self._refused = False  # answered without reading the body: aiohttp closes it
        settings = owner.settings
        self._header_timeout = settings.header_timeout_seconds
        self._idle_timeout = settings.idle_timeout_seconds
        # The timer sleeps at most this long, so that no deadline set later is earlier
        # than its next firing: a request moves the deadline, never the timer.
        self._step = min(self._header_timeout, self._idle_timeout)
        self._loop = asyncio.get_running_loop()
        # the first request's headers are due this long after the accept
        self._deadline = self._loop.time() + self._header_timeout
        self._timer: asyncio.TimerHandle | None = None

    def serving(self, inner: asyncio.Protocol) -> Connection:
        """The protocol factory's answer, once the socket is set up: ``inner`` serves."""
        self._inner = inner
        self._inner_data_received = inner.data_received
        return self

    @property
    def idle(self) -> bool:
        return self._busy == 0 and self._received == self._read_up_to

    @property
    def draining(self) -> bool:
        return self._owner.draining

    # --- asyncio.Protocol, passed on ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        assert self._inner is not None
        self._inner.connection_made(transport)
        if self.closed or self._owner.draining:
            # made room for another, or the drain began, as the handshake finished:
            # this connection has no request yet
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._answered and self._received == self._read_up_to and not self._busy:
            # idle after an answer: the next request begins, its headers are due
            self._deadline = self._loop.time() + self._header_timeout
            if not self.closed:
                self.client.free.move_to_end(self)
        self._received += 1
        self._inner_data_received(data)  # type: ignore[misc]

    def eof_received(self) -> bool | None:
        assert self._inner is not None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        assert self._inner is not None
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        assert self._inner is not None
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._owner.forget(self)
        assert self._inner is not None
        self._inner.connection_lost(exc)

    # --- requests (from the middleware) ------------------------------------------------------

    def begin(self) -> None:
        """A request's headers were read and its handler runs (no deadline meanwhile)."""
        self._busy += 1
        self.client.free.pop(self, None)

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
        if self._busy or self.closed:
            return
        self._answered = True
        self.client.free[self] = None
        self._owner.table.changed()
        if self._refused:
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
            self.abort()
        else:
            self._arm()

    # --- closing -------------------------------------------------------------------------

    def abort(self) -> None:
        """Out of the table at once; the socket closed without waiting for the client."""
        self._owner.forget(self)
        if self.transport is not None:
            self.transport.abort()
        elif self.handshake is not None:
            self.handshake.cancel()

    def close_when_idle_for(self, seconds: float) -> None:
        """Drain: close once idle for ``seconds``. A request that begins first is
        answered with ``Connection: close``, and :meth:`end` closes the connection."""
        if not self.idle or self.transport is None:
            return
        self._deadline = min(self._deadline, self._loop.time() + seconds)
        if self._timer is not None:
            self._timer.cancel()
        self._arm()


@web.middleware
async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks the request's connection busy while ``handler`` runs, and writes the answer
    before marking it free again; while draining, the answer says ``Connection: close``.
    A request on a connection no :class:`Listener` accepted is passed through."""
    transport = request.transport
    connection = None if transport is None else transport.get_protocol()
    if not isinstance(connection, Connection):
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
        if connection.draining:
            response.force_close()
        await response.prepare(request)
        await response.write_eof()
        return response
    finally:
        connection.end()


class Listener:
    """Accepts connections for one aiohttp runner on ``host:port``, within the bounds.

    The runner's application must have :func:`track` among its middlewares.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.table = Table(settings.max_connections)
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._open: set[Connection] = set()
        self._all_closed = asyncio.Event()
        self.draining = False

    @property
    def addresses(self) -> list[Any]:
        return [sock.getsockname() for sock in self._sockets]

    @property
    def open_connections(self) -> int:
        return self.table.open

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
        table = self.table
        while True:
            # Accept only with room to give: otherwise the connection waits in the backlog.
            await table.room()
            try:
                sock, peer = await loop.sock_accept(listening)
            except OSError as exc:  # EMFILE and the like: back off, keep serving
                log.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            while table.full:
                victim = table.victim()
                if victim is not None:
                    victim.abort()
                else:  # every connection became busy since: wait for one
                    await table.room()
            self._serve(sock, str(peer[0]))

    def _serve(self, sock: socket.socket, address: str) -> None:
        connection = Connection(self, self.table.client(address))
        self.table.add(connection)
        self._open.add(connection)
        task = asyncio.get_running_loop().create_task(
            self._setup(sock, connection), name="handshake"
        )
        connection.handshake = task
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _setup(self, sock: socket.socket, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        factory = self._factory
        assert factory is not None
        try:
            await loop.connect_accepted_socket(
                lambda: connection.serving(factory()),
                sock,
                ssl=self._ssl,
                ssl_handshake_timeout=(
                    self.settings.tls_handshake_timeout_seconds if self._ssl else None
                ),
            )
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError) as exc:
            # No request was read. (A cancelled handshake made room, or the drain began.)
            self.forget(connection)
            with contextlib.suppress(OSError):
                sock.close()
            if not isinstance(exc, asyncio.CancelledError):
                log.debug("connection setup failed: %s", exc)
        finally:
            connection.handshake = None

    def forget(self, connection: Connection) -> None:
        """``connection`` leaves the table (once)."""
        if connection.closed:
            return
        connection.closed = True
        self.table.remove(connection)
        self._open.discard(connection)
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
        """Stop accepting; close each connection after its next answer, or once idle
        for :data:`DRAIN_IDLE_SECONDS`; wait up to ``timeout`` for them all to close.

        See the module docstring for why idle connections get that second.
        """
        self.draining = True
        await self.stop_accepting()
        handshakes = list(self._handshakes)
        for task in handshakes:
            task.cancel()
        await _settle(handshakes)
        for connection in list(self._open):
            connection.close_when_idle_for(DRAIN_IDLE_SECONDS)
        if self._open:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._all_closed.wait()


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
