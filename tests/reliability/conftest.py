"""Reliability and security suite: fuzzing, registry faults under load, soak,
graceful shutdown, secret hygiene.

Everything here runs in the full suite. ``-m "not slow"`` skips the long ones (soak,
shutdown, the big fuzz runs) for a quick local run; nothing is skipped by default.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.reliability)
