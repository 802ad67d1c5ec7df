"""Ops console password hashes: scrypt round trip, tampering, malformed stored values."""

from __future__ import annotations

import pytest

from mailer.passwords import PasswordHashError, check_hash, hash_password, same_secret, verify_password


def test_hash_and_verify() -> None:
    stored = hash_password("correct horse 电池", log_n=10)
    assert stored.startswith("$scrypt$ln=10,r=8,p=1$")
    assert "correct" not in stored
    assert verify_password("correct horse 电池", stored)
    assert not verify_password("correct horse 电池 ", stored)
    assert not verify_password("", stored)
    assert hash_password("x", log_n=10) != hash_password("x", log_n=10)  # salted


def test_a_changed_hash_no_longer_verifies() -> None:
    stored = hash_password("pw", log_n=10)
    head, salt, digest = stored.rsplit("$", 2)
    # The first character: the last one of unpadded base64 carries bits that decoding drops ("A" and "B" there
    # can decode to the same digest, and did in 1 run of ~16)
    flipped = ("A" if digest[0] != "A" else "B") + digest[1:]
    assert not verify_password("pw", f"{head}${salt}${flipped}")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "pw",
        "$2b$12$abcdefghijklmnopqrstuv",
        "$scrypt$ln=30,r=8,p=1$" + "A" * 22 + "$" + "A" * 43,
        "$scrypt$ln=15,r=8,p=1$!!!!$" + "A" * 43,
    ],
)
def test_malformed_hashes_are_refused(stored: str) -> None:
    with pytest.raises(PasswordHashError):
        check_hash(stored)
    assert not verify_password("pw", stored)


def test_empty_password_cannot_be_hashed() -> None:
    with pytest.raises(ValueError):
        hash_password("")


def test_plain_secret_comparison() -> None:
    assert same_secret("s3cret", "s3cret")
    assert not same_secret("s3cret", "s3cre")
