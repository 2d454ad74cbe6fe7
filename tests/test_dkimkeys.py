"""Tests of DKIM key generation, TXT records and selectors (smtpy.dkim.keys)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtpy.dkim.keys import (
    GeneratedKey,
    default_selector,
    generate_key,
    public_record,
    validate_selector,
)
from smtpy.errors import InvalidInput


@pytest.fixture(scope="module")
def rsa1024() -> GeneratedKey:
    return generate_key("rsa", 1024)


@pytest.fixture(scope="module")
def ed_key() -> GeneratedKey:
    return generate_key("ed25519")


def _tags(record: str) -> dict[str, str]:
    return dict(part.strip().split("=", 1) for part in record.split(";"))


def test_rsa_key_is_pkcs8_pem_with_matching_record(rsa1024: GeneratedKey) -> None:
    assert rsa1024.algorithm == "rsa"
    assert rsa1024.bits == 1024
    assert rsa1024.private_key.startswith("-----BEGIN PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(rsa1024.private_key.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 1024
    assert private.private_numbers().public_numbers.e == 65537

    assert rsa1024.public_record.startswith("v=DKIM1; k=rsa; p=")
    tags = _tags(rsa1024.public_record)
    assert list(tags) == ["v", "k", "p"]
    public = serialization.load_der_public_key(base64.b64decode(tags["p"], validate=True))
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()


def test_default_is_rsa_2048() -> None:
    key = generate_key()
    assert (key.algorithm, key.bits) == ("rsa", 2048)
    public = serialization.load_der_public_key(
        base64.b64decode(_tags(key.public_record)["p"], validate=True)
    )
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048


def test_ed25519_key_and_raw_record(ed_key: GeneratedKey) -> None:
    assert ed_key.algorithm == "ed25519"
    assert ed_key.bits is None
    assert ed_key.private_key.startswith("-----BEGIN PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(ed_key.private_key.encode(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)

    assert ed_key.public_record.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(_tags(ed_key.public_record)["p"], validate=True)
    assert len(raw) == 32  # RFC 8463: the bare key, not a SubjectPublicKeyInfo
    expected = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert raw == expected


def test_keys_are_fresh_each_time() -> None:
    assert generate_key("ed25519").private_key != generate_key("ed25519").private_key


def test_repr_hides_the_private_key(rsa1024: GeneratedKey) -> None:
    body = rsa1024.private_key.splitlines()[1]
    assert body not in repr(rsa1024)
    assert "BEGIN" not in repr(rsa1024)


@pytest.mark.parametrize("bits", [0, 512, 1000, 1536, 2047, 5120, 8192, -2048])
def test_rsa_bits_out_of_bounds_are_refused(bits: int) -> None:
    with pytest.raises(InvalidInput, match="1024, 2048, 3072 or 4096") as info:
        generate_key("rsa", bits)
    assert "\n" not in str(info.value)


def test_rsa_bits_must_be_an_integer() -> None:
    with pytest.raises(InvalidInput):
        generate_key("rsa", True)
    with pytest.raises(InvalidInput):
        generate_key("rsa", 2048.0)  # type: ignore[arg-type]


def test_ed25519_ignores_bits() -> None:
    assert generate_key("ed25519", 4096).bits is None


@pytest.mark.parametrize("algorithm", ["dsa", "RSA", "", "ed448"])
def test_unknown_algorithm_is_refused(algorithm: str) -> None:
    with pytest.raises(InvalidInput, match="'rsa' or 'ed25519'"):
        generate_key(algorithm, 2048)  # type: ignore[arg-type]


def test_public_record_is_derived_from_the_stored_key(
    rsa1024: GeneratedKey, ed_key: GeneratedKey
) -> None:
    assert public_record("rsa", rsa1024.private_key) == rsa1024.public_record
    assert public_record("ed25519", ed_key.private_key) == ed_key.public_record


def test_public_record_accepts_a_pkcs1_rsa_key(rsa1024: GeneratedKey) -> None:
    private = serialization.load_pem_private_key(rsa1024.private_key.encode(), password=None)
    pkcs1 = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assert pkcs1.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert public_record("rsa", pkcs1) == rsa1024.public_record


def test_public_record_refuses_the_other_algorithm(
    rsa1024: GeneratedKey, ed_key: GeneratedKey
) -> None:
    with pytest.raises(InvalidInput, match="not an Ed25519 key"):
        public_record("ed25519", rsa1024.private_key)
    with pytest.raises(InvalidInput, match="not an RSA key"):
        public_record("rsa", ed_key.private_key)


def test_public_record_refuses_garbage_without_quoting_it(rsa1024: GeneratedKey) -> None:
    damaged = rsa1024.private_key.replace("A", "*", 3)
    with pytest.raises(InvalidInput) as info:
        public_record("rsa", damaged)
    message = str(info.value)
    assert "not an unencrypted PEM key" in message
    assert "\n" not in message
    assert all(line not in message for line in damaged.splitlines()[1:-1])
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__

    with pytest.raises(InvalidInput):
        public_record("rsa", "")
    with pytest.raises(InvalidInput):
        public_record("rsa", "clé")


def test_public_record_refuses_an_encrypted_key(rsa1024: GeneratedKey) -> None:
    private = serialization.load_pem_private_key(rsa1024.private_key.encode(), password=None)
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    with pytest.raises(InvalidInput, match="unencrypted"):
        public_record("rsa", encrypted)


def test_default_selector_names_the_utc_month() -> None:
    assert default_selector(datetime(2026, 11, 3, 12, 0, tzinfo=UTC)) == "smtpy202611"
    assert default_selector(datetime(2027, 1, 31)) == "smtpy202701"  # naive: taken as UTC
    paris = timezone(timedelta(hours=1))
    assert default_selector(datetime(2026, 12, 1, 0, 30, tzinfo=paris)) == "smtpy202611"


def test_default_selector_now_is_a_valid_selector() -> None:
    selector = default_selector()
    assert selector == f"smtpy{datetime.now(UTC):%Y%m}"
    assert validate_selector(selector) == selector


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("smtpy202611", "smtpy202611"),
        ("Sel-1", "sel-1"),
        ("a", "a"),
        ("2026", "2026"),
        ("mail.rsa", "mail.rsa"),
        ("x" * 63, "x" * 63),
    ],
)
def test_valid_selectors_are_lower_cased(given: str, expected: str) -> None:
    assert validate_selector(given) == expected


@pytest.mark.parametrize(
    "selector",
    ["", "-a", "a-", "a_b", "a..b", "a.", ".a", "a b", " a", "sél", "a/b", "a;b", "x" * 64],
)
def test_invalid_selectors_are_refused(selector: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_selector(selector)
    assert "\n" not in str(info.value)
