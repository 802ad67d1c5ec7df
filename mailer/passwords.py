"""Password hashes for the ops console: scrypt (RFC 7914) in a self-describing text form, and their checks.

Pure apart from the salt's randomness; never logs or returns a password. stdlib only (hashlib.scrypt)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

# ~80 ms a check on this machine (N=2^15, r=8, p=1: OWASP's 2023 minimum for scrypt is N=2^17 with 64 MiB; this is
# N=2^15 with 32 MiB, which a console sign-in behind a rate limit can afford and a 2-core host shares well).
DEFAULT_LOG_N = 15
_FORM = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{16,88})\$([A-Za-z0-9+/]{32,88})")


class PasswordHashError(ValueError):
    """A stored hash that is not one this module writes."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


_MAX_MEMORY = 256 * 1024 * 1024  # what one check may take (OpenSSL refuses a check that needs more)


def _memory(log_n: int, r: int, p: int) -> int:
    """Bytes scrypt needs for these parameters, as OpenSSL counts them (its V array and B blocks)."""
    return 128 * r * ((1 << log_n) + 2) + 128 * r * p


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**log_n, r=r, p=p, dklen=32, maxmem=_MAX_MEMORY)


def hash_password(password: str, log_n: int = DEFAULT_LOG_N) -> str:
    """`$scrypt$ln=15,r=8,p=1$SALT$HASH` (base64 without padding, as passlib writes scrypt)."""
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = secrets.token_bytes(16)
    return f"$scrypt$ln={log_n},r=8,p=1${_b64(salt)}${_b64(_scrypt(password, salt, log_n, 8, 1))}"


def check_hash(stored: str) -> None:
    """Raise PasswordHashError unless `stored` is a hash this module can verify (checked at start, not at sign-in)."""
    match = _FORM.fullmatch(stored.strip())
    if not match:
        raise PasswordHashError("not a mailer password hash (make one with: mailer ops passwd)")
    log_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if not (10 <= log_n <= 20 and 1 <= r <= 16 and 1 <= p <= 4):
        raise PasswordHashError(f"scrypt parameters ln={log_n}, r={r}, p={p} are outside what mailer accepts")
    if (need := _memory(log_n, r, p)) > _MAX_MEMORY:  # valid scrypt (another tool's) every sign-in would fail on
        raise PasswordHashError(
            f"scrypt parameters ln={log_n}, r={r}, p={p} need {-(-need // 2**20)} MiB a check, more than the "
            f"{_MAX_MEMORY // 2**20} MiB mailer allows (make one with: mailer ops passwd)"
        )


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison of scrypt(password) with the stored hash; False for a malformed one."""
    try:
        check_hash(stored)
    except PasswordHashError:
        return False
    match = _FORM.fullmatch(stored.strip())
    assert match is not None
    log_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    expected = _unb64(match.group(5))
    return hmac.compare_digest(_scrypt(password, _unb64(match.group(4)), log_n, r, p), expected)


def same_secret(given: str, expected: str) -> bool:
    """A plain password from the environment, compared in constant time (MAILER_OPS_PASSWORD)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
