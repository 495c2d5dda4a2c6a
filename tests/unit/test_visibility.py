"""VisibilityResolver: overrides, TTL cache, single flight, semaphore, deadline."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

from webhook.config import Override, VisibilitySettings
from webhook.images import ImageRef, parse
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.visibility import Resolved, VisibilityResolver

PUBLIC = ProbeResult(Visibility.PUBLIC, Reason.ANONYMOUS_OK)
PRIVATE = ProbeResult(Visibility.PRIVATE, Reason.AUTH_REQUIRED)
DOWN = ProbeResult(Visibility.UNKNOWN, Reason.SERVER_ERROR)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedProbe:
    """Answers from a function of the repository; records every call."""

    def __init__(self, answer: Callable[[str, str], ProbeResult] | ProbeResult = PUBLIC) -> None:
        self.answer = answer
        self.calls: Counter[tuple[str, str]] = Counter()
        self.references: list[str] = []

    async def __call__(self, domain: str, path: str, reference: str) -> ProbeResult:
        self.calls[(domain, path)] += 1
        self.references.append(reference)
        await asyncio.sleep(0)
        if isinstance(self.answer, ProbeResult):
            return self.answer
        return self.answer(domain, path)


class GatedProbe:
    """Blocks every probe until released; tracks concurrency."""

    def __init__(self, result: ProbeResult = PRIVATE) -> None:
        self.result = result
        self.gate = asyncio.Event()
        self.running = 0
        self.peak = 0
        self.calls = 0
        self.cancelled = 0

    async def __call__(self, domain: str, path: str, reference: str) -> ProbeResult:
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return self.result


def settings(**kwargs: object) -> VisibilitySettings:
    values: dict[str, object] = {"ttl_seconds": 3600.0, "failure_ttl_seconds": 30.0}
    values.update(kwargs)
    return VisibilitySettings(**values)  # type: ignore[arg-type]


def resolver(
    probe: object,
    *,
    clock: FakeClock | None = None,
    max_concurrent: int = 8,
    **kwargs: object,
) -> VisibilityResolver:
    return VisibilityResolver(
        settings(**kwargs),
        probe,  # type: ignore[arg-type]
        max_concurrent,
        clock or FakeClock(),
        jitter=0.0,
    )


def wanted(*images: str) -> dict[tuple[str, str], ImageRef]:
    refs = [parse(i) for i in images]
    return {(r.domain, r.path): r for r in refs}


async def test_overrides_come_first_and_are_never_probed() -> None:
    probe = ScriptedProbe(PUBLIC)
    r = resolver(
        probe,
        overrides=(
            Override("quay.io/my-org/*", Visibility.PRIVATE),
            Override("quay.io/*", Visibility.PUBLIC),
        ),
    )
    assert await r.resolve("quay.io", "my-org/api", "v1") == Resolved(
        Visibility.PRIVATE, Reason.OVERRIDE, cached=False
    )
    assert (await r.resolve("quay.io", "other/api", "v1")).visibility is Visibility.PUBLIC
    assert probe.calls == {}
    assert await r.resolve_all(wanted("quay.io/my-org/api:v1"), 1.0) == {
        ("quay.io", "my-org/api"): Visibility.PRIVATE
    }
    assert probe.calls == {}


async def test_positive_results_live_ttl_seconds() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(PRIVATE)
    r = resolver(probe, clock=clock, ttl_seconds=100.0)
    first = await r.resolve("quay.io", "org/app", "v1")
    assert first == Resolved(Visibility.PRIVATE, Reason.AUTH_REQUIRED, cached=False)
    clock.advance(99.0)
    assert await r.resolve("quay.io", "org/app", "v2") == Resolved(
        Visibility.PRIVATE, Reason.AUTH_REQUIRED, cached=True
    )
    assert probe.calls[("quay.io", "org/app")] == 1
    clock.advance(1.5)
    assert (await r.resolve("quay.io", "org/app", "v3")).cached is False
    assert probe.calls[("quay.io", "org/app")] == 2
    assert probe.references == ["v1", "v3"]
    assert (r.hits, r.misses, r.probes) == (1, 2, 2)


async def test_unknown_results_live_failure_ttl_seconds() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(DOWN)
    r = resolver(probe, clock=clock, ttl_seconds=3600.0, failure_ttl_seconds=30.0)
    await r.resolve("ghcr.io", "org/app", "v1")
    clock.advance(29.0)
    assert (await r.resolve("ghcr.io", "org/app", "v1")).cached is True
    clock.advance(2.0)
    assert (await r.resolve("ghcr.io", "org/app", "v1")).cached is False
    assert probe.calls[("ghcr.io", "org/app")] == 2


@pytest.mark.parametrize(
    ("retry_after", "cached_for"),
    [
        (5.0, 5.0),  # shorter than failureTtlSeconds: honoured
        (120.0, 120.0),  # longer: honoured as well
        (99999.0, 3600.0),  # capped at ttlSeconds
    ],
)
async def test_retry_after_sets_the_ttl_of_an_unknown_result(
    retry_after: float, cached_for: float
) -> None:
    clock = FakeClock()
    probe = ScriptedProbe(ProbeResult(Visibility.UNKNOWN, Reason.RATE_LIMITED, retry_after))
    r = resolver(probe, clock=clock, failure_ttl_seconds=30.0, ttl_seconds=3600.0)
    await r.resolve("docker.io", "library/nginx", "latest")
    clock.advance(cached_for - 0.5)
    hit = await r.resolve("docker.io", "library/nginx", "latest")
    assert hit == Resolved(Visibility.UNKNOWN, Reason.RATE_LIMITED, cached=True)
    clock.advance(1.0)
    assert (await r.resolve("docker.io", "library/nginx", "latest")).cached is False


async def test_retry_after_zero_is_not_cached() -> None:
    probe = ScriptedProbe(ProbeResult(Visibility.UNKNOWN, Reason.RATE_LIMITED, 0.0))
    r = resolver(probe)
    await r.resolve("docker.io", "library/nginx", "latest")
    await r.resolve("docker.io", "library/nginx", "latest")
    assert probe.calls[("docker.io", "library/nginx")] == 2
    assert r.size == 0


async def test_jitter_spreads_expiry_within_ten_percent() -> None:
    clock = FakeClock()
    probe = ScriptedProbe(PUBLIC)
    r = VisibilityResolver(settings(ttl_seconds=1000.0), probe, 8, clock)  # default jitter
    repos = wanted(*(f"quay.io/org/app{i}:v1" for i in range(60)))
    await r.resolve_all(repos, 5.0)
    assert r.size == 60
    clock.advance(899.0)
    assert r.size == 60
    clock.advance(101.0)  # at exactly ttlSeconds some have expired, some not
    assert 0 < r.size < 60
    clock.advance(101.0)
    assert r.size == 0


async def test_cache_is_bounded_by_cache_size() -> None:
    probe = ScriptedProbe(PUBLIC)
    r = resolver(probe, cache_size=5)
    await r.resolve_all(wanted(*(f"quay.io/org/app{i}:v1" for i in range(20))), 5.0)
    assert r.size == 5
    assert sum(probe.calls.values()) == 20


async def test_concurrent_misses_share_one_probe() -> None:
    probe = GatedProbe(PRIVATE)
    r = resolver(probe)
    callers: list[asyncio.Task[Resolved | dict[tuple[str, str], Visibility]]] = [
        asyncio.create_task(r.resolve("quay.io", "org/app", "v1")) for _ in range(25)
    ]
    callers += [
        asyncio.create_task(r.resolve_all(wanted("quay.io/org/app:v2"), 5.0)) for _ in range(25)
    ]
    await asyncio.sleep(0.01)
    assert probe.calls == 1
    assert r.in_flight == 1
    probe.gate.set()
    results = await asyncio.gather(*callers)
    assert probe.calls == 1
    assert all(
        res == {("quay.io", "org/app"): Visibility.PRIVATE}
        if isinstance(res, dict)
        else res.visibility is Visibility.PRIVATE
        for res in results
    )
    assert r.joined == 49
    assert r.in_flight == 0


async def test_semaphore_bounds_outbound_probes() -> None:
    probe = GatedProbe(PUBLIC)
    r = resolver(probe, max_concurrent=3)
    task = asyncio.create_task(
        r.resolve_all(wanted(*(f"quay.io/org/app{i}:v1" for i in range(10))), 5.0)
    )
    await asyncio.sleep(0.02)
    assert probe.running == 3
    assert r.in_flight == 10
    probe.gate.set()
    result = await task
    assert set(result.values()) == {Visibility.PUBLIC}
    assert probe.peak == 3
    assert probe.calls == 10


async def test_deadline_answers_unknown_and_the_probe_fills_the_cache_later() -> None:
    probe = GatedProbe(PRIVATE)
    r = resolver(probe)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await r.resolve_all(wanted("quay.io/org/slow:v1"), 0.05)
    assert loop.time() - started < 1.0
    assert result == {("quay.io", "org/slow"): Visibility.UNKNOWN}
    assert r.in_flight == 1  # still probing in the background
    probe.gate.set()
    await asyncio.sleep(0.01)
    assert r.in_flight == 0
    assert await r.resolve("quay.io", "org/slow", "v1") == Resolved(
        Visibility.PRIVATE, Reason.AUTH_REQUIRED, cached=True
    )
    assert probe.calls == 1


async def test_zero_deadline_still_starts_the_probe() -> None:
    probe = ScriptedProbe(PUBLIC)
    r = resolver(probe)
    assert await r.resolve_all(wanted("quay.io/org/app:v1"), 0.0) == {
        ("quay.io", "org/app"): Visibility.UNKNOWN
    }
    await asyncio.sleep(0.01)
    assert (await r.resolve("quay.io", "org/app", "v1")).cached is True


async def test_cancelling_a_caller_does_not_cancel_the_shared_probe() -> None:
    probe = GatedProbe(PUBLIC)
    r = resolver(probe)
    first = asyncio.create_task(r.resolve("quay.io", "org/app", "v1"))
    second = asyncio.create_task(r.resolve("quay.io", "org/app", "v1"))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)
    assert probe.cancelled == 0
    probe.gate.set()
    assert (await second).visibility is Visibility.PUBLIC
    assert first.cancelled()


async def test_mixed_cached_and_new_repositories() -> None:
    probe = ScriptedProbe(lambda _d, p: PUBLIC if p.startswith("pub") else PRIVATE)
    r = resolver(probe)
    await r.resolve("quay.io", "pub/app", "v1")
    result = await r.resolve_many(wanted("quay.io/pub/app:v1", "quay.io/priv/app:v1"), 1.0)
    assert result == {
        ("quay.io", "pub/app"): Resolved(Visibility.PUBLIC, Reason.ANONYMOUS_OK, cached=True),
        ("quay.io", "priv/app"): Resolved(Visibility.PRIVATE, Reason.AUTH_REQUIRED, cached=False),
    }


async def test_a_probe_that_raises_is_unknown() -> None:
    async def broken(domain: str, path: str, reference: str) -> ProbeResult:
        raise RuntimeError("boom")

    r = resolver(broken)
    assert await r.resolve("quay.io", "org/app", "v1") == Resolved(
        Visibility.UNKNOWN, Reason.INTERNAL_ERROR, cached=False
    )


async def test_too_many_pending_probes_are_refused_not_queued() -> None:
    probe = GatedProbe(PUBLIC)
    r = resolver(probe, max_concurrent=1)  # at most 32 pending
    result = await r.resolve_many(wanted(*(f"quay.io/org/app{i}:v1" for i in range(40))), 0.01)
    reasons = Counter(v.reason for v in result.values())
    assert reasons == {"deadline": 32, "overloaded": 8}
    assert r.in_flight == 32
    await r.close()


async def test_close_cancels_probes_in_flight() -> None:
    probe = GatedProbe(PUBLIC)
    r = resolver(probe)
    await r.resolve_all(wanted("quay.io/org/a:v1", "quay.io/org/b:v1"), 0.01)
    assert r.in_flight == 2
    await r.close()
    assert probe.cancelled == 2
    assert r.in_flight == 0
    assert (await r.resolve("quay.io", "org/c", "v1")).visibility is Visibility.UNKNOWN
