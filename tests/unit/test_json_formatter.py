"""The JSON formatter encodes every field as it did when it asked orjson for every
option at once: non-string keys, datetimes and enums, and what orjson refuses (an
int over 64 bits, a lone surrogate) through json.dumps.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import orjson
import pytest

from webhook import logs
from webhook.probes import Visibility


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
