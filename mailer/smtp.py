"""Everything aiosmtplib: the relays of the configuration (MAILER_SMTP_HOST may list several), one persistent SMTP
session, reply classification (sent / deferred / failed), the probe before a campaign, what a relay offers (for
mailer doctor) and the one-off sender of a sign-up confirmation.

The only module that imports aiosmtplib. It never logs or returns the password; errors that mean "this server
cannot be used at all" are raised as SMTPUnavailable so the engine can stop before marking anyone failed."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol

from mailer.addresses import is_loopback
from mailer.config import Config
from mailer.errors import ConfigError, SMTPUnavailable, UsageError
from mailer.message import BuiltMessage
from mailer.models import DeliveryStatus


class Stage(StrEnum):
    """Where in a message's SMTP transaction a reply came."""

    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end-of-data"


class RelayUnreachable(SMTPUnavailable):
    """The relay cannot be reached just now (refused, timed out, closed during the greeting, or answered 4xx
    there): a relay that is restarting looks like this, so the engine waits a while before it gives up."""


class SessionRefused(SMTPUnavailable):
    """The relay refused the session or the sender, or answered something that is not SMTP: no recipient is to
    blame, so none is marked failed. `in_doubt`: it happened after DATA began (the relay may have the message)."""

    def __init__(self, message: str, *, in_doubt: bool = False) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


@dataclass(frozen=True)
class SMTPSettings:
    host: str = "127.0.0.1"
    port: int = 25
    tls: str = "none"  # starttls | tls | none
    user: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 30.0
    local_hostname: str | None = None
    ca_file: str = ""  # PEM bundle that verifies the relay's certificate instead of the system's (MAILER_SMTP_CA)

    def check_policy(self) -> None:
        """A password never crosses the network in plain text, except to this machine."""
        if self.password and self.tls == "none" and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to send the SMTP password in plain text to {self.host}; set MAILER_SMTP_TLS=starttls or tls"
            )


def relays(config: Config, host: str | None = None, port: int | None = None) -> list[SMTPSettings]:
    """One SMTPSettings per relay: MAILER_SMTP_HOST (or --smtp-host) may list several as `host[:port],...`."""
    relays = []
    for item in filter(None, (part.strip() for part in (host or config.smtp_host).split(","))):
        # host:port; an IPv6 literal (more than one colon) takes the default port
        name, relay_port = item.split(":") if item.count(":") == 1 else (item, "")
        if relay_port and not relay_port.isdigit():
            raise UsageError(f"SMTP relay {item!r}: the port must be a number")
        relays.append(
            SMTPSettings(
                host=name,
                port=port or (int(relay_port) if relay_port else config.smtp_port),
                tls=config.smtp_tls,
                user=config.smtp_user,
                password=config.smtp_password,
                timeout=config.smtp_timeout,
                ca_file=config.smtp_ca,
            )
        )
    if not relays:
        raise UsageError("no SMTP host configured")
    for relay in relays:
        if not 0 < relay.port < 65536:
            raise UsageError(f"SMTP port {relay.port} of {relay.host} is not a TCP port (1 to 65535)")
    return relays


@functools.cache
def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """Certificate and host name checked, against `ca_file` or the system's CAs; built once per process, since
    loading the system bundle costs milliseconds and a campaign opens a session every SESSION_MESSAGE_CAP messages."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"MAILER_SMTP_CA: cannot load CA certificates from {ca_file}: {getattr(exc, 'strerror', None) or exc}"
        ) from None


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


_BASE64_WORD = re.compile(r"[A-Za-z0-9+/]{4,}={0,2}")


def without_credentials(text: str, user: str, password: str) -> str:
    """A relay's reply to AUTH with what was sent for it taken out: some relays echo the AUTH argument, which is
    the user and password in base64 (PLAIN, LOGIN) or the user and a digest of the password (CRAM-MD5)."""
    secret = password.encode("utf-8")
    name = user.encode("utf-8")

    def sent_by_us(word: str) -> bool:
        try:
            decoded = base64.b64decode(word + "=" * (-len(word) % 4), validate=True)
        except (binascii.Error, ValueError):
            return False
        return bool((secret and secret in decoded) or (name and (decoded == name or decoded.startswith(name + b" "))))

    text = _BASE64_WORD.sub(lambda m: "[redacted]" if sent_by_us(m.group(0)) else m.group(0), text)
    if len(password) >= 4:
        text = text.replace(password, "[redacted]")
    elif password:
        text = " ".join("[redacted]" if word == password else word for word in text.split(" "))
    return text


def _garbled(code: int) -> bool:
    """aiosmtplib's code for a reply line that does not start with three digits is -1."""
    return not 200 <= code < 600


# A bare LF, or a line that starts with "." (found with a memchr-speed scan for "\n"); and a bare CR.
_LF_OR_DOT_LINE = re.compile(rb"\n(?:(?<!\r\n)|\.)")
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_BARE_CR = re.compile(rb"\r(?!\n)")
_ENVELOPE_ADDRESS = re.compile(r"[^\x00-\x20\x7f<>]+\Z")


def wire_data(data: bytes, clean_tail: int = 0) -> bytes | None:
    """The message as it follows DATA: dot-stuffed and ended by "." (RFC 5321 4.5.2), the same bytes aiosmtplib's
    `data()` would write. None unless `data` is all CRLF lines, which MessageTemplate guarantees. The last
    `clean_tail` bytes, starting at a line, are known to be such lines with no "." first (a campaign's attachments).

    aiosmtplib normalises line endings and dot-stuffs with two regular-expression substitutions over the whole
    message (~400 µs for the 52 KB sample, half of mailer's CPU per message); two scans that find nothing to do
    cost ~30 µs. Base64 never starts a line with ".", so only quoted-printable bodies ever need stuffing."""
    end = len(data) - clean_tail
    end = end if 0 < end < len(data) and data.endswith(b"\r\n", 0, end) else len(data)
    if not data.endswith(b"\r\n") or _BARE_CR.search(data, 0, end):
        return None
    if _LF_OR_DOT_LINE.search(data, 0, end):
        if _BARE_LF.search(data, 0, end):
            return None
        data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"


# The fast DATA path writes through the client's protocol object, which aiosmtplib does not document; if a
# release drops these methods, messages go through `SMTP.data()` (correct, just slower).
_CAN_WRITE_DATA = all(callable(getattr(SMTPProtocol, name, None)) for name in ("write", "read_response"))


async def _send_data(client: aiosmtplib.SMTP, data: bytes, clean_tail: int = 0) -> aiosmtplib.SMTPResponse:
    """DATA, the message, the final "." and its reply; raises as `SMTP.data()` does (SMTPDataError on a refusal,
    and the connection closed after a timeout or a disconnect, since a reply may still be on its way)."""
    wire = wire_data(data, clean_tail) if _CAN_WRITE_DATA else None
    if wire is None:
        return await client.data(data)
    response = await client.execute_command(b"DATA")
    if response.code != 354:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost after DATA")
    try:
        protocol.write(wire)
        response = await protocol.read_response(timeout=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO (HELO if refused) on a new session, as SMTP.mail() would before the MAIL that send() writes itself."""
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        await client.helo()


async def _envelope_command(client: aiosmtplib.SMTP, verb: bytes, address: str, utf8: bool) -> None:
    """MAIL FROM or RCPT TO for an address message.py has checked (and send() has screened for anything that could
    end or extend the command); skips aiosmtplib's re-parsing of it with email.utils (~40 µs a message).
    Raises SMTPResponseException on a refusal."""
    args = [verb, b"FROM:<" if verb == b"MAIL" else b"TO:<"]
    args[1] += address.encode("utf-8" if utf8 else "ascii") + b">"
    if utf8 and verb == b"MAIL":
        args.append(b"SMTPUTF8")
    response = await client.execute_command(*args)
    if response.code not in (250, 251):
        raise aiosmtplib.SMTPResponseException(response.code, response.message)


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
            tls_context=tls_context(s.ca_file) if s.tls != "none" else None,
            local_hostname=s.local_hostname or socket.gethostname(),  # getfqdn() may wait on DNS
        )
        where = f"{s.host}:{s.port}"
        try:
            await client.connect()
            if s.user:
                await client.login(s.user, s.password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            await _close_quietly(client)
            failure = RelayUnreachable if 400 <= exc.code < 500 else SMTPUnavailable  # 454: try again later
            raise failure(
                f"SMTP login to {where} as {s.user!r} refused: {exc.code} "
                f"{_one_line(without_credentials(exc.message, s.user, s.password))}"
            ) from None
        except aiosmtplib.SMTPConnectResponseError as exc:
            await _close_quietly(client)
            failure = RelayUnreachable if 400 <= exc.code < 500 else SMTPUnavailable  # 421 at the greeting
            raise failure(f"SMTP server {where} refused the session: {_one_line(str(exc))}") from None
        except (
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPConnectTimeoutError,
            aiosmtplib.SMTPServerDisconnected,
            aiosmtplib.SMTPTimeoutError,
            OSError,
            ssl.SSLError,
        ) as exc:
            await _close_quietly(client)
            untrusted = _certificate_error(exc)
            if untrusted is not None:
                trusted = f"the CAs in {s.ca_file}" if s.ca_file else "the system's CAs (or set MAILER_SMTP_CA)"
                raise SMTPUnavailable(
                    f"TLS certificate of SMTP server {where} not accepted: "
                    f"{untrusted.verify_message}; it must be valid for {s.host} and signed by "
                    f"{trusted}"
                ) from None
            failure = SMTPUnavailable if isinstance(exc, ssl.SSLError) else RelayUnreachable
            raise failure(f"cannot connect to SMTP server {where}: {_one_line(str(exc))}") from None
        except aiosmtplib.SMTPException as exc:
            await _close_quietly(client)
            raise SMTPUnavailable(f"SMTP server {where} refused the session: {_one_line(str(exc))}") from None
        self.client = client
        self.sent_on_session = 0

    async def send(self, message: BuiltMessage) -> Reply:
        """One transaction: MAIL, RCPT, DATA. The recipient's reply of any kind is returned; what is about the
        session rather than the recipient is raised as SMTPUnavailable: the relay cannot be used (from open()),
        refuses the sender or asks for authentication (SessionRefused), or answers something that is not SMTP."""
        if not self.connected:
            await self.open()
        client = self.client
        assert client is not None
        stage = Stage.MAIL
        if not (_ENVELOPE_ADDRESS.match(message.mail_from) and _ENVELOPE_ADDRESS.match(message.rcpt_to)):
            return Reply(DeliveryStatus.FAILED, None, "address not usable on an SMTP command line", stage)
        # Bodies are 7-bit (base64 / quoted-printable); only an internationalised address needs SMTPUTF8.
        utf8 = message.smtputf8 or not (message.mail_from.isascii() and message.rcpt_to.isascii())
        try:
            if client.is_ehlo_or_helo_needed:
                await _greet(client)
            if utf8 and not client.supports_extension("smtputf8"):
                # As Postfix: a permanent failure for this recipient (RFC 6531 3.4); other recipients go on.
                return Reply(
                    DeliveryStatus.FAILED,
                    None,
                    f"{self.settings.host} does not offer SMTPUTF8, which this address needs",
                    stage,
                )
            await _envelope_command(client, b"MAIL", message.mail_from, utf8)
            stage = Stage.RCPT
            await _envelope_command(client, b"RCPT", message.rcpt_to, utf8)
            stage = Stage.DATA
            response = await _send_data(client, message.data, message.clean_tail)
            self.sent_on_session += 1
            return classify(response.code, response.message, Stage.END_OF_DATA)
        except aiosmtplib.SMTPResponseException as exc:
            where = f"{self.settings.host}:{self.settings.port}"
            if _garbled(exc.code):
                # The rest of what it said cannot be paired with our commands any more: this session is over.
                await self.close()
                raise SessionRefused(
                    f"SMTP server {where} answered {stage.upper()} with something that is not an "
                    f"SMTP reply: {_one_line(exc.message)}",
                    in_doubt=stage == Stage.DATA,
                ) from None
            if exc.code == 530 or (stage == Stage.MAIL and exc.code >= 500):
                # Refused for every recipient alike: authentication required (a forgotten MAILER_SMTP_USER), or
                # our sender address is refused. Marking recipients failed would burn the campaign.
                await self._reset()
                what = "asks for authentication" if exc.code == 530 else f"refused the sender {message.mail_from}"
                raise SessionRefused(
                    f"SMTP server {where} {what} at {stage.upper()}: {exc.code} {_one_line(exc.message)}"
                ) from None
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


def _certificate_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate check failure behind a connection error (aiosmtplib wraps it for implicit TLS)."""
    for _ in range(8):  # a chain is short; the bound guards against a cycle
        if exc is None or isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


async def _close_quietly(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        client.close()


async def probe(settings: SMTPSettings, size: bool = False) -> int | None:
    """Open and close one session: SMTPUnavailable if the server cannot be used. With `size`, the largest message
    it takes, from its EHLO SIZE (RFC 1870; 0 or none: no limit named); without, no EHLO unless a login needs one."""
    session = Session(settings)
    await session.open()
    named, client = "", session.client if size else None
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):  # it answered and let us in: usable, limit unknown
        if client is not None and client.is_ehlo_or_helo_needed:
            await client.ehlo()
        named = client.esmtp_extensions.get("size", "") if client is not None else ""
    await session.close()
    return int(named) if named.isdigit() and int(named) > 0 else None


async def send_one(relays: Sequence[SMTPSettings], message: BuiltMessage) -> Reply:
    """One message outside any campaign (a sign-up confirmation): the first relay that answers takes it.

    Raises SMTPUnavailable when none can be used; any SMTP reply (sent, deferred, failed) is returned."""
    unavailable: SMTPUnavailable | None = None
    for relay in relays:
        session = Session(relay)
        try:
            return await session.send(message)
        except SMTPUnavailable as exc:
            unavailable = exc
        finally:
            await session.close()
    raise unavailable or SMTPUnavailable("no SMTP relay configured")


async def ehlo_features(settings: SMTPSettings) -> dict[str, str]:
    """The relay's EHLO extensions (lower-case names), read over plain text: no TLS, no login, nothing sent.
    SMTPUnavailable when it does not answer."""
    client = aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.port,
        timeout=settings.timeout,
        use_tls=False,
        start_tls=False,
        local_hostname=settings.local_hostname or socket.gethostname(),
    )
    try:
        await client.connect()
        await client.ehlo()
        return dict(client.esmtp_extensions)
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise SMTPUnavailable(_one_line(str(exc))) from None
    finally:
        await _close_quietly(client)
