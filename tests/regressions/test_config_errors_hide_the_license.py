"""Regression: a config error message never repeats the license ID.

Config errors go to stderr, that is the pod log. PyYAML's error text quotes the
offending line, which can be the ``licenseID:`` line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.config import ConfigError, load

LICENSE = "LIC-canary-3c9e1f7a"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f'appSlug: a\nlicenseID: "{LICENSE}\nnamespaces: [a]\n', "line 4, column 1"),
        (f"appSlug: a\nlicenseID: {LICENSE}: x\n", "line 2, column "),
        (f"appSlug: a\nlicenseID: {LICENSE}\n\tmode: online\n", "line 3, column 1"),
    ],
)
def test_yaml_syntax_error_does_not_quote_the_license_line(
    tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid YAML: {where}")
    assert LICENSE not in message
