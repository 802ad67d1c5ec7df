"""Returned mail -> what it says: delivery status notifications (RFC 3464, and the non-standard ones flufl.bounce
knows), complaint feedback reports (RFC 5965) and `mailto:` unsubscribe requests (RFC 2369).

Pure: bytes in, a ReturnedMail out. Matching it to deliveries and recording it is inbox.py's job."""

from __future__ import annotations

import binascii
import hashlib
import quopri
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser, Parser

from mailer.message import clean_header_text
from mailer.models import ReturnedKind

VERP_RE = re.compile(rb"\bbounces\+([a-z2-7]{16,64})@", re.IGNORECASE)
UNSUBSCRIBE_RE = re.compile(r"\bunsubscribe\+([a-z2-7]{16,64})@", re.IGNORECASE)
STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
SMTP_CODE_RE = re.compile(r"\b([245])\d\d\b")
# A msg-id as mailer writes it (RFC 5322 3.6.4): <left@right>, printable ASCII without angle brackets. It is never
# RFC 2047 encoded, so it is read as written; a blank, an encoded word or a bare word names no message we sent.
_MSG_ID = r"<[!-;=?-~]+@[!-;=?-~]+>"
MSG_ID_RE = re.compile(_MSG_ID)
MESSAGE_ID_RE = re.compile(rf"^[ \t]*Message-ID:[ \t]*({_MSG_ID})", re.IGNORECASE | re.MULTILINE)
# RFC 6533 3: a utf-8 address type may spell a character as \x{HHHH} (utf-8-addr-xtext / unitext).
_UNITEXT_RE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
# Headers that name the address the report was sent to: our VERP bounce or mailto-unsubscribe address.
ENVELOPE_HEADERS = ("delivered-to", "x-original-to", "envelope-to", "x-envelope-to", "to", "x-rcpt-to")
BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|delivery (status notification|failure|has failed)|returned mail|mail delivery (failed|failure)"
    r"|failure notice|退信|无法投递|投递失败",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Finding:
    """One address a report is about, and what happened to it."""

    kind: ReturnedKind
    email: str = ""
    status: str = ""  # enhanced status code, e.g. 5.1.1
    diagnostic: str = ""


@dataclass(frozen=True)
class ReturnedMail:
    key: str  # the same report read twice has the same key
    subject: str
    findings: list[Finding] = field(default_factory=list)
    verp_tokens: list[str] = field(default_factory=list)  # from bounces+TOKEN@ addresses, envelope headers first
    unsubscribe_tokens: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)  # Message-IDs of the original message


def _one_line(text: object, limit: int = 300) -> str:
    """Report text as it may be stored and printed: one line, no control characters or terminal escapes (a
    Diagnostic-Code is whatever the remote server, or whoever wrote the mail, chose to put there)."""
    return clean_header_text(text or "")[:limit]


def _message_id(headers: Message) -> str:
    """The original's Message-ID exactly as written, or "" when it is absent or not a msg-id."""
    for name, value in headers.raw_items():
        if name.lower() == "message-id":
            match = MSG_ID_RE.fullmatch(str(value).strip())
            return match.group(0) if match else ""
    return ""


def _address(value: str) -> str:
    """`rfc822; user@example.org`, `utf-8; 李四@example.org` or `<user@example.org>` -> the address."""
    kind, sep, address = value.partition(";")
    if not sep:
        address = value
    elif kind.strip().lower() == "utf-8":
        address = _UNITEXT_RE.sub(_unitext_char, address)
    return _one_line(address.strip().strip("<>"), 254)


def _unitext_char(match: re.Match[str]) -> str:
    point = int(match.group(1), 16)
    return chr(point) if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF else "\ufffd"


def _status_of(status: str, diagnostic: str) -> str:
    match = STATUS_RE.search(status) or STATUS_RE.search(diagnostic)
    if match:
        return ".".join(match.groups())
    code = SMTP_CODE_RE.search(diagnostic)
    return f"{code.group(1)}.0.0" if code else ""


def _kind_of(action: str, status: str) -> ReturnedKind:
    action = action.lower()
    if action in ("delivered", "relayed", "expanded"):
        return ReturnedKind.OTHER
    if action == "delayed" or status.startswith("4"):
        return ReturnedKind.SOFT
    if status.startswith("5") or action == "failed":
        return ReturnedKind.HARD
    return ReturnedKind.OTHER


def _dsn_findings(blocks: list[Message]) -> list[Finding]:
    """The per-recipient blocks of a delivery status report (RFC 3464 2.1, RFC 6533 6.1)."""
    findings = []
    for block in blocks[1:]:  # the first block is about the message, the others about one recipient each
        recipient = _address(str(block.get("Final-Recipient") or block.get("Original-Recipient") or ""))
        diagnostic = _one_line(block.get("Diagnostic-Code", ""))
        diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic[:12] else diagnostic
        status = _status_of(str(block.get("Status", "")), diagnostic)
        kind = _kind_of(str(block.get("Action", "")).strip(), status)
        findings.append(Finding(kind, recipient.lower(), status, diagnostic))
    return findings


def _message_body(part: Message) -> bytes:
    """The decoded body of a message/* part. Python parses every message/* type as one nested message, which fits
    message/rfc822, but RFC 6533's global-delivery-status is blocks of fields and global-headers only headers, both
    UTF-8 and, unlike their RFC 3464 twins, allowed a Content-Transfer-Encoding (RFC 6532 3.5). So the bytes are
    rebuilt as they were written (the parser keeps raw header values, 8-bit octets as surrogates) and decoded."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        inner = payload[0]
        head = "".join(f"{name}: {value}\n" for name, value in inner.raw_items()).encode("ascii", "surrogateescape")
        body = b"" if inner.is_multipart() else _decoded(inner)  # the inner part has no CTE
        raw = head + b"\n" + body if head else body
    else:
        raw = _decoded(part)
    if isinstance(payload, str):
        return raw  # get_payload(decode=True) applied the Content-Transfer-Encoding already
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    try:
        if encoding == "base64":
            return binascii.a2b_base64(raw)
        if encoding == "quoted-printable":
            return quopri.decodestring(raw)
    except binascii.Error:
        return b""
    return raw


def _decoded(part: Message) -> bytes:
    """A part's body with its Content-Transfer-Encoding undone (b"" for none, or for a multipart)."""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _messages(payload: object) -> list[Message]:
    """The parts of a parsed message/* payload (a list of messages for those types; anything else holds none)."""
    return [item for item in payload if isinstance(item, Message)] if isinstance(payload, list) else []


def _parse_fields(raw: bytes) -> Message:
    """One block of header fields, UTF-8 allowed (RFC 6532); undecodable octets become U+FFFD."""
    return Parser(policy=policy.default).parsestr(raw.decode("utf-8", "replace"), headersonly=True)


def _status_blocks(part: Message) -> list[Message]:
    if part.get_content_type() == "message/delivery-status":
        return _messages(part.get_payload())
    text = _message_body(part).replace(b"\r\n", b"\n")
    return [_parse_fields(block) for block in re.split(rb"\n[ \t]*\n", text.strip(b"\n")) if block.strip()]


def _original_headers(msg: Message) -> list[Message]:
    """The returned original's headers: a message/rfc822 or text/rfc822-headers part, or their RFC 6533 forms
    message/global and message/global-headers."""
    found = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            found.extend(_messages(part.get_payload())[:1])
        elif ctype == "text/rfc822-headers":
            found.append(_parse_fields(_decoded(part)))
        elif ctype in ("message/global", "message/global-headers"):
            found.append(_parse_fields(_message_body(part)))
    return found


def _text_of(msg: Message) -> str:
    pieces = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            raw = _decoded(part)
            pieces.append(raw.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(pieces)


def _fallback_findings(msg: Message, text: str) -> list[Finding]:
    """Bounces that are not RFC 3464: flufl.bounce's detectors, then X-Failed-Recipients and the status in the text."""
    from flufl.bounce import all_failures  # ~40 heuristics for MTAs old and new, from GNU Mailman's authors

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # its detectors assume well-formed mail (yale's indexes the From header); ours need not be
        temporary, permanent = frozenset[bytes](), frozenset[bytes]()
    match = STATUS_RE.search(text)
    status = ".".join(match.groups()) if match else ""
    line = next((ln for ln in text.splitlines() if status and status in ln), "")
    hard = [_one_line(a.decode("utf-8", "replace"), 254).lower() for a in sorted(permanent)]
    soft = [_one_line(a.decode("utf-8", "replace"), 254).lower() for a in sorted(temporary - permanent)]
    findings = [Finding(ReturnedKind.HARD, a, status if status[:1] != "4" else "5.0.0", _one_line(line)) for a in hard]
    findings += [Finding(ReturnedKind.SOFT, a, status if status[:1] == "4" else "4.0.0", _one_line(line)) for a in soft]
    if findings:
        return findings
    failed = [_address(a).lower() for a in str(msg.get("X-Failed-Recipients", "")).split(",") if a.strip()]
    if not failed and not BOUNCE_SUBJECT_RE.search(str(msg.get("Subject", ""))):
        return []
    kind = {"4": ReturnedKind.SOFT, "5": ReturnedKind.HARD}.get(status[:1], ReturnedKind.OTHER)
    return [Finding(kind, email, status, _one_line(line)) for email in failed or [""]]


def report_key(msg: Message, raw: bytes) -> str:
    message_id = str(msg.get("Message-ID", "")).strip()
    if message_id:
        return f"mid:{message_id}"
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def parse_returned(raw: bytes) -> ReturnedMail:
    """Read one returned message: which of our messages it is about and what it says about which address."""
    msg: EmailMessage = BytesParser(policy=policy.default).parsebytes(raw)
    key = report_key(msg, raw)
    subject = _one_line(msg.get("Subject", ""), 200)
    envelope = " ".join(str(v) for h in ENVELOPE_HEADERS for v in (msg.get_all(h) or []))
    originals = _original_headers(msg)
    # Our VERP address is where the report was sent; failing that, the original's Return-Path names it.
    tokens = [t.decode().lower() for t in VERP_RE.findall(envelope.encode("utf-8", "replace"))]
    for original in originals:
        tokens += [t.decode().lower() for t in VERP_RE.findall(str(original.get("Return-Path", "")).encode())]
    tokens += [t.decode().lower() for t in VERP_RE.findall(raw)]
    message_ids = [m for m in (_message_id(o) for o in originals) if m]
    text = _text_of(msg)
    message_ids += [m for m in MESSAGE_ID_RE.findall(text) if m not in message_ids]
    unsubscribe = list(dict.fromkeys(t.lower() for t in UNSUBSCRIBE_RE.findall(envelope)))

    findings: list[Finding] = []
    report_type = (
        str(msg.get_param("report-type", "") or "").lower() if msg.get_content_type() == "multipart/report" else ""
    )
    if report_type == "feedback-report":
        feedback = next((p for p in msg.walk() if p.get_content_type() == "message/feedback-report"), None)
        email = ""
        if feedback is not None:
            body = feedback.get_payload()
            parts = _messages(body)
            fields = parts[0] if parts else Parser(policy=policy.default).parsestr(str(body).lstrip(), headersonly=True)
            email = _address(str(fields.get("Original-Rcpt-To", ""))).lower()
        if not email and originals:
            email = _address(str(originals[0].get("To", "")).rpartition("<")[2]).lower()
        findings.append(Finding(ReturnedKind.COMPLAINT, email, "", _one_line(msg.get("Subject", ""))))
    else:
        for part in msg.walk():
            if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
                findings += _dsn_findings(_status_blocks(part))
        if not findings and not unsubscribe:
            findings = _fallback_findings(msg, text)
    if unsubscribe and not findings:
        findings.append(Finding(ReturnedKind.UNSUBSCRIBE, "", "", subject))
    return ReturnedMail(key, subject, findings, list(dict.fromkeys(tokens)), unsubscribe, message_ids)
