"""The admission line written straight from its fields is the line logging writes.

With ``--log-format json`` the admission's line skips LogRecord, Formatter and
Handler (logs.emit_json). Here the same admissions are logged once that way and
once through logging's own path (the same handler, forced there by a filter that
lets everything through), with the clocks scripted so both see the same times:
the bytes must be identical, request fields that need escaping and non-ASCII ones
included. The fast path only applies where logging would write to that one JSON
handler: the level set on the logger, the text format, other handlers and filters
keep logging's own path. And the formatter still encodes every field as it did
when it asked orjson for every option at once (non-string keys, datetimes, what
orjson refuses).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from tests.reviews import ONLINE_CONFIG, StaticResolver, pod, review
from webhook import config, logs
from webhook.admission import Admitter, Endpoint
from webhook.probes import Visibility

TABLE = {("quay.io", "private-org/api"): Visibility.PRIVATE}
ADMISSION_LOGGER = logging.getLogger("webhook.admission")
Handler = logging.StreamHandler[Any]
ODD = 'quote " backslash \\ newline \n tab \t nul \x00 del \x7f sep \u2028 bidi \u202e'


def bodies() -> list[tuple[bytes, Endpoint]]:
    """Admissions whose lines carry every optional field and awkward text."""
    private = "quay.io/private-org/api:v1"
    reviews: list[tuple[dict[str, Any], Endpoint]] = [
        (review(pod(private, "nginx:1.25", name="web-0")), "mutate"),
        (review(pod(private, "quay.io/Bad:1", name="n" * 300)), "validate"),
        (review(pod("nginx:1.25", name="café-日本-🚀", namespace="名前")), "mutate"),
        (review(pod(private, name=ODD)), "mutate"),
        (review(pod(private, name=ODD)), "validate"),
        (review(pod("nginx", name="w"), kind=ODD, operation="UPDATE"), "mutate"),
        (review(pod(f"quay.io/private-org/api:{'v' * 100}"), dry_run=True), "mutate"),
        (review(pod(private, namespace="elsewhere")), "mutate"),
    ]
    return [(json.dumps(body).encode(), endpoint) for body, endpoint in reviews]


@pytest.fixture
def json_setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Handler]]:
    """logs.setup("json") as `serve` runs it, writing to a string, called in the test
    (pytest adds its own handlers for the test's call); logging put back after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, ADMISSION_LOGGER.level, ADMISSION_LOGGER.propagate)
    monkeypatch.setattr("time.time", lambda: 1_700_000_000.75)

    def setup() -> Handler:
        logs.setup("json", "INFO")
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(io.StringIO())
        return handler

    try:
        yield setup
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        ADMISSION_LOGGER.setLevel(saved[2])
        ADMISSION_LOGGER.propagate = saved[3]


def admit_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every body once, each admission lasting 0.1234567 s, 1.5 s, ... (scripted)."""
    durations = itertools.cycle((0.1234567, 1.5, 0.00004999, 2e-7, 12.3456789))
    ticks = itertools.chain.from_iterable((0.0, d) for d in durations)
    monkeypatch.setattr("time.perf_counter", lambda: next(ticks))
    admitter = Admitter(config.parse(ONLINE_CONFIG), resolver=StaticResolver(TABLE))

    async def run() -> None:
        for body, endpoint in BODIES:
            await admitter.admit(body, endpoint)

    asyncio.run(run())


BODIES = bodies()


def logged(handler: Handler) -> str:
    stream = handler.stream
    assert isinstance(stream, io.StringIO)
    text = stream.getvalue()
    handler.setStream(io.StringIO())
    return text


def test_fast_line_is_the_formatters_line(
    json_setup: Callable[[], Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = json_setup()
    taken: list[bool] = []
    emit_json = logs.emit_json

    def counted(*args: Any) -> bool:
        taken.append(emit_json(*args))
        return taken[-1]

    monkeypatch.setattr(logs, "emit_json", counted)
    admit_all(monkeypatch)
    fast = logged(handler)
    assert taken == [True] * len(BODIES)

    handler.addFilter(lambda record: True)  # changes no line; logging's own path
    taken.clear()
    admit_all(monkeypatch)
    general = logged(handler)
    assert taken == [False] * len(BODIES)

    assert fast == general
    assert fast.count("\n") == len(BODIES) and fast.endswith("\n")  # one line each
    lines = [json.loads(line) for line in fast.split("\n")[:-1]]  # not at U+2028
    assert lines[3]["name"] == ODD and lines[5]["kind"] == ODD
    assert lines[2]["name"] == "café-日本-🚀" and "café-日本-🚀" in fast  # not \u-escaped
    assert lines[1]["reasons"] and lines[1]["warnings"] and lines[0]["images"]
    assert [line["duration_ms"] for line in lines[:5]] == [123.457, 1500.0, 0.05, 0.0, 12345.679]
    assert lines[0]["message"] == "mutate Pod my-app/web-0: mutated in 123.5 ms"
    assert lines[0]["time"] == logs.JSONFormatter().formatTime(
        logging.makeLogRecord({"created": 1_700_000_000.75}), "%Y-%m-%dT%H:%M:%S"
    )


def test_the_level_set_on_the_logger_holds(
    json_setup: Callable[[], Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = json_setup()
    ADMISSION_LOGGER.setLevel(logging.WARNING)
    admit_all(monkeypatch)
    assert logged(handler) == ""
    assert logs.emit_json(ADMISSION_LOGGER, logging.INFO, "%s", ("x",), {}) is True
    handler.setLevel(logging.WARNING)  # the handler's level: logging's path decides
    ADMISSION_LOGGER.setLevel(logging.INFO)
    assert logs.emit_json(ADMISSION_LOGGER, logging.INFO, "%s", ("x",), {}) is False


def test_other_handlers_filters_and_the_text_format_keep_loggings_path(
    json_setup: Callable[[], Handler],
) -> None:
    handler = json_setup()

    def fast() -> bool:
        return logs.emit_json(ADMISSION_LOGGER, logging.INFO, "%s", ("x",), {"uid": "u"})

    assert fast() is True
    assert json.loads(logged(handler))["message"] == "x"
    second = logging.StreamHandler(io.StringIO())
    ADMISSION_LOGGER.addHandler(second)
    try:
        assert fast() is False
        second.setLevel(logging.ERROR)  # a handler this line does not reach
        assert fast() is True
    finally:
        ADMISSION_LOGGER.removeHandler(second)
    ADMISSION_LOGGER.addFilter(lambda record: True)
    try:
        assert fast() is False
    finally:
        ADMISSION_LOGGER.filters.clear()
    ADMISSION_LOGGER.propagate = False  # no handler reached: logging's last resort
    assert fast() is False
    ADMISSION_LOGGER.propagate = True
    handler.setFormatter(logs.TextFormatter())
    assert fast() is False


def test_a_failing_stream_is_reported_as_logging_reports_it(
    json_setup: Callable[[], Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = json_setup()

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    reported: list[logging.LogRecord] = []
    handler.setStream(Broken())
    monkeypatch.setattr(handler, "handleError", reported.append)
    assert logs.emit_json(ADMISSION_LOGGER, logging.INFO, "a %s", ("b",), {"uid": "u"})
    [record] = reported
    assert record.getMessage() == "a b" and record.fields == {"uid": "u"}  # type: ignore[attr-defined]


def reference_encoding(entry: dict[Any, Any]) -> str:
    """How the JSON formatter encoded a line before: every orjson option at once."""
    options = (
        orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
    )
    try:
        return orjson.dumps(entry, default=str, option=options).decode()
    except TypeError:
        return json.dumps(entry, default=str)


@pytest.mark.parametrize(
    "fields",
    [
        {"uid": "u", "n": 1.5, "images": {"a": "b"}},
        {1: "an int key", None: "a None key", "k": "v"},
        {"when": datetime.datetime(2026, 1, 2, 3, 4, 5), "what": Visibility.PRIVATE},
        {"big": 2**70},
        {"lone": "\ud800"},
    ],
    ids=["plain", "non-string keys", "datetime and enum", "int over 64 bits", "lone surrogate"],
)
def test_formatter_encodes_every_field_as_before(fields: dict[Any, Any]) -> None:
    record = logging.makeLogRecord({"msg": "m", "fields": fields, "created": 1_700_000_000.5})
    formatter = logs.JSONFormatter()
    entry = {
        "time": formatter.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
        "level": "info",
        "logger": "root",
        "message": "m",
        **fields,
    }
    record.levelname, record.name = "INFO", "root"
    assert formatter.format(record) == reference_encoding(entry)
