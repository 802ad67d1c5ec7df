"""What a rendering is: the RenderedIssue (subject, inlined HTML and plain text with per-recipient placeholders),
its sections, embedded images and attachments, its content identity (the issue and everything it embeds), the
list it was rendered for, and the placeholders message.py fills in.

Data and the substitution only; no Markdown, no Jinja."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from mailer.attachments import Attachment
from mailer.attachments import ReadFile as ReadFile  # images and attachments share the reader

# Per-recipient values are rendered as these markers and substituted after inlining. They are plain ASCII with no
# Markdown, HTML or URI meaning, so Markdown, Jinja autoescape, lxml and premailer all pass them through unchanged.
PH_NAME = "@@MAILER_NAME@@"


PH_EMAIL = "@@MAILER_EMAIL@@"


PH_UNSUBSCRIBE = "@@MAILER_UNSUBSCRIBE_URL@@"


PH_PREFERENCES = "@@MAILER_PREFERENCES_URL@@"


PH_VIEW = "@@MAILER_VIEW_URL@@"  # the campaign's web edition: one value for every recipient of a campaign


PH_ATTR = "@@MAILER_A{}@@"


PLACEHOLDER_RE = re.compile(r"@@MAILER_(NAME|EMAIL|UNSUBSCRIBE_URL|PREFERENCES_URL|VIEW_URL|A\d+)@@")


@dataclass(frozen=True)
class ListContext:
    """What a layout may know about the list an issue goes to; no name: no list (a neutral sample rendering)."""

    name: str = ""
    title: str = ""
    lang: str = "zh"


@dataclass(frozen=True)
class WebEdition:
    """Render for the web, for nobody in particular: the archive's page and "view in browser". The reader is blank
    (no name, no address, every attribute empty, no personal link), and the layout gets `web` true with the list's
    sign-up page and the archive's index to link to instead of the unsubscribe notice."""

    signup_url: str
    archive_url: str = "./"


@dataclass(frozen=True)
class Section:
    title: str
    anchor: str
    html: Markup
    text: str


@dataclass(frozen=True)
class InlineImage:
    """A local image embedded in the message (multipart/related) and shown through `cid:` in the HTML."""

    cid: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class RenderedIssue:
    """An issue rendered once: subject, inlined HTML and plain text with per-recipient placeholders."""

    slug: str
    subject: str
    preheader: str
    lang: str
    html: str
    text: str
    meta: dict[str, Any]
    attr_keys: tuple[str, ...] = ()
    content_hash: str = ""
    from_addr: str = ""
    sections: tuple[str, ...] = field(default=())
    images: tuple[InlineImage, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())  # e.g. a front-matter field nothing reads
    attachments: tuple[Attachment, ...] = field(default=())
    # What content_hash covers, part by part: (what, sha256 hex), as issue_content gives them
    content_parts: tuple[tuple[str, str], ...] = field(default=())

    def placeholders(self) -> set[str]:
        return set(PLACEHOLDER_RE.findall(self.html)) | set(PLACEHOLDER_RE.findall(self.text))


@dataclass(frozen=True)
class IssueContent:
    """The issue and everything it embeds: `digest` is the campaign's identity (content_hash), `parts` names each
    piece with its own SHA-256, so that what changed between two versions can be named."""

    digest: str
    parts: tuple[tuple[str, str], ...]


def issue_content(
    source: str, layout_html: str, text: str, images: Sequence[InlineImage], attachments: Sequence[Attachment] = ()
) -> IssueContent:
    """The identity of an issue: its file, the HTML and text its layouts made of it, each embedded image (the
    theme's logo included) and each attachment. An edit to any of them is new content (a new campaign, and an
    approval no longer valid). An issue without attachments keeps the digest it had before they existed, so a
    campaign started then is still found and resumed."""
    pieces = [
        ("issue", source.encode("utf-8")),
        ("html", layout_html.encode("utf-8")),
        ("text", text.encode("utf-8")),
        *((f"image {image.filename}", image.data) for image in images),
        *((f"attachment {attachment.filename}", attachment.data) for attachment in attachments),
    ]
    digest = hashlib.sha256()
    for _, data in pieces:
        digest.update(data)
    return IssueContent(digest.hexdigest(), tuple((what, hashlib.sha256(data).hexdigest()) for what, data in pieces))


def substitute(template: str, values: dict[str, str]) -> str:
    """Replace placeholders by already-escaped values (unknown ones become empty)."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), template)


def attr_placeholder_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map placeholder codes (A0, A1, ...) to the subscriber attribute names they stand for."""
    return {f"A{i}": key for i, key in enumerate(keys)}
