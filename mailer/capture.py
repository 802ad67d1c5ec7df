"""A real SMTP server on 127.0.0.1 (aiosmtpd, in process) that captures what it receives: the demo's outbox and the
tests' peer. It can be told to answer 4xx/5xx, drop the connection or hang for chosen recipients.

The only module that imports aiosmtpd. It binds to loopback only and never relays anything anywhere."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True)
class Captured:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    path: Path | None = None


@dataclass
class Rule:
    """What the server does for one recipient (or "*", any): at MAIL, RCPT or end of DATA answer `code text`
    (or the line `raw`, SMTP or not), drop, or hang."""

    stage: str = "rcpt"  # mail | rcpt | data
    code: int = 250
    text: str = "OK"
    drop: bool = False
    hang: float = 0.0
    times: int | None = None  # apply this many times, then accept (None: always)
    raw: str = ""


@dataclass
class _State:
    outbox: Path | None
    rules: dict[str, Rule] = field(default_factory=dict)
    received: list[Captured] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0
    on_message: Callable[[Captured], None] | None = None
    sessions: weakref.WeakSet[SMTP] = field(default_factory=weakref.WeakSet)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]+", "_", text)[:80]


class _Handler:
    def __init__(self, state: _State) -> None:
        self.state = state

    def _rule(self, address: str, stage: str) -> Rule | None:
        with self.state.lock:
            rule = self.state.rules.get(address.lower())
            if rule is None or rule.stage != stage:
                rule = self.state.rules.get("*")
            if rule is None or rule.stage != stage:
                return None
            if rule.times is not None:
                if rule.times <= 0:
                    return None
                rule.times -= 1
            return rule

    async def _apply(self, server: SMTP, rule: Rule) -> str | None:
        if rule.hang:
            await asyncio.sleep(rule.hang)
        if rule.drop:
            if server.transport is not None:
                server.transport.close()
            return "421 4.4.2 connection dropped (test rule)"
        if rule.raw:
            return rule.raw
        if rule.code >= 300:
            return f"{rule.code} {rule.text}"
        return None

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.state.lock:
            self.state.connections += 1  # one EHLO per plain-text session: counts SMTP sessions
            self.state.sessions.add(server)
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        rule = self._rule("*", "mail")
        if rule is not None:
            answer = await self._apply(server, rule)
            if answer:
                return answer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        rule = self._rule(address, "rcpt")
        if rule is not None:
            answer = await self._apply(server, rule)
            if answer:
                return answer
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for rcpt in envelope.rcpt_tos:
            rule = self._rule(rcpt, "data")
            if rule is not None:
                answer = await self._apply(server, rule)
                if answer:
                    return answer
        data = envelope.original_content or envelope.content or b""
        assert isinstance(data, bytes)
        state = self.state
        with state.lock:
            number = len(state.received) + 1
            path = None
            if state.outbox is not None:
                path = state.outbox / f"{number:05d}-{_safe_name(envelope.rcpt_tos[0])}.eml"
                path.write_bytes(data)
            captured = Captured(str(envelope.mail_from), tuple(envelope.rcpt_tos), data, path)
            state.received.append(captured)
        if state.on_message:
            state.on_message(captured)
        return f"250 2.0.0 Ok: queued as {number:05d}"


class _Authenticator:
    def __init__(self, users: dict[str, str], echo: bool = False) -> None:
        self.users = users
        self.echo = echo

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode()
            if self.users.get(user) == auth_data.password.decode():
                return AuthResult(success=True)
            if self.echo:  # as some relays do: the refusal repeats what the client sent (base64, as on the wire)
                sent = (
                    b"\0" + auth_data.login + b"\0" + auth_data.password if mechanism == "PLAIN" else auth_data.password
                )
                return AuthResult(
                    success=False,
                    handled=False,
                    message=f"535 5.7.8 {mechanism} {base64.b64encode(sent).decode()} rejected",
                )
        return AuthResult(success=False, handled=False)


class CaptureServer:
    """`with CaptureServer(outbox) as server:` — an SMTP server on 127.0.0.1:`server.port`.

    With `tls` (a server-side SSLContext) it requires STARTTLS, or with `implicit_tls` speaks TLS from the first
    byte; with STARTTLS, AUTH is refused until the session is encrypted. With `echo_auth` a refused AUTH repeats
    the client's argument."""

    def __init__(
        self,
        outbox: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        echo_auth: bool = False,
        size_limit: int = 50 * 1024 * 1024,
    ) -> None:
        if not host.startswith("127.") and host != "localhost":
            raise ValueError("the capture server only listens on loopback")
        if outbox is not None:
            outbox.mkdir(parents=True, exist_ok=True)
        self.state = _State(outbox)
        self.host = host
        self.port = port or free_port(host)
        kwargs: dict[str, Any] = {}
        if users is not None:
            # aiosmtpd counts only STARTTLS as TLS for AUTH; with implicit TLS every byte is encrypted anyway.
            kwargs = {
                "authenticator": _Authenticator(users, echo_auth),
                "auth_required": True,
                "auth_require_tls": tls is not None and not implicit_tls,
            }
        if tls is not None:
            kwargs.update({"ssl_context": tls} if implicit_tls else {"tls_context": tls, "require_starttls": True})
        self.options = kwargs
        self.size_limit = size_limit  # advertised as EHLO SIZE; a larger message gets 552
        self.handler = _Handler(self.state)
        self.controller = self._controller()
        self.running = False

    def _controller(self) -> Controller:
        return Controller(
            self.handler,
            hostname=self.host,
            port=self.port,
            enable_SMTPUTF8=True,
            data_size_limit=self.size_limit,
            server_hostname="capture.localhost",
            **self.options,
        )

    @property
    def received(self) -> list[Captured]:
        with self.state.lock:
            return list(self.state.received)

    @property
    def connections(self) -> int:
        """SMTP sessions greeted with EHLO so far."""
        with self.state.lock:
            return self.state.connections

    def set_rule(self, address: str, rule: Rule) -> None:
        with self.state.lock:
            self.state.rules[address.lower()] = rule

    def start(self) -> CaptureServer:
        """Listen; after stop(), listen again on the same port (a relay restarting), with the same rules."""
        if self.running:
            return self
        if self.controller.loop.is_closed():
            self.controller = self._controller()
        self.controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        """Stop listening and drop every session, as a relay that is stopped does (aiosmtpd's own stop may leave
        a connection open and silent)."""
        if self.running:
            asyncio.run_coroutine_threadsafe(self._drop_sessions(), self.controller.loop).result(timeout=10)
            self.controller.stop()
            self.running = False

    async def _drop_sessions(self) -> None:
        with self.state.lock:
            sessions = list(self.state.sessions)
        for session in sessions:
            if isinstance(session.transport, asyncio.Transport):
                session.transport.abort()
        for _ in range(3):
            await asyncio.sleep(0)  # the transports close their sockets in the loop's next rounds

    def __enter__(self) -> CaptureServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
