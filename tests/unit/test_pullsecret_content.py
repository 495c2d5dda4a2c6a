"""What the pull secret carries (docs/design.md §3): credentials the registries accept."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from webhook import pullsecrets
from webhook.config import AirgapSettings, Mode, Settings

LICENSE = "2ViYxYAm4hPq3cZSZYKqzr2QwQx"


def decoded_auths(settings: Settings) -> dict[str, str]:
    """registry → the decoded ``user:password`` of each entry in the Secret's data."""
    body = pullsecrets.secret_body(settings, pullsecrets.read_credentials(settings))
    config = json.loads(base64.b64decode(body["data"][pullsecrets.SECRET_KEY]))
    return {
        registry: base64.b64decode(entry["auth"]).decode()
        for registry, entry in config["auths"].items()
    }


def test_online_the_user_is_license_id_and_the_password_the_license_for_both() -> None:
    """As KOTS writes it: the literal user ``LICENSE_ID``, the license ID as password."""
    settings = Settings(
        app_slug="my-app",
        license_id=LICENSE,
        proxy_domain="images.vendor.example",
        registry_domain="registry.vendor.example",
    )
    assert decoded_auths(settings) == {
        "images.vendor.example": f"LICENSE_ID:{LICENSE}",
        "registry.vendor.example": f"LICENSE_ID:{LICENSE}",
    }


def test_online_license_read_from_its_file(tmp_path: Path) -> None:
    license_file = tmp_path / "id"
    license_file.write_text(f"{LICENSE}\n")
    settings = Settings(app_slug="my-app", license_id_file=str(license_file))
    assert decoded_auths(settings) == {
        "proxy.replicated.com": f"LICENSE_ID:{LICENSE}",
        "registry.replicated.com": f"LICENSE_ID:{LICENSE}",
    }


def test_airgap_keeps_the_local_registry_user_and_password(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    settings = Settings(
        app_slug="my-app",
        license_id=LICENSE,
        mode=Mode.AIRGAP,
        airgap=AirgapSettings(
            registry="registry.local:5000",
            namespace="my-app",
            username="kotsadm",
            password_file=str(password_file),
        ),
    )
    assert decoded_auths(settings) == {"registry.local:5000": "kotsadm:s3cret"}


def test_each_entry_carries_auth_alone() -> None:
    """No ``username``/``password`` fields beside ``auth``: KOTS writes ``auth`` only."""
    settings = Settings(app_slug="my-app", license_id=LICENSE)
    body = pullsecrets.secret_body(settings, pullsecrets.read_credentials(settings))
    config = json.loads(base64.b64decode(body["data"][pullsecrets.SECRET_KEY]))
    assert list(config) == ["auths"]
    assert [sorted(entry) for entry in config["auths"].values()] == [["auth"], ["auth"]]


def test_the_license_id_is_no_user_name() -> None:
    """Whatever the license ID looks like, it is only ever the part after the first ``:``."""
    for license_id in (LICENSE, "LICENSE_ID", "a:b", "x" * 200):
        settings = Settings(app_slug="my-app", license_id=license_id)
        for auth in decoded_auths(settings).values():
            user, _, password = auth.partition(":")
            assert (user, password) == ("LICENSE_ID", license_id)
