"""docs/design.md and the other documents stand on their own inside the repo.

- every key the config parser accepts is described in §4, every probe reason in §2;
- every `docs/design.md §n` citation in code, chart and tests names a section
  that exists;
- every relative link in a Markdown file resolves to a file of the repo, and no
  file names a document outside it;
- the changelog starts at the version of the package and the chart.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from webhook import config
from webhook.probes import Reason

REPO = Path(__file__).resolve().parents[2]
DESIGN = REPO / "docs" / "design.md"
BASE = {"appSlug": "my-app", "licenseID": "l"}
UNKNOWN = "zz-not-a-key"


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False
    ).stdout.decode()
    if not listed:
        pytest.skip("not a git checkout")
    return [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]


def known_keys(data: dict[str, object], where: str) -> list[str] | None:
    """The keys the parser knows at ``where``, read from its unknown-key message."""
    try:
        config.parse(data)
    except config.ConfigError as exc:
        found = re.fullmatch(
            rf"{re.escape(where or 'config')}: unknown key '{UNKNOWN}' \(known keys: (.*)\)",
            str(exc),
        )
        return found.group(1).split(", ") if found else None
    return None


def config_keys() -> list[str]:
    root = known_keys({**BASE, UNKNOWN: 1}, "")
    assert root, "the parser no longer names its known keys"
    keys: list[str] = []
    for key in root:
        nested = known_keys({**BASE, key: {UNKNOWN: 1}}, key)
        keys.extend(f"{key}.{child}" for child in nested) if nested else keys.append(key)
    return keys


def section(text: str, number: int) -> str:
    found = re.search(rf"^## {number}\. .*?(?=^## |\Z)", text, re.M | re.S)
    assert found, f"no section {number}"
    return found.group(0)


def test_every_config_key_is_described_in_section_4() -> None:
    configuration = section(DESIGN.read_text(encoding="utf-8"), 4)
    keys = config_keys()
    assert "server.shutdownTimeoutSeconds" in keys and "visibility.cacheSize" in keys
    missing = [key for key in keys if f"`{key}`" not in configuration]
    assert missing == [], f"describe these config keys in docs/design.md §4: {missing}"


def test_every_probe_reason_is_in_section_2s_table() -> None:
    probe = section(DESIGN.read_text(encoding="utf-8"), 2)
    table = "\n".join(line for line in probe.splitlines() if line.startswith("|"))
    listed = set(re.findall(r"`([a-z-]+)`", table))
    assert {reason.value for reason in Reason} <= listed


def test_section_citations_name_existing_sections() -> None:
    headings = {
        int(n) for n in re.findall(r"^## (\d+)\. ", DESIGN.read_text(encoding="utf-8"), re.M)
    }
    assert {1, 2, 3, 4, 5, 6} <= headings
    wrong = []
    for path in tracked_files():
        if path.suffix not in {".py", ".md", ".yaml", ".tpl", ".txt", ".json"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number in re.findall(r"design\.md §(\d+)", text):
            if int(number) not in headings:
                wrong.append(f"{path.relative_to(REPO)}: §{number}")
    assert wrong == []


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_links_stay_inside_the_repo() -> None:
    broken = []
    for path in tracked_files():
        if path.suffix != ".md":
            continue
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            resolved = (path.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
    assert broken == []


def test_no_file_names_a_document_outside_the_repo() -> None:
    outside = re.compile(r"\.\./shared|/work/shared|\bDESIGN\.md")
    found = [
        str(path.relative_to(REPO))
        for path in tracked_files()
        if path != Path(__file__).resolve()
        and outside.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert found == []


def test_changelog_starts_at_the_current_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((REPO / "charts/image-proxy-webhook/Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == version
    headings = re.findall(r"^## (.+)$", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert headings[0] == "Unreleased"
    assert re.fullmatch(rf"{re.escape(version)} - \d{{4}}-\d{{2}}-\d{{2}}", headings[1])
