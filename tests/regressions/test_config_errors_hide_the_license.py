"""Regression: a config error message never repeats the license ID.

Config errors go to stderr, that is the pod log. PyYAML's error text quotes the
offending line, which can be the ``licenseID:`` line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


@pytest.mark.parametrize("value", ["123456789012", "0x1F2E3D", "yes", "[a1b2c3d4e5]"])
def test_a_license_id_of_the_wrong_type_is_not_repeated(tmp_path: Path, value: str) -> None:
    """An unquoted all-digit (or hex, or yes/no) license ID is not a YAML string."""
    path = tmp_path / "config.yaml"
    path.write_text(f"appSlug: a\nlicenseID: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert "licenseID: expected str, got" in message and "(value hidden)" in message
    parsed = yaml.safe_load(value)  # what the message used to repeat
    assert value.strip("[]") not in message and repr(parsed) not in message
