"""The aiohttp servers: the webhook over TLS and the plain-HTTP health/metrics port.

Error channels: a body that is not an AdmissionReview is an HTTP 400 (413 when too
large, 408 when it does not arrive in time, 415 when compressed); every policy
outcome is an AdmissionResponse; an unexpected exception is logged with its
traceback and answered as the chart's default failurePolicy would treat a broken
webhook: the mutating endpoint admits the Pod unchanged with a warning (Ignore), the
validating endpoint refuses it (the admin asked for the policy to be enforced).

Overload: past ``server.maxAdmissionsInFlight`` admissions, or
``server.maxBodyBytesInFlight`` bytes of their bodies, a request is refused at once,
before its body is read, with 503 and ``Retry-After: 1`` (client-go, in the API
server, retries that within the webhook's timeout; otherwise the failurePolicy
applies, exactly as for a webhook that cannot be reached). Queueing it instead would
only answer it after the API server has given up. A request still waiting for its
body gives its place up, with 408, to the request of a client holding fewer places
(:class:`Gate`), so that one client's slow bodies cannot keep the API server out.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

from aiohttp import hdrs, web

from webhook import review
from webhook.admission import Admitter, Endpoint
from webhook.config import DEFAULT_MAX_REQUEST_BYTES, ServerSettings
from webhook.connections import track
from webhook.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

MAX_BODY_BYTES = DEFAULT_MAX_REQUEST_BYTES  # server.maxRequestBytes by default
JSON = "application/json"
IDENTITY = frozenset({"", "identity"})


class Place:
    """One admission's place in the gate: the bytes it holds, and while its body is
    still arriving, the timer that can cut the wait short."""

    __slots__ = ("cut", "holder", "size", "timer")

    def __init__(self, size: int, holder: _Holder) -> None:
        self.size = size
        self.holder = holder
        self.timer: asyncio.Timeout | None = None
        self.cut = False  # its wait was cut short to make room for another client


class _Holder:
    """The places one client (source address) holds."""

    __slots__ = ("client", "count", "waiting")

    def __init__(self, client: str) -> None:
        self.client = client
        self.count = 0
        # the places whose bodies are still arriving, the longest waiting first
        self.waiting: OrderedDict[Place, None] = OrderedDict()


class Gate:
    """Admissions in flight: their number and the bytes of their bodies, both bounded.

    A body of unknown length (chunked) is counted at the largest accepted size. When
    the gate is full, a request is not refused while clients holding more places than
    its own have bodies still arriving: the longest such wait of the largest holder
    is cut short (408) and its place goes to the new request. So one client sending
    slow bodies holds the places only while no one else needs them.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.max_count = settings.max_admissions_in_flight
        self.max_bytes = settings.max_body_bytes_in_flight
        self.count = 0
        self.bytes = 0
        self.holders: dict[str, _Holder] = {}
        # places cut short whose handlers have not left yet: as good as free
        self._cut_count = 0
        self._cut_bytes = 0

    def enter(self, size: int, client: str) -> Place | None:
        """A place for ``size`` bytes, or None: full, and nothing to cut short."""
        holder = self.holders.get(client)
        if self._full(self.count - self._cut_count, self.bytes - self._cut_bytes, size) and not (
            self._make_room(size, 0 if holder is None else holder.count)
        ):
            return None
        if holder is None:
            holder = self.holders[client] = _Holder(client)
        holder.count += 1
        self.count += 1
        self.bytes += size
        return Place(size, holder)

    def leave(self, place: Place) -> None:
        self.count -= 1
        self.bytes -= place.size
        holder = place.holder
        holder.count -= 1
        if place.cut:
            self._cut_count -= 1
            self._cut_bytes -= place.size
        elif place.timer is not None:
            holder.waiting.pop(place, None)
        if not holder.count:
            del self.holders[holder.client]

    def _full(self, count: int, held: int, size: int) -> bool:
        return count >= self.max_count or held + size > self.max_bytes

    def waiting(self, place: Place, timer: asyncio.Timeout) -> None:
        """The place's body is still arriving; ``timer`` ends the wait."""
        place.timer = timer
        place.holder.waiting[place] = None

    def arrived(self, place: Place) -> None:
        place.holder.waiting.pop(place, None)

    def _make_room(self, size: int, mine: int) -> bool:
        """Cuts short the body waits of the clients holding more places than ``mine``
        (the largest holder first, its longest wait first) until ``size`` bytes fit;
        cuts nothing and answers False when that is not enough."""
        count, held = self.count - self._cut_count, self.bytes - self._cut_bytes
        cuts: list[Place] = []
        taken: dict[_Holder, int] = {}
        while self._full(count, held, size):
            largest, most = None, mine + 1
            for holder in self.holders.values():
                left = holder.count - taken.get(holder, 0)
                if left > most and len(holder.waiting) > taken.get(holder, 0):
                    largest, most = holder, left
            if largest is None:
                return False
            place = next(islice(largest.waiting, taken.get(largest, 0), None))
            taken[largest] = taken.get(largest, 0) + 1
            cuts.append(place)
            count -= 1
            held -= place.size
        loop = asyncio.get_running_loop()
        for place in cuts:
            place.holder.waiting.pop(place)
            place.cut = True
            self._cut_count += 1
            self._cut_bytes += place.size
            assert place.timer is not None
            place.timer.reschedule(loop.time())
        return True


@dataclass
class Health:
    """What /readyz reports: ready once serving, not ready while shutting down."""

    serving: bool = False
    shutting_down: bool = False
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)

    def failing(self) -> list[str]:
        failing = [name for name, check in self.checks.items() if not check()]
        if not self.serving:
            failing.append("not-serving")
        if self.shutting_down:
            failing.append("shutting-down")
        return failing


HEALTH = web.AppKey("health", Health)
METRICS = web.AppKey("metrics", Metrics)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": message}) + "\n"
    return web.Response(status=status, text=body, content_type=JSON, headers=headers)


def _refusal(request: web.Request, length: int | None, most: int) -> web.Response | None:
    """A refusal decided from the headers alone, before any of the body is read."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING)
    if encoding is not None and (encoding := encoding.strip().lower()) not in IDENTITY:
        return _error(
            415,
            f"Content-Encoding {encoding!r} is not accepted: the API server sends "
            "uncompressed reviews",
        )
    if length is not None and length > most:
        return _error(413, _too_large(most))
    return None


def _json_values(body: bytes) -> int:
    """At least how many values decoding would create (each a Python object): every
    value but the first of an array or object follows a comma. Counted from above (a
    comma inside a string counts too), in a few milliseconds for the largest body."""
    return body.count(b",") + body.count(b"[") + body.count(b"{") + 1


def _too_many_values(body: bytes, cap: int) -> bool:
    # each value counted is a byte of the body: a body shorter than the cap needs no count
    return len(body) >= cap and _json_values(body) > cap


def _too_large(most: int) -> str:
    return f"request body larger than {most} bytes (server.maxRequestBytes)"


class _Endpoint:
    """The handler of one endpoint; what it needs of the settings is bound once."""

    def __init__(self, endpoint: Endpoint, admitter: Admitter, gate: Gate) -> None:
        settings = admitter.settings.server
        self.endpoint = endpoint
        self.admitter = admitter
        self.gate = gate
        self.most = settings.max_request_bytes
        self.deadline = settings.admission_deadline_seconds
        self.cap = settings.max_json_values
        self.admit = admitter.admit

    async def handle(self, request: web.Request) -> web.Response:
        """Refused from the headers, or given a place; then the body read and answered."""
        length = request.content_length
        refusal = _refusal(request, length, self.most)
        if refusal is not None:
            self._count("encoding" if refusal.status == 415 else "too-large")
            return refusal
        place = self.gate.enter(self.most if length is None else length, request.remote or "")
        if place is None:
            return _overloaded(request, self.admitter, self.endpoint, self.gate)
        try:
            body = await self._read(request, place)
            if isinstance(body, web.Response):
                return body
            return await self._answer(request, body)
        finally:
            self.gate.leave(place)

    async def _read(self, request: web.Request, place: Place) -> bytes | web.Response:
        """The body, within the deadline (unless its wait is cut short for another
        client's request); a 408 or 413 when it does not come."""
        try:
            if request.content.is_eof():
                # The whole body has arrived already (the usual case): no timer to arm.
                return await request.read()
            async with asyncio.timeout(self.deadline) as timer:
                self.gate.waiting(place, timer)
                body = await request.read()
            self.gate.arrived(place)
            return body
        except TimeoutError:
            self._count("body-timeout")
            if place.cut:
                return _error(
                    408,
                    "request body not received in time: its place was given to a request "
                    "of another client (server.maxAdmissionsInFlight)",
                )
            return _error(408, f"request body not received within {self.deadline:g}s")
        except web.HTTPRequestEntityTooLarge:
            self._count("too-large")
            return _error(413, _too_large(self.most))

    async def _answer(self, request: web.Request, body: bytes) -> web.Response:
        """The admission's answer, or the 400 (or internal-error answer) instead."""
        if _too_many_values(body, self.cap):
            self._count("bad-request")
            return _error(
                400, f"request body holds more than {self.cap} JSON values (server.maxJsonValues)"
            )
        try:
            outcome = await self.admit(body, self.endpoint)
        except review.ReviewError as exc:
            log.warning("%s: bad request from %s: %s", self.endpoint, request.remote, exc)
            self._count("bad-request")
            return _error(400, str(exc))
        except Exception:
            log.exception("%s: unexpected error answering an admission request", self.endpoint)
            self._count("internal-error")
            return _internal_error_answer(body, self.endpoint)
        return web.Response(body=review.encode(outcome.answer), content_type=JSON)

    def _count(self, reason: str) -> None:
        _count_error(self.admitter, self.endpoint, reason)


def _overloaded(
    request: web.Request, admitter: Admitter, endpoint: Endpoint, gate: Gate
) -> web.Response:
    log.warning("%s: refused a request from %s: too many in flight", endpoint, request.remote)
    _count_error(admitter, endpoint, "overloaded")
    return _error(
        503,
        f"too many admissions in flight (at most {gate.max_count}, "
        f"server.maxAdmissionsInFlight, holding at most {gate.max_bytes} bytes of "
        "bodies, server.maxBodyBytesInFlight); retry",
        headers={"Retry-After": "1"},
    )


def _count_error(admitter: Admitter, endpoint: Endpoint, reason: str) -> None:
    if admitter.metrics is not None:
        admitter.metrics.admission_errors.labels(endpoint, reason).inc()


def _internal_error_answer(body: bytes, endpoint: Endpoint) -> web.Response:
    try:
        uid = review.parse(body).uid
    except Exception:
        return _error(400, "request could not be read")
    message = "image-proxy-webhook hit an internal error; see its log"
    answer = (
        review.allow(uid, [f"{message}; pod admitted unchanged"])
        if endpoint == "mutate"
        else review.deny(uid, [message])
    )
    return web.Response(body=review.encode(answer), content_type=JSON)


def webhook_app(admitter: Admitter) -> web.Application:
    """The webhook's endpoints (served by a ``connections.Listener``; its middleware
    tracks each request's connection for the drain, the timeouts and the table)."""
    settings = admitter.settings.server
    app = web.Application(client_max_size=settings.max_request_bytes, middlewares=[track])
    gate = Gate(settings)
    app.router.add_post("/mutate", _Endpoint("mutate", admitter, gate).handle)
    app.router.add_post("/validate", _Endpoint("validate", admitter, gate).handle)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    failing = request.app[HEALTH].failing()
    if failing:
        return web.Response(status=503, text="not ready: " + ", ".join(failing) + "\n")
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def health_app(health: Health, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[track])
    app[HEALTH] = health
    app[METRICS] = metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app
