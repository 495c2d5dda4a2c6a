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
only answer it after the API server has given up.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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


class Gate:
    """Admissions in flight: their number and the bytes of their bodies, both bounded.

    A body of unknown length (chunked) is counted at the largest accepted size.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.max_count = settings.max_admissions_in_flight
        self.max_bytes = settings.max_body_bytes_in_flight
        self.count = 0
        self.bytes = 0

    def enter(self, size: int) -> bool:
        if self.count >= self.max_count or self.bytes + size > self.max_bytes:
            return False
        self.count += 1
        self.bytes += size
        return True

    def leave(self, size: int) -> None:
        self.count -= 1
        self.bytes -= size


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


def _handler(
    endpoint: Endpoint, admitter: Admitter, gate: Gate
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The endpoint's handler; what it needs of the settings is bound once, here."""
    settings = admitter.settings.server
    most = settings.max_request_bytes
    deadline = settings.admission_deadline_seconds
    cap = settings.max_json_values
    admit = admitter.admit

    async def handle(request: web.Request) -> web.Response:
        length = request.content_length
        refusal = _refusal(request, length, most)
        if refusal is not None:
            _count_error(admitter, endpoint, "encoding" if refusal.status == 415 else "too-large")
            return refusal
        size = most if length is None else length
        if not gate.enter(size):
            return _overloaded(request, admitter, endpoint, gate)
        try:
            # Read the body within the deadline, then answer it.
            try:
                if request.content.is_eof():
                    # The whole body has arrived already (the usual case): no timer to arm.
                    body = await request.read()
                else:
                    async with asyncio.timeout(deadline):
                        body = await request.read()
            except TimeoutError:
                _count_error(admitter, endpoint, "body-timeout")
                return _error(408, f"request body not received within {deadline:g}s")
            except web.HTTPRequestEntityTooLarge:
                _count_error(admitter, endpoint, "too-large")
                return _error(413, _too_large(most))
            if _too_many_values(body, cap):
                _count_error(admitter, endpoint, "bad-request")
                return _error(
                    400, f"request body holds more than {cap} JSON values (server.maxJsonValues)"
                )
            try:
                outcome = await admit(body, endpoint)
            except review.ReviewError as exc:
                log.warning("%s: bad request from %s: %s", endpoint, request.remote, exc)
                _count_error(admitter, endpoint, "bad-request")
                return _error(400, str(exc))
            except Exception:
                log.exception("%s: unexpected error answering an admission request", endpoint)
                _count_error(admitter, endpoint, "internal-error")
                return _internal_error_answer(body, endpoint)
            return web.Response(body=review.encode(outcome.answer), content_type=JSON)
        finally:
            gate.leave(size)

    return handle


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
    app.router.add_post("/mutate", _handler("mutate", admitter, gate))
    app.router.add_post("/validate", _handler("validate", admitter, gate))
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
