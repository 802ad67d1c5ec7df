"""RenderedIssue + one recipient -> the message bytes and SMTP envelope.

Pure: the clock, secret and Message-ID domain are passed in. The MIME skeleton is built once per campaign
(MessageTemplate), embedded images and attachments encoded in it; per recipient only the personal headers are
encoded and the two bodies re-encoded, which is what keeps the per-recipient cost far below
`EmailMessage.as_bytes()`. Headers are encoded here, not by the email package, so no input (CR/LF, or an RFC 2047
word that decodes to CR/LF: CVE-2024-6923) reaches the wire raw."""

from __future__ import annotations

import base64
import binascii
import email.quoprimime
import email.utils
import functools
import hashlib
import html
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from mailer.attachments import encode_part
from mailer.errors import HeaderError
from mailer.models import Recipient
from mailer.render import PLACEHOLDER_RE, InlineImage, RenderedIssue, attr_placeholder_keys, substitute
from mailer.tokens import TokenKind, make_token

CRLF = "\r\n"
MAX_LINE = 78  # RFC 5322 2.1.1 SHOULD; the MUST is 998, which nothing here can exceed
_EW_BYTES = 42  # UTF-8 octets per encoded word: 56 base64 chars + 12 of wrapping keeps each line under 78
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Terminal escape sequences (CSI such as ESC [ 2 J, OSC such as ESC ] 0 ; title BEL, and two-character ones) go
# whole: with only the ESC removed, text read from a bounce or a form would still show as "[31m" debris.
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-~]")
# Bidi embeddings, overrides, isolates, marks: they show a name or a reply in another order ("Trojan Source").
_BIDI_CONTROL = re.compile(r"[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
without_bidi = functools.partial(_BIDI_CONTROL.sub, "")  # the text with them removed (a console page, whole)
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+$")
_ADDR_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>()\[\],;:\\\"]")
_NOT_PLAIN_WIRE = re.compile(rb"\r(?!\n)|(?<!\r)\n|\n\.")  # a bare CR or LF, or a line that needs dot-stuffing


def without_controls(value: object) -> str:
    """Text without terminal escapes or bidi controls; other control characters (CR, LF, NUL ...) become spaces."""
    return _CONTROL.sub(" ", _BIDI_CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", str(value))))


def clean_header_text(value: object) -> str:
    """Header-safe (and terminal-safe) text: without controls, runs of space folded, bidi overrides gone."""
    text = without_controls(_BIDI_CONTROL.sub("", unicodedata.normalize("NFC", str(value))))
    return " ".join(text.split())


def check_address(addr: str) -> str:
    """An address fit for a header and the envelope; raises HeaderError rather than ever encoding one."""
    addr = addr.strip()
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or _ADDR_FORBIDDEN.search(addr.replace("@", "", 1).replace(".", "")):
        raise HeaderError(f"{addr!r} is not a usable email address")
    if "@" in local or _ADDR_FORBIDDEN.search(local) or _ADDR_FORBIDDEN.search(domain):
        raise HeaderError(f"{addr!r} is not a usable email address")
    return addr


def wire_address(addr: str) -> tuple[str, bool]:
    """The address as it goes on the wire and whether it needs SMTPUTF8 (a non-ASCII local part)."""
    addr = check_address(addr)
    local, _, domain = addr.rpartition("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise HeaderError(f"{addr!r} has a domain that cannot be converted to ASCII") from None
    return f"{local}@{domain}", not local.isascii()


def _encoded_words(text: str) -> list[str]:
    words: list[str] = []
    chunk = b""
    for ch in text:
        b = ch.encode("utf-8")
        if len(chunk) + len(b) > _EW_BYTES:
            words.append(chunk)  # type: ignore[arg-type]
            chunk = b""
        chunk += b
    if chunk:
        words.append(chunk)  # type: ignore[arg-type]
    return [f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words]  # type: ignore[arg-type]


def _needs_encoding(text: str) -> bool:
    return not text.isascii() or "=?" in text or any(len(word) > 70 for word in text.split(" "))


def _fold(name: str, atoms: list[str]) -> str:
    """Join atoms with single spaces, breaking lines (CRLF + space) before an atom that would pass MAX_LINE."""
    lines = [f"{name}:"]
    for atom in atoms:
        if len(lines[-1]) + 1 + len(atom) > MAX_LINE and lines[-1] != f"{name}:":
            lines.append(f" {atom}")
        else:
            lines[-1] += f" {atom}"
    return CRLF.join(lines) + CRLF


# An ASCII word longer than this could not stay under 998 octets on a line of its own ("Subject: " included).
_LONGEST_RAW_WORD = 900


def _word_needs_encoding(word: str, longest: int) -> bool:
    return not word.isascii() or "=?" in word or len(word) > longest


def unstructured_header(name: str, value: object) -> str:
    """`Name: value` folded, with RFC 2047 encoded words only for the runs of words that need them (RFC 2047 5(1)):
    the spaces inside a run are encoded with it, those between a run and a plain word stay as they are. ASCII words
    stay readable: spam filters score an all-ASCII subject sent encoded (rspamd SUBJ_EXCESS_BASE64, +1.5), so in
    one a long word (a URL) keeps its own line, past the 78-character SHOULD but far from the 998-octet MUST, since
    folding happens only at white space (RFC 5322 2.2.3). A subject that is encoded anyway encodes a long word too,
    which keeps every line within 78. The value is cleaned of control characters first, so no CR/LF can appear,
    encoded or not."""
    text = clean_header_text(value)
    longest = _LONGEST_RAW_WORD if text.isascii() else MAX_LINE - len(name) - 2
    atoms: list[str] = []
    run: list[str] = []
    for word in text.split(" ") if text else []:
        if _word_needs_encoding(word, longest):
            run.append(word)
            continue
        if run:
            atoms += _encoded_words(" ".join(run))
            run = []
        atoms.append(word)
    if run:
        atoms += _encoded_words(" ".join(run))
    return _fold(name, atoms)


def _phrase_atoms(display_name: str) -> list[str]:
    text = clean_header_text(display_name)
    if not text:
        return []
    if _needs_encoding(text):
        return _encoded_words(text)
    if _ATEXT.match(text) and "=?" not in text:
        return text.split(" ")
    quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    # A quoted string cannot be folded: a long one would make a line past 998 octets; encoded words fold.
    return [quoted] if len(quoted) <= 70 else _encoded_words(text)


def address_header(name: str, display_name: str, addr: str) -> str:
    """`Name: display <addr>`; the display name is quoted or encoded, the address never is."""
    addr = check_address(addr)
    atoms = _phrase_atoms(display_name)
    return _fold(name, [*atoms, f"<{addr}>"] if atoms else [addr])


def parse_from(value: str) -> tuple[str, str]:
    """Split `Name <addr>` as written in configuration into (name, addr). One mailbox only: parseaddr (this
    Python's, without 3.13's strict mode) kept the first of "A <a@x>, B <b@x>" or "Evil <e@x> Bcc: v@x" and
    dropped the rest without a word."""
    found = email.utils.getaddresses([clean_header_text(value)])
    if len(found) != 1 or not found[0][1] or "@" not in found[0][1]:
        raise HeaderError(f"{value!r} is not a 'Name <address>' or an address (one, with nothing after it)")
    name, addr = found[0]
    return name, check_address(addr)


def _cte_for(body: bytes) -> str:
    """quoted-printable for mostly-ASCII text (readable, and spam filters frown on base64 English); base64 when it
    is the shorter one, as for CJK. Chosen once per part per campaign, on the whole body."""
    if body.isascii():
        return "quoted-printable"
    qp = email.quoprimime.body_encode(body.decode("latin-1"), MAX_LINE)
    return "base64" if len(qp) > len(base64.b64encode(body)) * 1.05 else "quoted-printable"


class _PartBody:
    """One text part's transfer-encoded body, with placeholders re-encoded per recipient.

    Output is byte-identical to the email package's `set_content(..., cte=...)` under policy SMTP (tested)."""

    def __init__(self, template: str, escape: bool) -> None:
        lines = template.encode("utf-8").splitlines()
        self.escape = escape
        self.cte = _cte_for(b"\n".join(lines))
        if self.cte == "base64":
            body = "\r\n".join(line.decode("utf-8") for line in lines) + "\r\n"
            self.pieces = PLACEHOLDER_RE.split(body)
        else:
            # quoprimime encodes line by line, so lines without placeholders are encoded once, here.
            self.qp_lines: list[str | list[str]] = []
            for line in lines:
                text = line.decode("utf-8")
                if PLACEHOLDER_RE.search(text):
                    self.qp_lines.append(PLACEHOLDER_RE.split(text))
                else:
                    self.qp_lines.append(self._qp(line))

    @staticmethod
    def _qp(line: bytes) -> str:
        return email.quoprimime.body_encode(line.decode("latin-1") + "\n", MAX_LINE).replace("\n", CRLF)

    def _fill(self, pieces: list[str], values: dict[str, str]) -> str:
        out = pieces[:]
        for i in range(1, len(out), 2):
            out[i] = values.get(out[i], "")
        return "".join(out)

    def encode(self, values: dict[str, str]) -> bytes:
        if self.escape:
            values = {k: html.escape(v, quote=True) for k, v in values.items()}
        if self.cte == "base64":
            encoded = binascii.b2a_base64(self._fill(self.pieces, values).encode("utf-8"), newline=False)
            # 76-character lines as the email package writes them (57 octets a line), in one C-level join.
            return b"\r\n".join([encoded[i : i + 76] for i in range(0, len(encoded), 76)]) + b"\r\n"
        out = []
        for item in self.qp_lines:
            out.append(item if isinstance(item, str) else self._qp(self._fill(item, values).encode("utf-8")))
        return "".join(out).encode("ascii")


@dataclass(frozen=True)
class Sender:
    """The list-level identity of every message of a campaign."""

    from_name: str
    from_addr: str
    reply_to: str
    list_name: str
    list_title: str
    base_url: str
    domain: str = ""

    @property
    def mail_domain(self) -> str:
        return self.domain or self.from_addr.rpartition("@")[2].lower()


class MessageSigner(Protocol):
    """What MessageTemplate needs of a DKIM signer (mailer.dkim.Signer): the message with its signature first."""

    def sign(self, data: bytes, timestamp: int | None = None) -> bytes: ...

    def for_tail(self, tail: bytes) -> Callable[[bytes, int | None], bytes]:
        """A signer of messages that all end with `tail` (given without it), which it canonicalises once."""
        ...


TEST_SUBJECT_PREFIX = "[TEST] "


@dataclass(frozen=True)
class BuiltMessage:
    mail_from: str
    rcpt_to: str
    message_id: str
    data: bytes
    smtputf8: bool = False
    unsubscribe_url: str = ""
    clean_tail: int = 0  # bytes at the end known to be CRLF lines none of which starts with ".": not scanned again


def message_id_for(campaign_id: int, subscriber_id: int, salt: str, domain: str) -> str:
    """Unique per recipient and campaign, and the same on every retry of that recipient."""
    tag = hashlib.sha256(f"{salt}:{campaign_id}:{subscriber_id}".encode()).hexdigest()[:12]
    return f"<mailer.{campaign_id}.{subscriber_id}.{tag}@{domain}>"


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/u/{token}"


def preferences_url(base_url: str, secret: bytes, list_id: int, subscriber_id: int, issued: int) -> str:
    """The preferences page of one subscriber: the token carries when it was made (its expiry and rotation)."""
    token = make_token(secret, TokenKind.PREFERENCES, list_id, subscriber_id, issued)
    return f"{base_url.rstrip('/')}/p/{token}"


def web_edition_url(base_url: str, list_name: str, slug: str, key: str = "") -> str:
    """An issue's page in its list's archive; `key` opens it while the archive is not public."""
    return f"{base_url.rstrip('/')}/a/{list_name}/{slug}" + (f"?k={key}" if key else "")


def _image_part(boundary: str, image: InlineImage) -> bytes:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", image.filename) or "image"
    encoded = binascii.b2a_base64(image.data, newline=False)
    lines = b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    head = (
        f"\r\n--{boundary}\r\n"
        f'Content-Type: {image.content_type}; name="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f"Content-ID: <{check_address(image.cid)}>\r\n"
        f'Content-Disposition: inline; filename="{name}"\r\n\r\n'
    )
    return head.encode("ascii") + lines + b"\r\n"


class MessageTemplate:
    """The MIME skeleton of one campaign's messages, built once; `build` personalises it for one recipient."""

    def __init__(
        self,
        issue: RenderedIssue,
        sender: Sender,
        *,
        secret: bytes,
        campaign_id: int,
        list_id: int,
        salt: str,
        boundary: str | None = None,
        fallback_name: str = "",
        signer: MessageSigner | None = None,
        test: bool = False,
        view_url: str = "",
    ) -> None:
        self.issue = issue
        # "view in browser": the campaign's web edition, the same link for every recipient
        self.view_url = view_url or web_edition_url(sender.base_url, sender.list_name, issue.slug)
        self.signer = signer  # DKIM: signs each finished message, the key loaded once per campaign
        self.test = test  # a test send: the subject says so, whatever the mail client shows
        self.sender = sender
        self.secret = secret
        self.campaign_id = campaign_id
        self.list_id = list_id
        self.salt = salt
        self.fallback_name = fallback_name
        self.attr_codes = attr_placeholder_keys(issue.attr_keys)
        domain = sender.mail_domain
        check_address(sender.from_addr)
        self.boundary = boundary or f"==mailer-{hashlib.sha256(f'{salt}:{campaign_id}'.encode()).hexdigest()[:24]}=="
        self.head_before_to = address_header("From", sender.from_name, sender.from_addr)
        self.head_subject = unstructured_header("Subject", (TEST_SUBJECT_PREFIX if test else "") + issue.subject)
        self.head_tail = self._tail(sender.list_name, sender.list_title)
        self.list_tails: dict[int, str] = {}  # the other lists of a campaign's audience, by id
        self.list_views: dict[int, str] = {}  # and their archive's link to the issue
        alternative = f'Content-Type: multipart/alternative;\r\n boundary="{self.boundary}"\r\n'
        self.opening = b""
        self.text = _PartBody(issue.text, escape=False)
        self.html = _PartBody(issue.html, escape=True)
        # The blank line before each delimiter mirrors the email package's generator byte for byte.
        self.part_heads = [
            f'{sep}--{self.boundary}\r\nContent-Type: text/{kind}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {part.cte}\r\n\r\n".encode("ascii")
            for sep, kind, part in (("", "plain", self.text), ("\r\n", "html", self.html))
        ]
        self.closing = f"\r\n--{self.boundary}--\r\n".encode("ascii")
        top = alternative
        if issue.images:
            # Embedded images: multipart/related around the alternative, as Outlook sends it (the wire check wants
            # text/html last inside the alternative), each image once per campaign, encoded here.
            related = self.boundary.replace("==mailer-", "==mailer-rel-")
            top = f'Content-Type: multipart/related;\r\n type="multipart/alternative";\r\n boundary="{related}"\r\n'
            self.opening = f"--{related}\r\n{alternative}\r\n".encode("ascii")
            self.closing += b"".join(_image_part(related, image) for image in issue.images)
            self.closing += f"\r\n--{related}--\r\n".encode("ascii")
        if issue.attachments:
            # Attachments: multipart/mixed around the body (alternative, or related with its images), each file
            # encoded here, once per campaign; per recipient its bytes are only copied.
            mixed = self.boundary.replace("==mailer-", "==mailer-mix-")
            self.opening = f"--{mixed}\r\n{top}\r\n".encode("ascii") + self.opening
            self.closing += b"".join(encode_part(mixed, attachment) for attachment in issue.attachments)
            self.closing += f"\r\n--{mixed}--\r\n".encode("ascii")
            top = f'Content-Type: multipart/mixed;\r\n boundary="{mixed}"\r\n'
        self.head_post = "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nMIME-Version: 1.0\r\n" + top
        # DKIM: the closing (images, attachments, end boundaries) is the same in every message, so its canonical
        # form is made once here; per message the body hash still reads all of it (~1 ms per 2 MB, measured).
        self.sign_with_tail = signer.for_tail(self.closing) if signer is not None else None
        # SMTP needs no second look at the closing (1.4 MB of base64 for a 1 MB PDF): checked once, here.
        clean = self.closing.startswith(b"\r\n") and not _NOT_PLAIN_WIRE.search(self.closing)
        self.clean_tail = len(self.closing) if clean else 0
        self.bounce_domain = domain

    def _tail(self, list_name: str, list_title: str) -> str:
        list_slug = re.sub(r"[^a-z0-9-]+", "-", list_name.lower()).strip("-") or "list"
        tail = [address_header("Reply-To", "", self.sender.reply_to)] if self.sender.reply_to else []
        tail.append(_fold("List-Id", [*_phrase_atoms(list_title), f"<{list_slug}.{self.sender.mail_domain}>"]))
        return "".join(tail)

    def add_list(self, list_id: int, list_name: str, list_title: str, view_url: str = "") -> None:
        """A campaign for several lists: who is on this one gets its List-Id and an unsubscribe link for it, and
        "view in browser" opens the issue in this list's archive (the content, From and Reply-To stay those of the
        first list)."""
        if list_id != self.list_id:
            self.list_tails[list_id] = self._tail(list_name, list_title)
            if view_url:
                self.list_views[list_id] = view_url

    def values_for(self, recipient: Recipient, unsub_url: str, now: datetime) -> dict[str, str]:
        values = {
            "NAME": clean_header_text(recipient.name) or self.fallback_name,
            "EMAIL": recipient.email,
            "UNSUBSCRIBE_URL": unsub_url,
            "PREFERENCES_URL": preferences_url(
                self.sender.base_url,
                self.secret,
                recipient.list_id if recipient.list_id in self.list_tails else self.list_id,  # the list they are on
                recipient.subscriber_id,
                int(now.timestamp()),
            ),
            "VIEW_URL": self.list_views.get(recipient.list_id, self.view_url),
        }
        for code, key in self.attr_codes.items():
            values[code] = clean_header_text(recipient.attrs.get(key, ""))
        return values

    def build(self, recipient: Recipient, now: datetime) -> BuiltMessage:
        rcpt, smtputf8 = wire_address(recipient.email)
        tail = self.list_tails.get(recipient.list_id)
        list_id = self.list_id if tail is None else recipient.list_id
        utoken = make_token(self.secret, TokenKind.UNSUBSCRIBE, list_id, recipient.subscriber_id)
        btoken = make_token(self.secret, TokenKind.BOUNCE, self.campaign_id, recipient.delivery_id)
        url = unsubscribe_url(self.sender.base_url, utoken)
        domain = self.bounce_domain
        message_id = message_id_for(self.campaign_id, recipient.subscriber_id, self.salt, domain)
        values = self.values_for(recipient, url, now)
        head = (
            self.head_before_to
            + address_header("To", recipient.name, rcpt)
            + self.head_subject
            + f"Date: {email.utils.format_datetime(now)}\r\n"
            + f"Message-ID: {message_id}\r\n"
            + (self.head_tail if tail is None else tail)
            + f"List-Unsubscribe: <{url}>,\r\n <mailto:unsubscribe+{utoken}@{domain}?subject=unsubscribe>\r\n"
            + self.head_post
            + "\r\n"
        )
        personal = (
            head.encode("utf-8"),
            self.opening,
            self.part_heads[0],
            self.text.encode(values),
            self.part_heads[1],
            self.html.encode(values),
        )
        if self.sign_with_tail is not None:
            data = self.sign_with_tail(b"".join(personal), int(now.timestamp()))
        else:
            data = b"".join((*personal, self.closing))
        return BuiltMessage(f"bounces+{btoken}@{domain}", rcpt, message_id, data, smtputf8, url, self.clean_tail)

    def personal_bodies(self, recipient: Recipient, unsub_url: str, now: datetime) -> tuple[str, str]:
        """The HTML and text one recipient sees, decoded (for previews and `mailer render`)."""
        values = self.values_for(recipient, unsub_url, now)
        escaped = {k: html.escape(v, quote=True) for k, v in values.items()}
        return substitute(self.issue.html, escaped), substitute(self.issue.text, values)
