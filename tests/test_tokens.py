"""Signed tokens: round trip, tampering, kinds, secrets, alphabet and length."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.tokens import BadToken, Token, TokenKind, make_token, read_token

SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
# Different lengths leave different numbers of spare bits in the last base32 character.
IDS = [(0, 0), (1, 1), (3, 300), (300, 70_000), (12_345, 9_876_543), (100_000, 100_000_000), (2**40, 2**50)]


@pytest.mark.parametrize("kind", list(TokenKind))
@pytest.mark.parametrize(("a", "b"), IDS)
def test_round_trip(kind: TokenKind, a: int, b: int) -> None:
    token = make_token(SECRET, kind, a, b)
    assert read_token(SECRET, token, kind) == Token(kind, a, b)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(list(TokenKind)), a=st.integers(0, 2**63), b=st.integers(0, 2**63))
def test_round_trip_any_ids(kind: TokenKind, a: int, b: int) -> None:
    token = make_token(SECRET, kind, a, b)
    assert re.fullmatch(r"[a-z2-7]+", token)
    assert read_token(SECRET, token, kind) == Token(kind, a, b)


@pytest.mark.parametrize(("a", "b"), IDS)
def test_a_confirm_token_may_name_its_sign_up_request(a: int, b: int) -> None:
    token = make_token(SECRET, TokenKind.CONFIRM, a, b, 4_321)
    assert read_token(SECRET, token, TokenKind.CONFIRM) == Token(TokenKind.CONFIRM, a, b, 4_321)
    # Without one it is byte for byte the token of before, so links already in mailboxes keep working.
    assert make_token(SECRET, TokenKind.CONFIRM, a, b, 0) == make_token(SECRET, TokenKind.CONFIRM, a, b)
    assert read_token(SECRET, make_token(SECRET, TokenKind.CONFIRM, a, b), TokenKind.CONFIRM).c == 0


@pytest.mark.parametrize(("a", "b"), IDS)
def test_changing_any_character_is_refused(a: int, b: int) -> None:
    token = make_token(SECRET, TokenKind.UNSUBSCRIBE, a, b)
    for i, original in enumerate(token):
        for replacement in ALPHABET:
            if replacement == original:
                continue
            tampered = token[:i] + replacement + token[i + 1 :]
            with pytest.raises(BadToken):
                read_token(SECRET, tampered, TokenKind.UNSUBSCRIBE)


@pytest.mark.parametrize(("a", "b"), IDS)
def test_truncated_or_extended_is_refused(a: int, b: int) -> None:
    token = make_token(SECRET, TokenKind.UNSUBSCRIBE, a, b)
    for cut in range(1, len(token) + 1):
        with pytest.raises(BadToken):
            read_token(SECRET, token[:-cut], TokenKind.UNSUBSCRIBE)
    for extra in ("a", "aa", "aaaaaaaa", token):
        with pytest.raises(BadToken):
            read_token(SECRET, token + extra, TokenKind.UNSUBSCRIBE)


@pytest.mark.parametrize("kind", list(TokenKind))
def test_kinds_do_not_cross(kind: TokenKind) -> None:
    token = make_token(SECRET, kind, 7, 11)
    for other in TokenKind:
        if other is kind:
            assert read_token(SECRET, token, other) == Token(kind, 7, 11)
        else:
            with pytest.raises(BadToken, match="another kind"):
                read_token(SECRET, token, other)


def test_same_ids_different_kinds_give_different_tokens() -> None:
    tokens = {make_token(SECRET, kind, 7, 11) for kind in TokenKind}
    assert len(tokens) == len(TokenKind)


@pytest.mark.parametrize(("a", "b"), IDS)
def test_wrong_secret_is_refused(a: int, b: int) -> None:
    token = make_token(SECRET, TokenKind.CONFIRM, a, b)
    assert make_token(OTHER_SECRET, TokenKind.CONFIRM, a, b) != token
    with pytest.raises(BadToken, match="signature"):
        read_token(OTHER_SECRET, token, TokenKind.CONFIRM)
    with pytest.raises(BadToken):
        read_token(b"", token, TokenKind.CONFIRM)


def test_ids_are_bound_by_the_signature() -> None:
    token = make_token(SECRET, TokenKind.UNSUBSCRIBE, 3, 5)
    assert token != make_token(SECRET, TokenKind.UNSUBSCRIBE, 3, 6)
    assert token != make_token(SECRET, TokenKind.UNSUBSCRIBE, 4, 5)
    assert make_token(SECRET, TokenKind.UNSUBSCRIBE, 3, 5) == token  # deterministic: same link in every retry


@pytest.mark.parametrize(("a", "b"), IDS)
def test_tokens_are_lowercase_base32_only(a: int, b: int) -> None:
    for kind in TokenKind:
        token = make_token(SECRET, kind, a, b)
        assert re.fullmatch(r"[a-z2-7]+", token), token
        assert "=" not in token


def test_case_folded_token_still_reads() -> None:
    # Some mail systems upper-case the local part of a VERP address.
    token = make_token(SECRET, TokenKind.BOUNCE, 42, 1234)
    assert read_token(SECRET, token.upper(), TokenKind.BOUNCE) == Token(TokenKind.BOUNCE, 42, 1234)


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        (TokenKind.UNSUBSCRIBE, 50_000, 10_000_000),  # list id, subscriber id
        (TokenKind.CONFIRM, 50_000, 10_000_000),
        (TokenKind.BOUNCE, 1_000_000, 1_000_000_000),  # campaign id, delivery id
    ],
)
def test_realistic_tokens_are_short(kind: TokenKind, a: int, b: int) -> None:
    token = make_token(SECRET, kind, a, b)
    assert len(token) < 40
    assert len(f"bounces+{token}") <= 64  # RFC 5321 local-part limit for the VERP address


@pytest.mark.parametrize(
    "token",
    ["", "a", "not-base32!", "abc def", "ümlaut", "0189", "a" * 65, "a" * 24, "====", "\r\n"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(BadToken):
        read_token(SECRET, token, TokenKind.UNSUBSCRIBE)


def test_negative_ids_and_empty_secret_cannot_make_a_token() -> None:
    with pytest.raises(ValueError):
        make_token(SECRET, TokenKind.UNSUBSCRIBE, -1, 1)
    with pytest.raises(ValueError):
        make_token(b"", TokenKind.UNSUBSCRIBE, 1, 1)
