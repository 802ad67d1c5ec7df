"""The public archive's Atom feed (RFC 4287): a list's past issues as entries, newest first.

Pure: entries in, UTF-8 XML bytes out, built with ElementTree so every value is escaped as data, and without the
characters XML 1.0 cannot carry even escaped (a form feed pasted from Word would make the whole feed unreadable)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

ATOM = "http://www.w3.org/2005/Atom"
# What XML 1.0 forbids (section 2.2 Char): C0 controls but tab, LF and CR; lone surrogates; U+FFFE and U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` without the characters no XML 1.0 document may hold; ElementTree escapes the rest but keeps these."""
    return _NOT_XML.sub("", text)


@dataclass(frozen=True)
class FeedEntry:
    """One archived issue: `url` is its page, `updated` an RFC 3339 time, `summary` plain text (the preheader)."""

    title: str
    url: str
    updated: str
    summary: str = ""
    html: str = ""  # the archived page's body; the feed carries it as escaped HTML content


@dataclass(frozen=True)
class FeedInfo:
    title: str
    feed_url: str  # where the feed itself lives: rel="self", and the feed's id
    page_url: str  # the archive's index page: rel="alternate"
    lang: str
    author: str


def _rfc3339(stamp: str) -> str:
    """mailer's `2026-12-01T08:00:00.000Z` is already RFC 3339; a bare date becomes its midnight UTC."""
    return f"{stamp}T00:00:00Z" if len(stamp) == 10 else stamp


def atom_feed(info: FeedInfo, entries: Sequence[FeedEntry], fallback_updated: str) -> bytes:
    """The feed; its `updated` is the newest entry's (or `fallback_updated` for an archive with none yet)."""
    ET.register_namespace("", ATOM)

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", {k: xml_safe(v) for k, v in attrs.items()})
        if text is not None:
            element.text = xml_safe(text)
        return element

    feed = ET.Element(f"{{{ATOM}}}feed", {"{http://www.w3.org/XML/1998/namespace}lang": info.lang})
    sub(feed, "id", info.feed_url)
    sub(feed, "title", info.title)
    sub(feed, "updated", _rfc3339(entries[0].updated if entries else fallback_updated))
    sub(sub(feed, "author"), "name", info.author or info.title)
    sub(feed, "link", rel="self", type="application/atom+xml", href=info.feed_url)
    sub(feed, "link", rel="alternate", type="text/html", href=info.page_url)
    sub(feed, "generator", "mailer")
    for entry in entries:
        item = sub(feed, "entry")
        sub(item, "id", entry.url)
        sub(item, "title", entry.title)
        sub(item, "updated", _rfc3339(entry.updated))
        sub(item, "link", rel="alternate", type="text/html", href=entry.url)
        if entry.summary:
            sub(item, "summary", entry.summary)
        if entry.html:
            sub(item, "content", entry.html, type="html")
    document: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return document + b"\n"
