"""The chart runs the image the Dockerfile builds as the image means to be run: the
Deployment's command and args are the Dockerfile's ENTRYPOINT and CMD (so
`docker run` and the chart start the same server), under the Dockerfile's USER."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chartlib import RenderFn

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"

pytestmark = pytest.mark.chart


def final_stage() -> dict[str, Any]:
    """ENTRYPOINT, CMD (exec form) and USER of the Dockerfile's last stage."""
    found: dict[str, Any] = {}
    for line in DOCKERFILE.read_text().splitlines():
        instruction, _, rest = line.partition(" ")
        if instruction == "FROM":
            found = {}
        elif instruction in ("ENTRYPOINT", "CMD"):
            found[instruction] = json.loads(rest)
        elif instruction == "USER":
            found[instruction] = rest.strip()
    return found


def test_the_deployment_runs_the_images_default_command(render: RenderFn) -> None:
    rendered = render({"appSlug": "my-app", "license": {"id": "test-license-id"}})
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    image = final_stage()
    assert container["command"] == image["ENTRYPOINT"]
    assert container["args"] == image["CMD"]
    user = pod["securityContext"]
    assert f"{user['runAsUser']}:{user['runAsGroup']}" == image["USER"]
