"""What a rendering is: the RenderedIssue (subject, inlined HTML and plain text with per-recipient placeholders),
its sections and embedded images, the list it was rendered for, and the placeholders message.py fills in.

Data and the substitution only; no Markdown, no Jinja."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

# Per-recipient values are rendered as these markers and substituted after inlining. They are plain ASCII with no
# Markdown, HTML or URI meaning, so Markdown, Jinja autoescape, lxml and premailer all pass them through unchanged.
PH_NAME = "@@MAILER_NAME@@"


PH_EMAIL = "@@MAILER_EMAIL@@"


PH_UNSUBSCRIBE = "@@MAILER_UNSUBSCRIBE_URL@@"


PH_PREFERENCES = "@@MAILER_PREFERENCES_URL@@"


PH_VIEW = "@@MAILER_VIEW_URL@@"  # the campaign's web edition: one value for every recipient of a campaign


PH_ATTR = "@@MAILER_A{}@@"


PLACEHOLDER_RE = re.compile(r"@@MAILER_(NAME|EMAIL|UNSUBSCRIBE_URL|PREFERENCES_URL|VIEW_URL|A\d+)@@")


ReadFile = Callable[[str], bytes]


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

    def placeholders(self) -> set[str]:
        return set(PLACEHOLDER_RE.findall(self.html)) | set(PLACEHOLDER_RE.findall(self.text))


def substitute(template: str, values: dict[str, str]) -> str:
    """Replace placeholders by already-escaped values (unknown ones become empty)."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), template)


def attr_placeholder_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map placeholder codes (A0, A1, ...) to the subscriber attribute names they stand for."""
    return {f"A{i}": key for i, key in enumerate(keys)}
