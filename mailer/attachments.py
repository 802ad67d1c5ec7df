"""Files that travel with an issue (`attachments:` in front matter): read once per issue, encoded once per campaign.

Pure: names and a file reader in, Attachment values and their MIME part bytes out. Filenames in any script reach
every mail client: RFC 2231 `filename*` (what Thunderbird, Apple Mail and the email package read) beside an RFC 2047
`name` / `filename` (what Outlook and Gmail's web client read)."""

from __future__ import annotations

import base64
import binascii
import html
import mimetypes
import re
import unicodedata
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mailer.errors import TemplateError

WARN_BYTES = 2 * 1024 * 1024  # above this per message, many receivers slow or spam-folder a newsletter
DEFAULT_LIMIT_BYTES = 10 * 1024 * 1024  # Gmail takes 25 MB, but a list of thousands at 10 MB each is a relay's day
# Programs and scripts: Gmail and Outlook.com reject a message carrying one, others quarantine it, and to a reader
# a newsletter with one looks like malware.
RISKY_SUFFIXES = frozenset({"exe", "bat", "cmd", "com", "scr", "js", "vbs", "msi", "ps1", "jar"})
_SAFE_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*")
_ASCII_NAME = re.compile(r"[A-Za-z0-9 ._()+,-]+")


class ReadFile(Protocol):
    """Reads a file the issue names; with `limit`, at most limit + 1 bytes (so a file over it is known to be, without
    reading a sparse 3 GB file whole). Only a regular file: a named pipe or a device is a TemplateError, not a hang."""

    def __call__(self, name: str, limit: int | None = None) -> bytes: ...


@dataclass(frozen=True)
class Attachment:
    filename: str  # as the reader sees it: 简报第10期.pdf
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def _clean_name(written: str) -> str:
    """The file's own name (no folders), without controls or quotes that would break the header, nor angle
    brackets: the email package reads `<x>` as x in a quoted name (email.utils.unquote), and Windows cannot save
    a file named with them."""
    name = unicodedata.normalize("NFC", written.replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" and ch not in '"<>')
    return name.strip() or "attachment"


def content_type_of(filename: str) -> str:
    guessed, encoding = mimetypes.guess_type(filename, strict=False)
    if encoding or not guessed or not _SAFE_TYPE.fullmatch(guessed.lower()):
        return "application/octet-stream"  # a .tar.gz is one opaque file to a mail client
    return guessed.lower()


def read_attachments(
    names: object, read_file: ReadFile | None, origin: str, limit: int = DEFAULT_LIMIT_BYTES
) -> tuple[tuple[Attachment, ...], list[str]]:
    """The front matter's `attachments:` (a list of paths inside the issue's folder, or one path), read and checked;
    with the warnings an editor should see. Over `limit` bytes in all is a TemplateError: nothing is sent."""
    if names is None or names == [] or names == "":
        return (), []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise TemplateError(
            f"{origin}: front matter 'attachments' must be a list of file names, e.g. attachments: [简报第10期.pdf]"
        )
    if read_file is None:
        raise TemplateError(f"{origin}: attachments need the issue's folder to read them from")
    found: list[Attachment] = []
    seen: set[str] = set()
    total = 0
    for written in names:
        path = urllib.parse.unquote(written.strip())
        data = read_file(path, limit=limit - total)
        total += len(data)
        if total > limit:  # the reader stopped one byte past what is left: the file's own size is not needed
            raise TemplateError(
                f"{origin}: attachments are over the limit of {limit / 2**20:.0f} MB per message "
                f"(MAILER_ATTACHMENT_LIMIT) with {written}; link to the files instead"
            )
        if not data:
            raise TemplateError(f"{origin}: attachment {written} is empty")
        filename = _clean_name(path)
        if filename.casefold() in seen:
            raise TemplateError(f"{origin}: two attachments are named {filename}; readers could not tell them apart")
        seen.add(filename.casefold())
        found.append(Attachment(filename, content_type_of(filename), data))
    warnings = [
        f"attachment {a.filename} is a program or script (.{suffix}): Gmail and Outlook.com reject mail carrying "
        "one and readers take it for malware; link to it, or send it zipped with a note"
        for a in found
        if (suffix := a.filename.rpartition(".")[2].casefold()) in RISKY_SUFFIXES and "." in a.filename
    ]
    if total > WARN_BYTES:
        warnings.append(
            f"attachments make every message {total / 2**20:.1f} MB: over 2 MB, many receivers slow "
            "or spam-folder bulk mail; consider a link instead"
        )
    return tuple(found), warnings


# ---- on the wire ------------------------------------------------------------------------------------------------


def _rfc2047(text: str) -> str:
    """Base64 encoded-words of at most 64 characters (RFC 2047 allows 75; 64 keeps ` filename="` lines within
    78), split between characters, never inside one (RFC 2047 5)."""
    words, chunk = [], ""
    for ch in text:
        if len(base64.b64encode((chunk + ch).encode("utf-8"))) > 64 - len("=?utf-8?b??="):
            words.append(chunk)
            chunk = ""
        chunk += ch
    words.append(chunk)
    # Folded between the words, inside the quotes (RFC 5322 allows FWS in a quoted-string): each line stays short,
    # and decoders join adjacent encoded-words across the whitespace (RFC 2047 6.2).
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w.encode('utf-8')).decode('ascii')}?=" for w in words)


def _rfc2231(name: str) -> list[str]:
    """`filename*0*=utf-8''%E7%AE%80...` continuations, each line within 78 characters (RFC 2231 3, 4)."""
    quoted = urllib.parse.quote(name, safe="")
    pieces, i = [], 0
    while i < len(quoted):
        end = min(i + 54, len(quoted))
        while end < len(quoted) and "%" in quoted[end - 2 : end]:  # never split a %XX escape
            end -= 1
        pieces.append(quoted[i:end])
        i = end
    charset = "utf-8''"
    return [f"filename*{n}*={charset if n == 0 else ''}{piece}" for n, piece in enumerate(pieces)]


def part_headers(attachment: Attachment) -> str:
    """The attachment part's header block (folded, CRLF), naming the file for every kind of reader."""
    name = attachment.filename
    if _ASCII_NAME.fullmatch(name) and len(name) <= 30 and len(attachment.content_type) <= 30:
        return (
            f'Content-Type: {attachment.content_type}; name="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{name}"\r\n'
        )
    encoded = _rfc2047(name)
    # application/vnd.openxmlformats-officedocument.wordprocessingml.document is 71 characters: fold before it
    kind = f"\r\n {attachment.content_type}" if len(attachment.content_type) > 60 else f" {attachment.content_type}"
    return (
        f'Content-Type:{kind};\r\n name="{encoded}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment;\r\n filename="{encoded}";\r\n ' + ";\r\n ".join(_rfc2231(name)) + "\r\n"
    )


def encode_part(boundary: str, attachment: Attachment) -> bytes:
    """`--boundary`, the headers and the base64 body (76-character lines): done once per campaign."""
    encoded = binascii.b2a_base64(attachment.data, newline=False)
    body = b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    return f"\r\n--{boundary}\r\n{part_headers(attachment)}\r\n".encode("ascii") + body + b"\r\n"


def describe(attachments: Sequence[Attachment]) -> list[dict[str, str]]:
    """What a layout may show of each attachment: its name and a human size (`简报第10期.pdf`, `1.2 MB`)."""
    out = []
    for item in attachments:
        size = item.size
        human = f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{max(1, round(size / 1024))} KB"
        out.append({"filename": item.filename, "size": human, "content_type": item.content_type})
    return out


def unmentioned(attachments: Sequence[Attachment], html_part: str, text_part: str, origin: str) -> list[str]:
    """A warning for each attachment a part does not name: a layout copied before attachments existed lists none,
    and a reader who does not see the file named may never look for it."""
    warnings = []
    for item in attachments:
        missing = [
            kind
            for kind, found in (
                ("HTML", item.filename in html_part or html.escape(item.filename) in html_part),
                ("text", item.filename in text_part),
            )
            if not found
        ]
        if missing:
            warnings.append(
                f"{origin}: attachment {item.filename} is not named in the {' and '.join(missing)} part: the layout "
                "does not list `attachments` (the built-in layouts do; see: mailer new)"
            )
    return warnings
