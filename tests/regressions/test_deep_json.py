"""Regression: a body nested deeper than the JSON decoder can recurse is a 400.

Found by tests/reliability/test_fuzz.py: ``json.loads`` raises RecursionError (not a
ValueError), which escaped ``review.parse`` into the handler's unexpected-error
path, logging a thousand-frame traceback per request.
"""

from __future__ import annotations

import logging

import pytest

from webhook import config
from webhook.admission import Admitter
from webhook.review import ReviewError, parse

DEEP = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":' + (
    b"[" * 200_000 + b"]" * 200_000 + b"}"
)


def test_parse_refuses_deep_nesting_as_a_review_error() -> None:
    with pytest.raises(ReviewError, match="nested too deeply"):
        parse(DEEP)


async def test_admitter_raises_review_error_without_logging_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admitter = Admitter(config.parse({"appSlug": "my-app", "licenseID": "lic"}))
    with caplog.at_level(logging.DEBUG), pytest.raises(ReviewError):
        await admitter.admit(DEEP, "mutate")
    assert "Traceback" not in caplog.text
