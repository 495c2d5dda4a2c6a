"""Fixtures for the image tests: the image built once per session by
``.ci/build-image``, its root filesystem unpacked, and its default command served
from it as the chart runs it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image import rootfs
from tests.image.build import WebhookImage, build_webhook_image
from tests.image.running import Server, Unpacked, start_server, stop_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.image)


@pytest.fixture(scope="session")
def webhook_image(tmp_path_factory: pytest.TempPathFactory) -> WebhookImage:
    return build_webhook_image(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def unpacked(
    webhook_image: WebhookImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Unpacked]:
    root = tmp_path_factory.mktemp("rootfs")
    config = rootfs.unpack(webhook_image.archive, root)
    yield Unpacked(root, config)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(unpacked: Unpacked, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(unpacked, tmp_path_factory.mktemp("serve"), {})
    yield running
    stop_server(running)
