"""Repository visibility: overrides, then a TTL cache, then one shared probe (docs/design.md §2).

Visibility is a property of the repository, so the cache key is ``(domain, path)``.
Public and private results live ``ttlSeconds``, unknown ones
``failureTtlSeconds`` (or the registry's ``Retry-After``, capped at ``ttlSeconds``);
lifetimes are jittered by ±10% so entries filled together do not all expire
together. Concurrent misses for one repository share one probe task (single
flight), and a semaphore bounds how many probes talk to registries at once; a
probe waits for a free place at most ``probe.timeoutSeconds`` (then it is UNKNOWN,
reason "overloaded", not cached), so a registry that never answers holds each
place no longer than one probe timeout and the queue behind it no longer either.

An admission waits for its probes only until its deadline: what is not known by
then is UNKNOWN for that admission, while the probe keeps running in the
background (shielded from the caller's cancellation) and fills the cache for
the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import TLRUCache

from webhook import registry
from webhook.config import Settings, VisibilitySettings
from webhook.egress import Egress
from webhook.images import ImageRef
from webhook.policy import Repository
from webhook.probes import ProbeResult, Reason, Visibility

if TYPE_CHECKING:
    from webhook.metrics import Metrics

log = logging.getLogger(__name__)

Probe = Callable[[str, str, str], Awaitable[ProbeResult]]

DEFAULT_JITTER = 0.1
# Probes queued beyond this many per permitted concurrent probe are refused
# (UNKNOWN, not cached): a flood of pods naming random registries must not grow
# an unbounded queue of tasks.
PENDING_PER_SLOT = 32


@dataclass(frozen=True, slots=True)
class Resolved:
    visibility: Visibility
    reason: Reason
    cached: bool


@dataclass(frozen=True, slots=True)
class _Entry:
    resolved: Resolved  # the answer a cache hit gives (built once, not per hit)
    ttl: float  # seconds this entry lives, jitter included


class VisibilityResolver:
    """Overrides, then the cache, then one shared, bounded, background-safe probe."""

    def __init__(
        self,
        visibility: VisibilitySettings,
        probe: Probe,
        max_concurrent: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        jitter: float = DEFAULT_JITTER,
        metrics: Metrics | None = None,
        queue_timeout: float | None = None,
    ) -> None:
        """``queue_timeout``: seconds a probe may wait for one of the
        ``max_concurrent`` places (probe.timeoutSeconds); None: no bound."""
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._settings = visibility
        self._probe = probe
        self._clock = clock
        self._jitter = max(0.0, min(jitter, 0.5))
        self._random = random.Random()
        self._metrics = metrics
        # label children bound once: labels() costs more than the increment itself
        self._hit = metrics.cache_lookups.labels("hit") if metrics is not None else None
        self._miss = metrics.cache_lookups.labels("miss") if metrics is not None else None
        self._cache: TLRUCache[Repository, _Entry] = TLRUCache(
            maxsize=visibility.cache_size,
            ttu=lambda _key, entry, now: now + entry.ttl,
            timer=clock,
        )
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._queue_timeout = queue_timeout
        self._max_concurrent = max_concurrent
        self._inflight: dict[Repository, asyncio.Task[Resolved]] = {}
        self._max_pending = max_concurrent * PENDING_PER_SLOT
        self._closed = False
        self.hits = 0  # answered from the cache
        self.misses = 0  # not in the cache: started a probe or joined one in flight
        self.joined = 0  # misses that shared a probe already in flight
        self.probes = 0  # probes started
        self.refused = 0  # misses answered UNKNOWN because too many probes were pending
        if metrics is not None:
            metrics.track_cache_size(lambda: self.size)

    # --- metrics -------------------------------------------------------------

    @property
    def size(self) -> int:
        """Live entries in the cache (expired ones are dropped first)."""
        self._cache.expire()
        return len(self._cache)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # --- resolving -----------------------------------------------------------

    def lookup(self, domain: str, path: str) -> Resolved | None:
        """The answer without waiting: an override or a live cache entry, else None."""
        known = self._known(domain, path)
        if known is not None and known.cached:
            self._count_hits(1)
        return known

    def _count_hits(self, hits: int) -> None:
        self.hits += hits
        if self._hit is not None:
            self._hit.inc(hits)

    def _known(self, domain: str, path: str) -> Resolved | None:
        """lookup() without counting: an override or a live cache entry, else None."""
        if self._settings.overrides:
            override = self._settings.override_for(f"{domain}/{path}")
            if override is not None:
                return Resolved(override, Reason.OVERRIDE, cached=False)
        try:
            # one expiry check; .get() would check twice (__contains__, then __getitem__)
            entry = self._cache[(domain, path)]
        except KeyError:
            return None
        return entry.resolved

    async def resolve(self, domain: str, path: str, reference: str) -> Resolved:
        """Overrides first (reason "override"), then the cache, then one shared probe.

        Cancelling the caller does not cancel the probe: it finishes and fills the cache.
        """
        known = self.lookup(domain, path)
        if known is not None:
            return known
        task = self._probe_task(domain, path, reference)
        if task is None:
            return Resolved(Visibility.UNKNOWN, Reason.OVERLOADED, cached=False)
        return await asyncio.shield(task)

    async def resolve_all(
        self, wanted: Mapping[Repository, ImageRef], timeout: float
    ) -> dict[Repository, Visibility]:
        """Every repository's visibility, all probed concurrently, within ``timeout``.

        A repository not settled by the timeout is UNKNOWN for this call; its
        probe keeps running and fills the cache.
        """
        # The warm path, every repository known: no second pass, no second mapping.
        found: dict[Repository, Visibility] = {}
        hits = 0
        for key in wanted:
            known = self._known(*key)
            if known is None:
                break
            found[key] = known.visibility
            hits += known.cached
        else:
            if hits:
                self._count_hits(hits)
            return found
        return {key: r.visibility for key, r in (await self.resolve_many(wanted, timeout)).items()}

    async def resolve_many(
        self, wanted: Mapping[Repository, ImageRef], timeout: float
    ) -> dict[Repository, Resolved]:
        """Like resolve_all, with the reason and whether it came from the cache."""
        results: dict[Repository, Resolved] = {}
        waiting: dict[asyncio.Task[Resolved], Repository] = {}
        hits = 0
        for key, ref in wanted.items():
            known = self._known(*key)
            if known is not None:
                results[key] = known
                hits += known.cached
                continue
            task = self._probe_task(key[0], key[1], ref.reference)
            if task is None:
                results[key] = Resolved(Visibility.UNKNOWN, Reason.OVERLOADED, cached=False)
            elif task.done():
                results[key] = task.result()
            else:
                waiting[task] = key
        if hits:
            self._count_hits(hits)  # one increment per admission, not per repository
        if waiting:
            # asyncio.wait neither raises on timeout nor cancels what is still
            # running: the probe tasks live on and fill the cache.
            done: set[asyncio.Task[Resolved]] = set()
            if timeout > 0:  # a deadline already past: answer now, probe in the background
                done, _pending = await asyncio.wait(waiting, timeout=timeout)
            for task, key in waiting.items():
                results[key] = (
                    task.result()
                    if task in done
                    else Resolved(Visibility.UNKNOWN, Reason.DEADLINE, cached=False)
                )
        return results

    def _probe_task(self, domain: str, path: str, reference: str) -> asyncio.Task[Resolved] | None:
        """The probe in flight for this repository, started if there is none."""
        key = (domain, path)
        self.misses += 1
        if self._miss is not None:
            self._miss.inc()
        task = self._inflight.get(key)
        if task is not None:
            self.joined += 1
            return task
        if self._closed or len(self._inflight) >= self._max_pending:
            # refused, not queued; the caller answers UNKNOWN and nothing is cached
            self.refused += 1
            return None
        self.probes += 1
        task = asyncio.create_task(self._run_probe(key, reference), name=f"probe {domain}/{path}")
        self._inflight[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))
        return task

    def _forget(self, key: Repository, task: asyncio.Task[Resolved]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio never logs "never retrieved"

    async def _run_probe(self, key: Repository, reference: str) -> Resolved:
        domain, path = key
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._semaphore.acquire()
        except TimeoutError:
            self.refused += 1
            log.debug(
                "visibility probe for %s/%s not started: all %d places were busy for %gs",
                domain,
                path,
                self._max_concurrent,
                self._queue_timeout,
            )
            return Resolved(Visibility.UNKNOWN, Reason.OVERLOADED, cached=False)
        try:
            started = time.perf_counter()
            try:
                result = await self._probe(domain, path, reference)
            except Exception:  # the probe promises not to raise; be safe anyway
                log.exception("visibility probe for %s/%s raised", domain, path)
                result = ProbeResult(Visibility.UNKNOWN, Reason.INTERNAL_ERROR)
            elapsed = time.perf_counter() - started
        finally:
            self._semaphore.release()
        if self._metrics is not None:
            self._metrics.probes.labels(str(result.visibility), result.reason).inc()
            self._metrics.probe_duration.observe(elapsed)
        ttl = self._ttl(result)
        if ttl > 0:
            resolved = Resolved(result.visibility, result.reason, cached=True)
            self._cache[key] = _Entry(resolved, ttl)
        log.debug(
            "visibility %s/%s: %s (%s), cached for %.1fs",
            domain,
            path,
            result.visibility,
            result.reason,
            ttl,
        )
        return Resolved(result.visibility, result.reason, cached=False)

    def _ttl(self, result: ProbeResult) -> float:
        settings = self._settings
        if result.visibility is not Visibility.UNKNOWN:
            return self._jittered(settings.ttl_seconds)
        if result.retry_after is not None:
            # the registry said when to ask again: honour it exactly, within reason
            return min(max(result.retry_after, 0.0), settings.ttl_seconds)
        return self._jittered(settings.failure_ttl_seconds)

    def _jittered(self, seconds: float) -> float:
        if not self._jitter:
            return seconds
        return seconds * self._random.uniform(1 - self._jitter, 1 + self._jitter)

    # --- lifecycle -----------------------------------------------------------

    async def close(self) -> None:
        """Cancel the probes still in flight and wait for them to finish.

        Afterwards cache hits still answer; a miss is UNKNOWN (reason "overloaded").
        """
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

    def clear(self) -> None:
        """Forget every cached result (probes in flight still fill the cache)."""
        self._cache.clear()


@contextlib.asynccontextmanager
async def probing(
    settings: Settings, egress: Egress, *, metrics: Metrics | None = None
) -> AsyncIterator[VisibilityResolver]:
    """The probe stack (registry client, resolver) for the server and the CLI, going
    out through ``egress``; closed in reverse order on exit."""
    async with contextlib.AsyncExitStack() as stack:
        client = registry.RegistryClient.open(settings.probe, egress)
        stack.push_async_callback(client.close)
        resolver = VisibilityResolver(
            settings.visibility,
            client.probe,
            settings.probe.max_concurrent,
            metrics=metrics,
            queue_timeout=settings.probe.timeout_seconds,
        )
        stack.push_async_callback(resolver.close)
        yield resolver
