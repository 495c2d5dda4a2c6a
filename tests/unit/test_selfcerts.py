"""What the self-managed certificate Secret should hold (``webhook.selfcerts.plan``) and
the ``selfManagedTLS`` config section. The API server side is in
tests/e2e/test_selfcerts.py."""

from __future__ import annotations

import base64
import dataclasses
import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from webhook import config, selfcerts
from webhook.config import SelfManagedTLSSettings

NAMES = ("webhook", "webhook.ipw", "webhook.ipw.svc", "webhook.ipw.svc.cluster.local")
SETTINGS = SelfManagedTLSSettings(secret_name="webhook-certs", dns_names=NAMES)
DAY = datetime.timedelta(days=1)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def fresh() -> selfcerts.Material:
    material = selfcerts.plan(None, SETTINGS, now())
    assert material is not None
    return material


def cas(material: selfcerts.Material) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(material.ca_bundle)


def cert(material: selfcerts.Material) -> x509.Certificate:
    return x509.load_pem_x509_certificate(material.cert)


def names_of(certificate: x509.Certificate) -> set[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def test_no_secret_gives_a_ca_and_a_serving_certificate() -> None:
    material = fresh()
    [ca] = cas(material)
    leaf = cert(material)
    leaf.verify_directly_issued_by(ca)
    assert names_of(leaf) == set(NAMES)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(material.key, password=None)
    assert key.public_key() == leaf.public_key()
    ca_key = serialization.load_pem_private_key(material.ca_key, password=None)
    assert ca_key.public_key() == ca.public_key()
    # Ten years and one year, from a few minutes back (clock skew between nodes).
    assert ca.not_valid_after_utc - now() == pytest.approx(
        3650 * DAY, abs=datetime.timedelta(seconds=60)
    )
    assert leaf.not_valid_after_utc - now() == pytest.approx(
        365 * DAY, abs=datetime.timedelta(seconds=60)
    )
    assert now() - leaf.not_valid_before_utc < datetime.timedelta(minutes=6)


def test_a_current_secret_is_kept() -> None:
    material = fresh()
    assert selfcerts.plan(material, SETTINGS, now()) is None
    # Up to two thirds of the certificate's life.
    assert selfcerts.plan(material, SETTINGS, now() + 243 * DAY) is None


def test_certificate_renewed_at_two_thirds_of_its_life_by_the_same_ca() -> None:
    material = fresh()
    due = selfcerts.renewal_due(material, SETTINGS)
    assert due == cert(material).not_valid_after_utc - datetime.timedelta(days=365 / 3)
    renewed = selfcerts.plan(material, SETTINGS, due)
    assert renewed is not None
    assert (renewed.ca_bundle, renewed.ca_key) == (material.ca_bundle, material.ca_key)
    assert renewed.cert != material.cert and renewed.key != material.key
    cert(renewed).verify_directly_issued_by(cas(material)[0])


def test_changed_names_get_a_new_certificate() -> None:
    material = fresh()
    settings = dataclasses.replace(SETTINGS, dns_names=(*NAMES, "127.0.0.1"))
    renewed = selfcerts.plan(material, settings, now())
    assert renewed is not None and renewed.ca_bundle == material.ca_bundle
    assert names_of(cert(renewed)) == {*NAMES, "127.0.0.1"}


def test_ca_renewed_at_two_thirds_keeps_the_old_one_trusted_until_it_expires() -> None:
    material = fresh()
    [old] = cas(material)
    at = old.not_valid_after_utc - datetime.timedelta(days=3650 / 3)
    renewed = selfcerts.plan(material, SETTINGS, at)
    assert renewed is not None
    new, kept = cas(renewed)
    assert kept == old and new != old
    cert(renewed).verify_directly_issued_by(new)  # the current CA comes first
    # A CA found already expired is not kept in the bundle.
    replaced = selfcerts.plan(material, SETTINGS, old.not_valid_after_utc + DAY)
    assert replaced is not None
    [only] = cas(replaced)
    assert only != old


def bad(material: selfcerts.Material, **change: bytes) -> selfcerts.Material:
    return dataclasses.replace(material, **change)


@pytest.mark.parametrize(
    "breakage",
    ["garbage-cert", "other-key", "foreign-ca-key", "empty-bundle"],
)
def test_a_broken_secret_is_replaced(breakage: str) -> None:
    material = fresh()
    other = fresh()
    broken = {
        "garbage-cert": bad(material, cert=b"not a certificate"),
        "other-key": bad(material, key=other.key),
        "foreign-ca-key": bad(material, ca_key=other.ca_key),
        "empty-bundle": bad(material, ca_bundle=b""),
    }[breakage]
    renewed = selfcerts.plan(broken, SETTINGS, now())
    assert renewed is not None
    leaf = cert(renewed)
    leaf.verify_directly_issued_by(cas(renewed)[0])
    key = serialization.load_pem_private_key(renewed.key, password=None)
    assert key.public_key() == leaf.public_key()


@pytest.mark.parametrize(
    "data",
    [None, {}, {"tls.crt": "eA=="}, {k: "not base64!" for k in selfcerts.SECRET_KEYS}],
)
def test_secret_data_missing_or_undecodable_reads_as_none(data: dict[str, str] | None) -> None:
    assert selfcerts.Material.from_secret_data(data) is None


def test_secret_data_round_trip() -> None:
    material = fresh()
    data = material.secret_data()
    assert set(data) == set(selfcerts.SECRET_KEYS)
    assert base64.b64decode(data["ca.crt"]) == material.ca_bundle
    assert selfcerts.Material.from_secret_data(data) == material


# --- the config section -----------------------------------------------------------------

BASE: dict[str, Any] = {
    "appSlug": "my-app",
    "licenseID": "x",
    "server": {"certFile": "/tls/tls.crt", "keyFile": "/tls/tls.key"},
}


def test_config_section() -> None:
    section = {
        "secretName": "rel-certs",
        "dnsNames": list(NAMES),
        "mutatingWebhookConfiguration": "rel",
        "validatingWebhookConfiguration": "",
        "caValidityDays": 30,
        "certValidityDays": 0.5,
        "checkIntervalSeconds": 5,
    }
    settings = config.parse({**BASE, "selfManagedTLS": section}).self_managed_tls
    assert settings == SelfManagedTLSSettings(
        secret_name="rel-certs",
        dns_names=NAMES,
        mutating_webhook_configuration="rel",
        validating_webhook_configuration="",
        ca_validity_days=30.0,
        cert_validity_days=0.5,
        check_interval_seconds=5.0,
    )
    assert config.parse(BASE).self_managed_tls is None
    assert config.parse({**BASE, "selfManagedTLS": {}}).self_managed_tls is None


@pytest.mark.parametrize(
    ("section", "server", "message"),
    [
        ({"dnsNames": ["a"]}, None, "selfManagedTLS.secretName: required"),
        ({"secretName": "x"}, None, "selfManagedTLS.dnsNames: required"),
        ({"secretName": "x", "dnsNames": ["a"], "extra": 1}, None, "unknown key 'extra'"),
        (
            {"secretName": "x", "dnsNames": ["a"], "caValidityDays": 300},
            None,
            "certValidityDays: must not exceed caValidityDays",
        ),
        (
            {"secretName": "x", "dnsNames": ["a"], "mutatingWebhookConfiguration": "A B"},
            None,
            "is not an object name",
        ),
        ({"secretName": "x", "dnsNames": ["a"]}, {}, "server.certFile and server.keyFile"),
    ],
)
def test_config_errors(
    section: dict[str, Any], server: dict[str, Any] | None, message: str
) -> None:
    data = {**BASE, "selfManagedTLS": section}
    if server is not None:
        data["server"] = server
    with pytest.raises(config.ConfigError, match=message):
        config.parse(data)
