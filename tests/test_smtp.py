"""mailer/smtp.py against a real aiosmtpd server on 127.0.0.1: the fast DATA path puts on the wire exactly the bytes
aiosmtplib's own `SMTP.data()` would, internationalised addresses, and sessions the server closed while idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from mailer import smtp
from mailer.capture import CaptureServer
from mailer.message import BuiltMessage, MessageTemplate, Sender
from mailer.models import DeliveryStatus, Recipient
from mailer.render import ListContext, render_issue
from mailer.smtp import Session, SMTPSettings, wire_data
from tests.conftest import SAMPLE_ISSUE

HELLO = "mailer.test"


def aiosmtplib_wire(data: bytes) -> bytes:
    """What aiosmtplib writes after DATA for `data` (SMTPProtocol.execute_data_command)."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"


LINES = st.lists(
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b"a b", b"=2E", b" .", b"\xe4\xb8\xad"]), min_size=1, max_size=12
)


@given(LINES)
def test_wire_data_of_crlf_text_is_what_aiosmtplib_writes(lines: list[bytes]) -> None:
    data = b"".join(line + b"\r\n" for line in lines)
    assert wire_data(data) == aiosmtplib_wire(data)


@given(st.lists(st.sampled_from([b"", b".", b"x", b"\r\n", b"\n", b"\r", b"\r\n."]), max_size=12))
def test_wire_data_declines_what_it_would_have_to_normalise(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    wire = wire_data(data)
    # Bare CR or LF, or no final CRLF: left to SMTP.data(), which normalises; otherwise the very same bytes.
    assert wire is None or wire == aiosmtplib_wire(data)
    crlf_lines = data.endswith(b"\r\n") and not set(data.replace(b"\r\n", b"")) & set(b"\r\n")
    assert (wire is not None) == crlf_lines


@given(LINES, LINES)
def test_a_clean_tail_changes_nothing_on_the_wire(head: list[bytes], tail: list[bytes]) -> None:
    clean = b"".join(b"\r\n" + line.lstrip(b".") for line in tail) + b"\r\n"  # no line of it starts with "."
    data = b"".join(line + b"\r\n" for line in head) + clean
    # The true tail, part of it (perhaps not at a line start), none, and more than there is (ignored).
    for claimed in (len(clean), len(clean) // 2, 0, -3, len(data), len(data) + 5):
        assert wire_data(data, claimed) == aiosmtplib_wire(data), claimed


def test_the_tail_a_template_vouches_for_is_not_scanned_again() -> None:
    from dataclasses import replace

    from mailer.attachments import Attachment

    issue = render_issue(SAMPLE_ISSUE.read_text(encoding="utf-8"), str(SAMPLE_ISSUE), ListContext("t", "简报", "zh"))
    issue = replace(issue, attachments=(Attachment("a.pdf", "application/pdf", bytes(range(256)) * 4000),))
    sender = Sender("简报", "bulletin@example.org", "", "t", "简报", "https://news.example.org")
    template = MessageTemplate(issue, sender, secret=b"k" * 32, campaign_id=1, list_id=1, salt="s")
    built = template.build(Recipient(1, 1, "wang@example.org", "王小明", {}), datetime(2026, 11, 25, tzinfo=UTC))
    assert built.clean_tail == len(template.closing) > 1_000_000 and built.data.endswith(template.closing)
    assert wire_data(built.data, built.clean_tail) == wire_data(built.data) == aiosmtplib_wire(built.data)
    # A bare LF planted in the tail is not seen: the template's word is taken (its closing is checked once).
    planted = built.data[:-100] + b"x\n" + built.data[-98:]
    assert wire_data(planted) is None and wire_data(planted, built.clean_tail) is not None


def sample_message() -> BuiltMessage:
    issue = render_issue(SAMPLE_ISSUE.read_text(encoding="utf-8"), str(SAMPLE_ISSUE), ListContext("t", "简报", "zh"))
    sender = Sender("简报", "bulletin@example.org", "", "t", "简报", "https://news.example.org")
    template = MessageTemplate(issue, sender, secret=b"k" * 32, campaign_id=1, list_id=1, salt="s")
    return template.build(Recipient(1, 1, "wang@example.org", "王小明", {}), datetime(2026, 11, 25, tzinfo=UTC))


def crafted(data: bytes, rcpt: str = "li@example.com", smtputf8: bool = False) -> BuiltMessage:
    return BuiltMessage("bounces+x@example.org", rcpt, "<m@example.org>", data, smtputf8)


DOTS = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nmiddle\r\n. \r\n"
BARE_LF = b"Subject: bare\n\r\n.line after a bare LF\nend"


@asynccontextmanager
async def recording_proxy(port: int) -> AsyncIterator[tuple[int, list[bytearray]]]:
    """A TCP proxy on 127.0.0.1 in front of `port` that keeps what each client sent, connection by connection."""
    streams: list[bytearray] = []

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None) -> None:
        while chunk := await reader.read(65536):
            if record is not None:
                record.extend(chunk)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        streams.append(bytearray())
        await asyncio.gather(pump(reader, up_writer, streams[-1]), pump(up_reader, writer, None))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], streams


async def through_aiosmtplib(port: int, message: BuiltMessage) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname=HELLO, start_tls=False)
    await client.connect()
    encoding = "utf-8" if message.smtputf8 else "ascii"
    await client.mail(message.mail_from, options=["SMTPUTF8"] if message.smtputf8 else [], encoding=encoding)
    await client.rcpt(message.rcpt_to, encoding=encoding)
    await client.data(message.data)
    await client.quit()


async def through_session(port: int, message: BuiltMessage) -> None:
    session = Session(SMTPSettings(port=port, local_hostname=HELLO))
    reply = await session.send(message)
    await session.close()
    assert reply.status == DeliveryStatus.SENT, reply


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-DATA", "fallback"])
@pytest.mark.parametrize("name", ["sample issue", "dot lines", "bare LF", "SMTPUTF8"])
async def test_the_bytes_on_the_wire_are_those_of_aiosmtplib_data(
    smtp_server: CaptureServer, monkeypatch: pytest.MonkeyPatch, name: str, fast_path: bool
) -> None:
    message = {
        "sample issue": sample_message,
        "dot lines": lambda: crafted(DOTS),
        "bare LF": lambda: crafted(BARE_LF),
        "SMTPUTF8": lambda: crafted(DOTS, rcpt="用户@example.org", smtputf8=True),
    }[name]()
    monkeypatch.setattr(smtp, "_CAN_WRITE_DATA", fast_path)
    async with recording_proxy(smtp_server.port) as (port, streams):
        await through_aiosmtplib(port, message)
        await through_session(port, message)
        await asyncio.sleep(0.05)  # let the proxy copy the last bytes

    reference, ours = streams
    assert b"DATA\r\n" in ours
    assert bytes(ours) == bytes(reference)  # EHLO, MAIL, RCPT, DATA, the dot-stuffed message, QUIT
    first, second = smtp_server.received
    assert second.data == first.data
    assert second.rcpt_tos == first.rcpt_tos == (message.rcpt_to,)


async def test_an_smtputf8_address_fails_alone_where_the_server_lacks_smtputf8(tmp_path: Path) -> None:
    server = CaptureServer(tmp_path / "outbox")
    server.controller.SMTP_kwargs["enable_SMTPUTF8"] = False
    with server:
        session = Session(SMTPSettings(port=server.port, local_hostname=HELLO))
        refused = await session.send(crafted(DOTS, rcpt="用户@example.org", smtputf8=True))
        accepted = await session.send(crafted(DOTS))
        await session.close()
        received = server.received

    assert refused.status == DeliveryStatus.FAILED
    assert "SMTPUTF8" in refused.text
    assert accepted.status == DeliveryStatus.SENT
    assert [c.rcpt_tos for c in received] == [("li@example.com",)]


async def test_a_session_the_server_closed_while_idle_is_reopened_without_deferring_anyone(tmp_path: Path) -> None:
    # Why no RSET between messages: a server that drops an idle session (here after 1 s) is noticed by the event
    # loop while the session waits, so the next message opens a new one instead of failing on a dead socket.
    server = CaptureServer(tmp_path / "outbox")
    server.controller.SMTP_kwargs["timeout"] = 1
    with server:
        session = Session(SMTPSettings(port=server.port, local_hostname=HELLO))
        first = await session.send(crafted(DOTS))
        await asyncio.sleep(1.5)
        second = await session.send(crafted(DOTS, rcpt="zhang@example.net"))
        await session.close()
        connections = server.connections

    assert (first.status, second.status) == (DeliveryStatus.SENT, DeliveryStatus.SENT)
    assert connections == 2


@pytest.mark.parametrize("rcpt", ["a b@example.org", "x>@example.org", "li@example.com> NOTIFY=NEVER", "a\r\n@x.org"])
async def test_an_address_that_would_extend_the_command_line_is_failed_not_sent(
    smtp_server: CaptureServer, rcpt: str
) -> None:
    session = Session(SMTPSettings(port=smtp_server.port, local_hostname=HELLO))
    refused = await session.send(crafted(DOTS, rcpt=rcpt))
    accepted = await session.send(crafted(DOTS))
    await session.close()

    assert (refused.status, refused.code) == (DeliveryStatus.FAILED, None)
    assert accepted.status == DeliveryStatus.SENT
    assert [c.rcpt_tos for c in smtp_server.received] == [("li@example.com",)]
