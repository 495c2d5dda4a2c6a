"""The aiohttp servers: the webhook over TLS and the plain-HTTP health/metrics port.

Error channels: a body that is not an AdmissionReview is an HTTP 400 (413 when too
large, 408 when it does not arrive in time); every policy outcome is an
AdmissionResponse; an unexpected exception is logged with its traceback and
answered as the chart's default failurePolicy would treat a broken webhook: the
mutating endpoint admits the Pod unchanged with a warning (Ignore), the validating
endpoint refuses it (the admin asked for the policy to be enforced).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from webhook import review
from webhook.admission import Admitter, Endpoint
from webhook.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

# The API server sends the object and, on UPDATE, its old version: up to 3 MiB each.
MAX_BODY_BYTES = 7 * 1024 * 1024
JSON = "application/json"


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


ADMITTER = web.AppKey("admitter", Admitter)
HEALTH = web.AppKey("health", Health)
METRICS = web.AppKey("metrics", Metrics)


def _error(status: int, message: str) -> web.Response:
    body = json.dumps({"error": message}) + "\n"
    return web.Response(status=status, text=body, content_type=JSON)


def _handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        admitter = request.app[ADMITTER]
        deadline = admitter.settings.server.admission_deadline_seconds
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
            return _error(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            outcome = await admitter.admit(body, endpoint)
        except review.ReviewError as exc:
            log.warning("%s: bad request from %s: %s", endpoint, request.remote, exc)
            _count_error(admitter, endpoint, "bad-request")
            return _error(400, str(exc))
        except Exception:
            log.exception("%s: unexpected error answering an admission request", endpoint)
            _count_error(admitter, endpoint, "internal-error")
            return _internal_error_answer(body, endpoint)
        return web.Response(body=review.encode(outcome.answer), content_type=JSON)

    return handle


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
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[ADMITTER] = admitter
    app.router.add_post("/mutate", _handler("mutate"))
    app.router.add_post("/validate", _handler("validate"))
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
    app = web.Application()
    app[HEALTH] = health
    app[METRICS] = metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app
