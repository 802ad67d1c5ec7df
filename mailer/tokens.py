"""HMAC-SHA256 signed tokens for unsubscribe, confirm, preferences and VERP bounce addresses, the key of an
archived issue's "view in browser" link, the sign-up form, and the ops console's sessions and their CSRF field.

Pure: the secret is passed in. Tokens are lowercase base32 so they survive URLs and case-folding mail systems."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum

_MAC_BYTES = 12  # 96 bits: forging one is out of reach, and a VERP local part stays well under 64 octets
_CONTEXT = b"mailer-token-v1:"


class TokenKind(StrEnum):
    UNSUBSCRIBE = "u"
    CONFIRM = "c"
    BOUNCE = "b"
    PREFERENCES = "p"


class BadToken(ValueError):
    """The token is malformed, truncated, tampered with, or of another kind."""


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    a: int  # list id (unsubscribe, confirm, preferences) or campaign id (bounce)
    b: int  # subscriber id (unsubscribe, confirm, preferences) or delivery id (bounce)
    c: int = 0  # confirm: the sign-up request the mail answers (0 in links made before requests were kept);
    # preferences: when the link was made (Unix seconds), for its expiry and its rotation


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("token fields are non-negative")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise BadToken("truncated token")


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, _CONTEXT + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def make_token(secret: bytes, kind: TokenKind, a: int, b: int, c: int = 0) -> str:
    if not secret:
        raise ValueError("no signing secret configured")
    # c is written only when set, so every token made before it existed still reads the same.
    payload = kind.value.encode("ascii") + _varint(a) + _varint(b) + (_varint(c) if c else b"")
    raw = payload + _mac(secret, payload)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def read_token(secret: bytes, token: str, kind: TokenKind) -> Token:
    """Verify and decode; raises BadToken for anything but an intact token of `kind` signed with `secret`."""
    if not secret or not token or len(token) > 64 or not token.isascii() or not token.isalnum():
        raise BadToken("malformed token")
    padded = token.upper() + "=" * (-len(token) % 8)
    try:
        raw = base64.b32decode(padded)
    except (ValueError, binascii.Error):
        raise BadToken("malformed token") from None
    if base64.b32encode(raw).decode("ascii").rstrip("=") != token.upper():
        raise BadToken("malformed token")  # non-zero trailing bits: another spelling of the same bytes
    if len(raw) <= _MAC_BYTES + 1:
        raise BadToken("truncated token")
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise BadToken("bad signature")
    if payload[:1] != kind.value.encode("ascii"):
        raise BadToken("token of another kind")
    a, pos = _read_varint(payload, 1)
    b, pos = _read_varint(payload, pos)
    c = 0
    if pos < len(payload):
        c, pos = _read_varint(payload, pos)
    if pos != len(payload):
        raise BadToken("trailing bytes in token")
    return Token(kind, a, b, c)


def archive_key(secret: bytes, list_id: int, slug: str) -> str:
    """The key in an issue's "view in browser" link: it opens the archived issue of a list whose archive is not
    public. One per issue, not per reader, so it says nothing about who followed it."""
    mac = hmac.new(secret, f"mailer-archive-v1:{list_id}:{slug}".encode(), hashlib.sha256).digest()[:10]
    return base64.b32encode(mac).decode("ascii").rstrip("=").lower()


def check_archive_key(secret: bytes, list_id: int, slug: str, key: str) -> bool:
    return bool(secret) and hmac.compare_digest(archive_key(secret, list_id, slug).encode(), key.encode("utf-8"))


# ---- form tokens: signed double-submit CSRF protection for the sign-up form ---------------------------------------


def make_form_token(secret: bytes, scope: str, issued: int, nonce: str) -> str:
    """A hidden-field value binding the form to `scope` (the list), its issue time and the cookie's nonce."""
    mac = hmac.new(secret, f"mailer-form-v1:{scope}:{issued}:{nonce}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{issued}.{nonce}.{mac}"


def check_form_token(secret: bytes, scope: str, value: str, cookie_nonce: str, now: int, max_age: int) -> bool:
    """True when `value` was made by make_form_token for this scope, is not older than max_age seconds, and its
    nonce is the one in the visitor's cookie (another site can post the form but cannot read or set the cookie)."""
    issued, _, rest = value.partition(".")
    nonce, _, mac = rest.partition(".")
    if not (issued.isdigit() and nonce and mac and cookie_nonce) or not secret:
        return False
    if not hmac.compare_digest(nonce, cookie_nonce) or not 0 <= now - int(issued) <= max_age:
        return False
    expected = make_form_token(secret, scope, int(issued), nonce)
    return hmac.compare_digest(expected, value)


# ---- sessions of the ops console ------------------------------------------------------------------------------


def make_session(key: bytes, user: str, expires: int, nonce: str) -> str:
    """A session cookie value: `EXPIRES.NONCE.MAC`, the MAC binding user, expiry and nonce to `key` (derived from
    the signing secret and the console's credential, so a new password ends every session)."""
    mac = hmac.new(key, f"mailer-ops-session-v1:{user}:{expires}:{nonce}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{expires}.{nonce}.{mac}"


def read_session(key: bytes, user: str, value: str, now: int) -> str | None:
    """The session's nonce when `value` is an intact session of `user` that has not expired at `now`; else None."""
    expires, _, rest = value.partition(".")
    nonce, _, mac = rest.partition(".")
    if not (key and expires.isdigit() and len(expires) < 16 and nonce and mac) or now >= int(expires):
        return None
    if not hmac.compare_digest(make_session(key, user, int(expires), nonce), value):
        return None
    return nonce


def session_csrf(key: bytes, nonce: str) -> str:
    """The hidden form field every console action must carry: tied to the session, unknown to another site."""
    return hmac.new(key, f"mailer-ops-csrf-v1:{nonce}".encode(), hashlib.sha256).hexdigest()[:32]
