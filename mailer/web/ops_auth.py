"""Who may use the ops console: the credential (MAILER_OPS_PASSWORD, or the scrypt hash from
MAILER_OPS_PASSWORD_FILE), signed session cookies that expire, sign-out, the CSRF field of every action, HTTP Basic
for scripts on /ops/api/, a read-only bearer token for /ops/metrics, and the per-client limit on failed sign-ins.

Decides only who someone is; the pages are ops.py's. Time comes from the app's clock, so expiry and the limit are
tested without waiting. Never logs or keeps a password: a verified one is remembered only as an HMAC under a key
that lives in this process."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from mailer.config import Config
from mailer.passwords import same_secret, verify_password
from mailer.tokens import make_session, read_session, session_csrf

SESSION_COOKIE = "mailer_ops"
SESSION_SECONDS = 8 * 3600  # a working day; then sign in again
LOGIN_FAILURES = 5  # failed sign-ins (form or Basic) one client may make per window before it waits
LOGIN_WINDOW = 15 * 60
_REMEMBERED = 60.0  # seconds a verified Basic password is not hashed again (scrypt costs ~80 ms a check)
# scrypt checks at once, process-wide: each takes 32 MiB (up to 128 MiB) and a core, so a burst of guesses from many
# clients waits its turn instead of taking the host's memory and the public pages' CPU.
HASH_CHECKS = 1


@dataclass(frozen=True)
class Session:
    nonce: str
    csrf: str


class OpsAuth:
    def __init__(self, config: Config, clock: Callable[[], datetime]) -> None:
        self.user = config.ops_user or "ops"
        self.password = config.ops_password
        self.password_hash = config.ops_password_hash
        self.metrics_token = config.ops_metrics_token
        self.clock = clock
        # A new password (or hash) is a new key: every session signed under the old one ends.
        credential = (self.password_hash or self.password).encode("utf-8")
        self.key = hmac.new(config.secret, b"mailer-ops-key-v1:" + credential, hashlib.sha256).digest()
        self.signed_out: dict[str, int] = {}  # nonce -> expiry, until the cookie would have expired anyway
        self.failures: dict[str, deque[float]] = {}
        self._memo_key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        self._hashing = asyncio.Semaphore(HASH_CHECKS)

    @property
    def enabled(self) -> bool:
        return bool(self.password or self.password_hash)

    def now(self) -> int:
        return int(self.clock().timestamp())

    # ---- credentials ------------------------------------------------------------------------------------------

    async def check(self, user: str, password: str) -> bool:
        """The console's user and password, compared in constant time (the hash's check off the event loop)."""
        user_ok = same_secret(user, self.user)
        if self.password:
            return same_secret(password, self.password) and user_ok
        memo = hmac.new(self._memo_key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        if self._verified.get(memo, 0.0) > self.now():
            return True
        async with self._hashing:
            ok = await run_in_threadpool(verify_password, password, self.password_hash) and user_ok
        if ok:
            self._verified = {m: t for m, t in self._verified.items() if t > self.now()}
            self._verified[memo] = self.now() + _REMEMBERED
        return ok

    async def attempt(self, client: str, user: str, password: str) -> bool | None:
        """A sign-in (form or Basic) of `client`: None when it must wait, else whether the credentials are right.

        The attempt counts as a failure before the check and stops counting only once it succeeded, with no await
        between the limit's test and the count: concurrent guesses all see the ones still being checked, so a client
        gets at most LOGIN_FAILURES checks a window however many requests it sends at once."""
        if self.limited(client):
            return None
        self.failed(client)
        stamp = self.failures[client][-1]
        ok = await self.check(user, password)
        if ok:
            with contextlib.suppress(KeyError, ValueError):
                self.failures[client].remove(stamp)
        return ok

    def limited(self, client: str) -> bool:
        recent = self.failures.get(client)
        if not recent:
            return False
        while recent and recent[0] <= self.now() - LOGIN_WINDOW:
            recent.popleft()
        return len(recent) >= LOGIN_FAILURES

    def failed(self, client: str) -> None:
        if len(self.failures) > 10_000:  # a flood of clients: forget the oldest rather than grow without end
            self.failures.pop(next(iter(self.failures)))
        self.failures.setdefault(client, deque()).append(self.now())

    # ---- sessions ---------------------------------------------------------------------------------------------

    def new_session(self) -> tuple[str, int]:
        """A fresh cookie value and its lifetime in seconds."""
        return make_session(
            self.key, self.user, self.now() + SESSION_SECONDS, secrets.token_urlsafe(16)
        ), SESSION_SECONDS

    def session(self, request: Request) -> Session | None:
        nonce = read_session(self.key, self.user, request.cookies.get(SESSION_COOKIE, ""), self.now())
        if nonce is None or nonce in self.signed_out:
            return None
        return Session(nonce, session_csrf(self.key, nonce))

    def sign_out(self, session: Session) -> None:
        now = self.now()
        self.signed_out = {n: t for n, t in self.signed_out.items() if t > now}
        self.signed_out[session.nonce] = now + SESSION_SECONDS

    def csrf_ok(self, session: Session, given: str) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf, given)

    # ---- scripts ----------------------------------------------------------------------------------------------

    @staticmethod
    def basic_credentials(request: Request) -> tuple[str, str] | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    @staticmethod
    def bearer(request: Request) -> str | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def metrics_token_ok(self, request: Request) -> bool:
        given = self.bearer(request)
        return bool(self.metrics_token) and given is not None and same_secret(given, self.metrics_token)
