"""The web edition made safe to publish: no scripts, event handlers or `javascript:` links in the archive's pages or
in the feed's HTML (a feed reader that does not sanitise would run them). The mail itself is left as the editor
wrote it: mail clients strip scripts, and it is theirs to send.

Pure: HTML text in, HTML text out. Everything else is passed through as it was written (the tags kept are not
rebuilt), so a page that needed no change is byte for byte the one rendered."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

# Dropped with what they hold: their content is script, or a document of its own.
_DROP_WITH_CONTENT = frozenset({"script", "iframe", "noembed", "noframes", "template"})
# Dropped as tags; what they hold stays (an <object>'s fallback is what a browser without it shows).
_DROP_TAG = frozenset({"object", "embed", "applet", "frame", "frameset", "base", "param"})
_URL_ATTRS = frozenset(
    {"href", "src", "action", "formaction", "xlink:href", "background", "poster", "data", "lowsrc", "dynsrc", "cite"}
)
_SCRIPT_URL = re.compile(r"(javascript|vbscript|livescript|data):", re.I)
_IGNORED_IN_SCHEME = re.compile(r"[\x00-\x20\x7f]+")  # browsers skip these inside `java\tscript:`
_SCRIPT_STYLE = re.compile(r"expression\s*\(|javascript:|behavior\s*:|-moz-binding", re.I)


def _unsafe(tag: str, name: str, value: str | None) -> bool:
    if name.startswith("on") or name in ("srcdoc", "formaction"):
        return True
    if value is None:
        return False
    if name in _URL_ATTRS:
        plain = _IGNORED_IN_SCHEME.sub("", html.unescape(value))
        found = _SCRIPT_URL.match(plain)
        if found:  # a data: image is an image; any other data: URL may be a page with scripts
            return not (found.group(1).lower() == "data" and tag == "img" and plain[5:].lower().startswith("image/"))
    if name == "style":
        return bool(_SCRIPT_STYLE.search(html.unescape(value)))
    if tag == "meta" and name == "http-equiv":
        return value.strip().lower() == "refresh"  # a refresh to a javascript: URL
    return False


class _Cleaner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.skipping: list[str] = []  # the dropped elements open around this point

    def _tag(self, tag: str, attrs: list[tuple[str, str | None]], closing: bool) -> None:
        if self.skipping:
            if tag in _DROP_WITH_CONTENT and not closing:
                self.skipping.append(tag)
            return
        if tag in _DROP_WITH_CONTENT:
            if not closing:
                self.skipping.append(tag)
            return
        if tag in _DROP_TAG:
            return
        raw = self.get_starttag_text() or ""
        if tag == "meta" and any(_unsafe(tag, n, v) for n, v in attrs):
            return
        kept = [(n, v) for n, v in attrs if not _unsafe(tag, n, v)]
        if len(kept) == len(attrs):
            self.out.append(raw)
            return
        written = "".join(f" {n}" if v is None else f' {n}="{html.escape(v, quote=True)}"' for n, v in kept)
        self.out.append(f"<{tag}{written}{' /' if closing else ''}>")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs, closing=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs, closing=True)

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
            return
        if tag not in _DROP_WITH_CONTENT and tag not in _DROP_TAG:
            self.out.append(f"</{tag}>")

    def _keep(self, text: str) -> None:
        if not self.skipping:
            self.out.append(text)

    def handle_data(self, data: str) -> None:
        self._keep(data)

    def handle_entityref(self, name: str) -> None:
        self._keep(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self._keep(f"&#{name};")

    def handle_comment(self, data: str) -> None:
        self._keep(f"<!--{data}-->")

    def handle_decl(self, decl: str) -> None:
        self._keep(f"<!{decl}>")

    def handle_pi(self, data: str) -> None:
        self._keep(f"<?{data}>")

    def unknown_decl(self, data: str) -> None:
        self._keep(f"<![{data}]>")


def web_safe(page: str) -> str:
    """The page without scripts, frames, event-handler attributes and script URLs; the rest as written."""
    cleaner = _Cleaner()
    cleaner.feed(page)
    cleaner.close()
    return "".join(cleaner.out)
