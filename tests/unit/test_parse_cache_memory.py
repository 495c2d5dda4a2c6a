"""The parsed-image cache keeps a bounded amount of memory, whatever clients send.

Image strings come from anyone who may create a Pod. Only references that parse
are cached, and only up to ``images.CACHEABLE_LENGTH`` characters (every part but
the host is bounded by the grammar), so the cache holds at most
``CACHE_SIZE * CACHEABLE_LENGTH`` characters of references. Memory is measured
with tracemalloc around 100 real admissions (``Admitter.admit``, the /mutate path).
"""

from __future__ import annotations

import gc
import json
import logging
import tracemalloc
from collections.abc import Iterator

import pytest

from tests.reviews import pod, review
from webhook import config, images
from webhook.admission import Admitter

SETTINGS = config.parse({"appSlug": "my-app", "licenseID": "lic"})
HUGE = 512 * 1024
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    images._cached_parse.cache_clear()
    yield
    images._cached_parse.cache_clear()


async def growth_over_100_admissions(image_of: dict[int, str]) -> tuple[int, list[str]]:
    """Bytes still allocated after 100 admissions (image i of each), and their warnings
    (cut to 400 characters, so that keeping them holds no memory to speak of).

    The cache must not have grown either.
    """
    admitter = Admitter(SETTINGS)
    bodies = [json.dumps(review(pod(image_of[i]))).encode() for i in range(100)]
    warnings: list[str] = []
    await admitter.admit(json.dumps(review(pod("nginx:1.25"))).encode(), "mutate")  # warm up
    cached = images._cached_parse.cache_info().currsize
    gc.collect()
    # The test runner's log capture keeps every record (each names its image);
    # a server's log handler writes them out and keeps nothing.
    logging.disable(logging.CRITICAL)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, body in enumerate(bodies):
            outcome = await admitter.admit(body, "mutate")
            warnings.extend(w[:400] for w in outcome.answer["response"].get("warnings", []))
            bodies[i] = b""  # the request itself is gone once answered
        del outcome
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    assert images._cached_parse.cache_info().currsize == cached
    return after - before, warnings


async def test_huge_digests_under_an_unknown_algorithm_are_refused_and_not_kept() -> None:
    image_of = {i: f"quay.io/my-org/api{i}@sha999:" + "a" * HUGE for i in range(100)}
    growth, warnings = await growth_over_100_admissions(image_of)
    assert len(warnings) == 100
    assert all("digest algorithm 'sha999' is not supported" in w for w in warnings)
    # 100 cached references would be 50 MiB; nothing of them is kept.
    assert growth < 1 * MiB, growth


async def test_huge_valid_references_are_parsed_but_not_cached() -> None:
    # The grammar does not bound a host's length: such a reference is valid.
    host = ".".join(["a" * 60] * (HUGE // 61))
    image_of = {i: f"{host}/team/api{i}:v1" for i in range(100)}
    assert images.parse(image_of[0]).domain == host
    growth, warnings = await growth_over_100_admissions(image_of)
    assert len(warnings) == 100  # its proxied form would not be a valid reference
    assert growth < 1 * MiB, growth


def test_a_full_cache_of_the_longest_cacheable_references_stays_bounded() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(images.CACHE_SIZE + 100):
            ref = longest_cacheable(i)
            assert images.parse(ref).original == ref
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert images._cached_parse.cache_info().currsize == images.CACHE_SIZE
    # Each entry holds the reference and its parts (about twice its length) and the
    # objects around them: 8 MB measured for 4096 entries of 780 characters.
    assert held < images.CACHE_SIZE * 4 * images.CACHEABLE_LENGTH, held


def longest_cacheable(i: int) -> str:
    """A valid reference of exactly CACHEABLE_LENGTH characters, distinct for each i."""
    digest = "sha512:" + f"{i:0128x}"
    tag = "t" * images.TAG_MAX
    path = "p" * images.NAME_MAX
    host = ".".join(["h" * 63] * 4)[:253] + ":65535"
    ref = f"{host}/{path}:{tag}@{digest}"
    assert len(ref) == images.CACHEABLE_LENGTH
    return ref
