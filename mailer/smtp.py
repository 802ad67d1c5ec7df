"""Everything aiosmtplib: one persistent SMTP session, reply classification (sent / deferred / failed).

The only module that imports aiosmtplib. It never logs or returns the password; errors that mean "this server
cannot be used at all" are raised as SMTPUnavailable so the engine can stop before marking anyone failed."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from enum import StrEnum

import aiosmtplib

from mailer.errors import ConfigError, SMTPUnavailable
from mailer.message import BuiltMessage
from mailer.models import DeliveryStatus


class Stage(StrEnum):
    CONNECT = "connect"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end-of-data"


@dataclass(frozen=True)
class SMTPSettings:
    host: str = "127.0.0.1"
    port: int = 25
    tls: str = "none"  # starttls | tls | none
    user: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 30.0
    local_hostname: str | None = None

    def check_policy(self) -> None:
        """A password never crosses the network in plain text, except to this machine."""
        if self.password and self.tls == "none" and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to send the SMTP password in plain text to {self.host}; set MAILER_SMTP_TLS=starttls or tls"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Reply:
    """The end of one message's SMTP transaction."""

    status: DeliveryStatus
    code: int | None
    text: str
    stage: Stage
    connection_lost: bool = False


def classify(code: int, text: str, stage: Stage) -> Reply:
    if 200 <= code < 300:
        return Reply(DeliveryStatus.SENT, code, text, stage)
    if 400 <= code < 500:
        return Reply(DeliveryStatus.DEFERRED, code, text, stage, connection_lost=code == 421)
    return Reply(DeliveryStatus.FAILED, code, text, stage)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


class Session:
    """One SMTP connection reused for many messages."""

    def __init__(self, settings: SMTPSettings) -> None:
        self.settings = settings
        self.client: aiosmtplib.SMTP | None = None
        self.sent_on_session = 0

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    async def open(self) -> None:
        """Connect, TLS and log in; raises SMTPUnavailable when this server cannot be used."""
        s = self.settings
        s.check_policy()
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.tls == "tls",
            start_tls=s.tls == "starttls",
            local_hostname=s.local_hostname or socket.gethostname(),  # getfqdn() may wait on DNS
        )
        where = f"{s.host}:{s.port}"
        try:
            await client.connect()
            if s.user:
                await client.login(s.user, s.password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _close_quietly(client)
            raise SMTPUnavailable(
                f"SMTP login to {where} as {s.user!r} refused: {exc.code} {_one_line(exc.message)}"
            ) from None
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPConnectTimeoutError, aiosmtplib.SMTPConnectResponseError,
                aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError, ssl.SSLError) as exc:
            await _close_quietly(client)
            raise SMTPUnavailable(f"cannot connect to SMTP server {where}: {_one_line(str(exc))}") from None
        except aiosmtplib.SMTPException as exc:
            await _close_quietly(client)
            raise SMTPUnavailable(f"SMTP server {where} refused the session: {_one_line(str(exc))}") from None
        self.client = client
        self.sent_on_session = 0

    async def send(self, message: BuiltMessage) -> Reply:
        """One transaction: MAIL, RCPT, DATA. A reply of any kind is returned, never raised."""
        if not self.connected:
            await self.open()
        client = self.client
        assert client is not None
        stage = Stage.MAIL
        try:
            # Bodies are 7-bit (base64 / quoted-printable); only an internationalised address needs SMTPUTF8.
            options = ["SMTPUTF8"] if message.smtputf8 else []
            await client.mail(message.mail_from, options=options)
            stage = Stage.RCPT
            await client.rcpt(message.rcpt_to)
            stage = Stage.DATA
            response = await client.data(message.data)
            self.sent_on_session += 1
            return classify(response.code, response.message, Stage.END_OF_DATA)
        except aiosmtplib.SMTPResponseException as exc:
            reply = classify(exc.code, _one_line(exc.message), stage)
            if reply.connection_lost or exc.code == 421:
                await self.close()
            else:
                await self._reset()
            return reply
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            await self.close()
            # Lost before the final "." was acknowledged: if DATA was under way the server may have the message.
            in_doubt = stage == Stage.DATA
            text = f"connection lost during {stage}: {_one_line(str(exc)) or type(exc).__name__}"
            if in_doubt:
                text += " (delivery in doubt)"
            return Reply(DeliveryStatus.DEFERRED, None, text, stage, connection_lost=True)

    async def _reset(self) -> None:
        if self.client is None:
            return
        try:
            await self.client.rset()
        except (aiosmtplib.SMTPException, OSError):
            await self.close()

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


async def _close_quietly(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        client.close()


async def probe(settings: SMTPSettings) -> None:
    """Open and close one session: SMTPUnavailable if the server cannot be used."""
    session = Session(settings)
    await session.open()
    await session.close()
