"""The whole admission in-process, N times, for counting its instructions (README).

``python -m bench.instructions N`` answers the warm-3 Pod N times as the server
does (``Admitter.admit`` and ``review.encode``, the JSON log line written to
/dev/null, metrics on, the visibility cache warm). Run it under callgrind at two
values of N; the difference over the difference in N is the count per admission,
start-up and warm-up left out::

    for n in 200 2000; do
        valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
            .venv/bin/python -m bench.instructions $n
    done
    # (total Ir at 2000 - total Ir at 200) / 1800, totals from callgrind_annotate
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from bench.scenarios import NAMESPACE, review_body
from webhook import config, logs, review
from webhook.admission import Admitter
from webhook.metrics import Metrics
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.visibility import VisibilityResolver

PRIVATE, PUBLIC = "127.0.0.2", "127.0.0.3"
IMAGES = (
    f"{PRIVATE}/team/api:v1.0.1",
    f"{PRIVATE}/team/worker:v1.0.1",
    f"{PUBLIC}/library/nginx:1.25",
)
SETTINGS = {
    "appSlug": "bench",
    "licenseID": "bench-license-id",
    "namespaces": [NAMESPACE],
    "probe": {"insecureRegistries": [PRIVATE, PUBLIC], "allowPrivateNetworks": True},
}


async def probe(domain: str, path: str, reference: str) -> ProbeResult:
    if domain == PRIVATE:
        return ProbeResult(Visibility.PRIVATE, Reason.AUTH_REQUIRED)
    return ProbeResult(Visibility.PUBLIC, Reason.ANONYMOUS_OK)


async def admissions(count: int) -> None:
    settings = config.parse(SETTINGS)
    metrics = Metrics()
    resolver = VisibilityResolver(settings.visibility, probe, 4, metrics=metrics)
    admitter = Admitter(settings, resolver=resolver, metrics=metrics)
    body = review_body("bench-warm-3", "web-0", IMAGES)
    outcome = await admitter.admit(body, "mutate")  # fills the cache
    assert outcome.label == "mutated", outcome.answer
    for _ in range(count):
        review.encode((await admitter.admit(body, "mutate")).answer)
    await resolver.close()


def main() -> None:
    logs.setup("json", "INFO")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    with open(os.devnull, "w", encoding="utf-8") as sink:
        handler.setStream(sink)
        asyncio.run(admissions(int(sys.argv[1])))


if __name__ == "__main__":
    main()
