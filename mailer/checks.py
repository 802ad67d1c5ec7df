"""What mail clients and spam filters will hold against a rendered issue, one sentence each: images without alt
text or width, sources that will not show (data:, http:, relative paths), CSS left in <style>, links that cannot
work, a subject in capitals, HTML that Gmail clips.

Pure: takes HTML and text, returns warnings; `mailer send` and `mailer preview` both ask it."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

from mailer.addresses import is_loopback

GMAIL_CLIP_BYTES = 102 * 1024  # Gmail shows "[Message clipped]" past ~102 KB of HTML
SAFE_SCHEMES = ("https:", "mailto:", "tel:", "cid:", "#")


_CONDITIONAL_COMMENT = re.compile(r"<!--\[if.*?<!\[endif\]-->", re.S | re.I)


_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values)
        elif tag == "a" and values.get("href") is not None:
            self.links.append(values["href"] or "")
        elif tag == "style":
            self._in_style = True
            self.styles.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles[-1] += data


def _strip_at_media(css: str) -> str:
    """The CSS without its @media blocks (their braces nest one level)."""
    out, i = [], 0
    while (start := css.find("@media", i)) != -1:
        out.append(css[i:start])
        depth, j = 0, css.find("{", start)
        if j == -1:
            return "".join(out)
        while j < len(css):
            depth += {"{": 1, "}": -1}.get(css[j], 0)
            j += 1
            if depth == 0:
                break
        i = j
    out.append(css[i:])
    return "".join(out)


def _leftover_rules(styles: list[str]) -> list[str]:
    css = _strip_at_media(_CSS_COMMENT.sub("", "\n".join(styles)))
    return [" ".join(sel.split()) for sel in re.findall(r"([^{}]+)\{[^{}]*\}", css) if sel.strip()]


def _describe(src: str, limit: int = 60) -> str:
    return src if len(src) <= limit else src[: limit - 3] + "..."


def is_loopback_url(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


def _image_source_problem(raw_src: str) -> str:
    """Why an image source will not show in a mail client ("" when it will)."""
    src = _describe(raw_src)
    if raw_src.startswith("data:"):
        return f"image {src} is a data: URI: Gmail and Outlook do not show those; use images: cid"
    if not raw_src.startswith(("https:", "cid:")):
        kind = "plain http" if raw_src.startswith("http:") else "a relative path (no host)"
        return f"image {src} is {kind}: use an https URL, or 'images: cid' to embed it"
    return ""


def image_source_warnings(html: str) -> list[str]:
    """The images of the HTML that will go out broken (what `mailer send` checks before sending)."""
    collector = _Collector()
    collector.feed(_CONDITIONAL_COMMENT.sub("", html))
    return [problem for image in collector.images if (problem := _image_source_problem(image.get("src") or ""))]


# rspamd's SUBJ_ALL_CAPS (+3.0): a subject of ten characters or more with capitals and no small letter. Letters
# without case (Chinese) count for neither, as in rspamd, so "IP NEWS 第12期" is in capitals too.
_ALL_CAPS_MIN_LENGTH = 10


def check_subject(subject: str) -> list[str]:
    """What spam filters hold against the subject, one sentence each."""
    capitals = sum(ch.isupper() for ch in subject)
    if len(subject) >= _ALL_CAPS_MIN_LENGTH and capitals >= 2 and not any(ch.islower() for ch in subject):
        return [
            f"the subject {_describe(subject)!r} is in capitals: spam filters score that (rspamd SUBJ_ALL_CAPS "
            "+3.0); write it in normal case"
        ]
    return []


def check_html(html: str) -> list[str]:
    """What mail clients will break in this HTML, one sentence each (empty when nothing)."""
    collector = _Collector()
    collector.feed(_CONDITIONAL_COMMENT.sub("", html))  # Outlook-only blocks are meant to stay in <style>
    warnings = []
    for image in collector.images:
        src = _describe(image.get("src") or "")
        if not (image.get("alt") or "").strip():
            warnings.append(f"image {src} has no alt text: clients that block images show nothing in its place")
        if not image.get("width"):
            warnings.append(f"image {src} has no width attribute: Outlook shows it at its full size")
        if (image.get("width") or "").strip() in ("0", "1") or (image.get("height") or "").strip() in ("0", "1"):
            warnings.append(f"image {src} is a 1-pixel image: filters and readers treat it as a tracking pixel")
        problem = _image_source_problem(image.get("src") or "")
        if problem:
            warnings.append(problem)
    for selector in _leftover_rules(collector.styles):
        warnings.append(
            f"CSS rule '{_describe(selector)}' stayed in <style> (only @media rules should): Gmail's "
            "app and Outlook.com drop it; style the element inline instead"
        )
    seen = set()
    for href in collector.links:
        scheme_lower = href[:8].lower() + href[8:]  # HTTPS://EXAMPLE.ORG is as good as https://example.org
        if scheme_lower.startswith(SAFE_SCHEMES) or href in seen:
            continue
        seen.add(href)
        if scheme_lower.startswith("http:"):
            where = " (this machine: subscribers cannot open it)" if is_loopback_url(href) else ""
            warnings.append(f"link {_describe(href)} is not https{where}")
        else:
            warnings.append(f"link {_describe(href)} has no https:// host: it cannot work in a mail client")
    size = len(html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        warnings.append(
            f"the HTML part is {size / 1024:.0f} KB: Gmail clips messages over 102 KB, hiding the rest "
            "(and the unsubscribe link) behind 'View entire message'"
        )
    return warnings
