"""Fixtures every suite shares (helpers that are not fixtures: tests/support.py)."""

from __future__ import annotations

import pytest

from tests.support import certificates
from webhook import pki


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> pki.CertPaths:
    """A development CA and a serving certificate for localhost, 127.0.0.1 and ::1,
    shared by every test that serves TLS and does not change the files."""
    return certificates(tmp_path_factory.mktemp("tls"))
