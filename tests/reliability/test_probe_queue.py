"""A probe waits for a free place behind ``probe.maxConcurrent`` no longer than
``probe.timeoutSeconds``.

A registry that accepts connections and never answers holds every probe place for
a whole probe timeout. The admissions behind it used to wait in the queue until
their own deadline; now each queued probe gives up after ``probe.timeoutSeconds``
(UNKNOWN, reason "overloaded", not cached) and the admission answers by
``onProbeFailure``. Driven through the probe stack the server builds
(``visibility.probing``) and the Admitter, against a real socket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.fakes.registries import SilentAcceptingRegistry
from tests.reviews import pod, review
from webhook import config
from webhook.admission import Admitter
from webhook.egress import Egress
from webhook.visibility import probing

PROBE_TIMEOUT = 1.0
DEADLINE = 6.0  # far above the probe timeout, so waiting for it would show


@pytest.fixture
async def silent_registry() -> AsyncIterator[SilentAcceptingRegistry]:
    registry = SilentAcceptingRegistry()
    await registry.start()
    yield registry
    await registry.stop()


async def test_admissions_queued_behind_a_silent_registry_wait_one_probe_timeout(
    silent_registry: SilentAcceptingRegistry,
) -> None:
    settings = config.parse(
        {
            "appSlug": "my-app",
            "licenseID": "l",
            "probe": {
                "timeoutSeconds": PROBE_TIMEOUT,
                "maxConcurrent": 1,
                "insecureRegistries": ["127.0.0.1"],
            },
            "visibility": {"onProbeFailure": "deny"},
            "server": {"admissionDeadlineSeconds": DEADLINE},
        }
    )
    images = [silent_registry.image(f"team/app{i}") for i in range(3)]
    async with probing(settings, Egress()) as resolver:
        admitter = Admitter(settings, resolver=resolver)
        loop = asyncio.get_running_loop()
        # the first admission takes the only place; the next two queue behind it
        first = asyncio.create_task(
            admitter.admit(json.dumps(review(pod(images[0]))).encode(), "mutate")
        )
        await asyncio.sleep(0.1)
        started = loop.time()
        queued = await asyncio.gather(
            *(
                admitter.admit(json.dumps(review(pod(image))).encode(), "mutate")
                for image in images[1:]
            )
        )
        queued_seconds = loop.time() - started
        await first
        # The first place frees after one probe timeout: the second probe takes it, the
        # third has waited as long and gives up.
        assert resolver.refused == 1
        cached = [
            resolver.lookup(*key)
            for key in ((silent_registry.domain, f"team/app{i}") for i in range(3))
        ]
    print(
        f"\nqueued admissions answered after {queued_seconds:.2f}s "
        f"(probe timeout {PROBE_TIMEOUT}s, deadline {DEADLINE}s)"
    )
    for outcome, image in zip(queued, images[1:], strict=True):
        # as for any registry that cannot be asked (onProbeFailure: deny)
        response = outcome.answer["response"]
        assert response["allowed"] is False
        assert "status" in response
        assert "onProbeFailure is deny" in response["status"]["message"], response
        assert image in response["status"]["message"]
    # at most a wait and a probe, each bounded by the probe timeout; not the deadline
    assert queued_seconds < 2 * PROBE_TIMEOUT + 1.5 < DEADLINE
    # the timed-out probe is cached as unknown; the one that never started is not
    assert cached[1] is not None and cached[2] is None
