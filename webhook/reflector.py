"""A copy of some objects in the API server, kept current by list + watch (docs/design.md §3).

What the API server's own controllers do: list once, then watch from the list's
resourceVersion and resume each new watch from the last version seen (bookmarks move
it on without an object). Only when the API server can no longer resume from there
(410 Gone: that history was compacted away, or it restarted) is the whole set listed
again. Between failures the reflector waits, doubling up to ``MAX_DELAY_SECONDS``,
with jitter so that replicas do not come back at the same instant.

Objects are plain dicts as the API server sends them: no models are built for
thousands of objects that are only compared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

PAGE_SIZE = 500
REQUEST_TIMEOUT_SECONDS = 10.0
# The API server ends each watch after timeoutSeconds; a random length per watch (as
# client-go does) keeps replicas from opening their next watches together.
WATCH_SECONDS = (300, 600)
MAX_DELAY_SECONDS = 30.0
# A watch that ends this fast without an event is a failure, not a timeout: opening
# the next one at once would be a loop against a misbehaving server.
SHORTEST_WATCH_SECONDS = 1.0

Object = dict[str, Any]


class Gone(Exception):
    """410: the API server cannot resume from that resourceVersion; list again."""


class WatchFailed(Exception):
    """The watch ended with an error event or too early; the message says how."""


@dataclass
class Reflector:
    """Follows the objects at ``path`` (e.g. ``/api/v1/secrets``) that match
    ``field_selector`` until cancelled.

    ``replaced`` gets every object after each list; ``changed`` each watch event
    (``ADDED``, ``MODIFIED``, ``DELETED``) with its object; ``restarted`` the reason
    a watch had to start over (``expired``: listed again, ``error``: resumed after a
    pause).
    """

    api: client.ApiClient
    path: str
    field_selector: str
    replaced: Callable[[list[Object]], None]
    changed: Callable[[str, Object], None]
    restarted: Callable[[str], None]
    what: str

    async def run(self) -> None:
        version = ""
        delay = 1.0
        while True:
            try:
                if not version:
                    items, version = await self.list()
                    self.replaced(items)
                    delay = 1.0
                version = await self.watch(version)
                delay = 1.0
                continue
            except Gone:
                log.info("watching %s: resourceVersion too old; listing again", self.what)
                version = ""
                self.restarted("expired")
                continue
            except ApiException as exc:
                if exc.status == 410:
                    version = ""
                    self.restarted("expired")
                    continue
                problem = f"the API server answered {exc.status} {exc.reason}".rstrip()
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, WatchFailed) as exc:
                problem = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug here must not end the watching for good
                log.exception("watching %s", self.what)
                problem = type(exc).__name__
            self.restarted("error")
            pause = delay * random.uniform(0.5, 1.0)
            log.warning("watching %s: %s; again in %.1f s", self.what, problem, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, MAX_DELAY_SECONDS)

    async def _get(self, query: list[tuple[str, Any]], timeout: float) -> Any:
        """The open response; ApiException for an error status (read and closed)."""
        response = await self.api.call_api(
            self.path,
            "GET",
            query_params=[("fieldSelector", self.field_selector), *query],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        if not 200 <= response.status <= 299:
            async with response:
                await response.read()
            raise ApiException(status=response.status, reason=response.reason)
        return response

    async def list(self) -> tuple[list[Object], str]:
        """Every matching object, in pages, and the list's resourceVersion."""
        items: list[Object] = []
        token = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", PAGE_SIZE)]
            if token:
                query.append(("continue", token))
            response = await self._get(query, REQUEST_TIMEOUT_SECONDS)
            async with response:
                page = json.loads(await response.read())
            items += page.get("items") or []
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or ""
            if not token:
                return items, str(metadata.get("resourceVersion", ""))

    async def watch(self, version: str) -> str:
        """Watch from ``version`` until the API server ends the watch; the last version
        seen, from which the next watch resumes."""
        seconds = random.randint(*WATCH_SECONDS)
        opened = time.monotonic()
        events = 0
        async for kind, obj in self._events(version, seconds):
            events += 1
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind != "BOOKMARK":
                self.changed(kind, obj)
        if not events and time.monotonic() - opened < SHORTEST_WATCH_SECONDS:
            raise WatchFailed("the API server ended the watch at once")
        return version

    async def _events(self, version: str, seconds: int) -> AsyncIterator[tuple[str, Object]]:
        response = await self._get(
            [
                ("watch", "true"),
                ("resourceVersion", version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", seconds),
            ],
            seconds + REQUEST_TIMEOUT_SECONDS,
        )
        async with response:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise WatchFailed(f"not a watch event: {line[:80]!r}")
                kind, obj = str(event.get("type")), event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise WatchFailed(f"the watch ended: {obj.get('code')} {obj.get('reason')}")
                yield kind, obj
