"""The chart README's values table follows values.yaml (tools/chart_values_table.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.chart_values_table import CHART, Row, problems, read


def test_readme_table_is_current_and_every_value_described() -> None:
    found = problems()
    assert found == [], "\n".join([*found, "run: python tools/chart_values_table.py"])


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    for name in ("values.yaml", "README.md"):
        shutil.copy(CHART / name, tmp_path / name)
    return tmp_path


def test_a_new_value_must_be_described_and_listed(chart: Path) -> None:
    values = chart / "values.yaml"
    values.write_text(
        values.read_text() + '\nmirror:\n  # -- The mirror URL.\n  url: ""\n  hosts: []\n'
    )
    assert problems(chart) == [
        "values.yaml: mirror.hosts has no `# --` description",
        "README.md: mirror.url is missing from the values table",
    ]


def test_a_removed_or_changed_value_is_reported(chart: Path) -> None:
    values = chart / "values.yaml"
    text = values.read_text()
    text = text.replace("replicaCount: 2", "replicaCount: 3")
    text = text.replace("clusterDomain: cluster.local\n", "")
    values.write_text(text)
    assert problems(chart) == [
        "README.md: clusterDomain is not in values.yaml",
        "README.md: the row of replicaCount differs from values.yaml",
    ]


def test_rows_read_like_helm_docs(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "# A section heading, not a description.\n"
        "\n"
        "# -- Resources of the Pod, as one row: its keys are not listed.\n"
        "resources:\n"
        "  requests: {cpu: 50m}\n"
        "group:\n"
        "  # An older note.\n"
        "  # -- Only this part describes it,\n"
        "  #    over two lines with <angle> brackets and `<code>`.\n"
        "  mode: a|b\n"
        "  # -- (int) Seconds; null: derived.\n"
        "  grace: null\n"
        "  undescribed: 1\n"
        '"dotted.key": {}\n'
    )
    result = read(values)
    assert result.rows == (
        Row(
            "resources",
            "object",
            '{"requests":{"cpu":"50m"}}',
            "Resources of the Pod, as one row: its keys are not listed.",
        ),
        Row(
            "group.mode",
            "string",
            '"a|b"',
            "Only this part describes it, over two lines with <angle> brackets and `<code>`.",
        ),
        Row("group.grace", "int", "null", "Seconds; null: derived."),
    )
    assert result.undocumented == ("group.undescribed", '"dotted.key"')
    assert result.rows[1].markdown() == (
        '| group.mode | string | `"a\\|b"` | Only this part describes it, over two lines with '
        "&lt;angle&gt; brackets and `<code>`. |"
    )
