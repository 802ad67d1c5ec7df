"""Issue rendering: Markdown + front matter -> Jinja2 layouts -> premailer, done ONCE per issue.

Pure: takes the issue text and list values, returns a RenderedIssue whose HTML and text still hold per-recipient
placeholders (substituted later by message.py). The only package that imports Jinja2, premailer and markdown-it:

    issue.py    what a rendering is: RenderedIssue, its sections and images, the per-recipient placeholders
    text.py     the plain-text part, written from the Markdown tokens
    images.py   `images: cid`: local images embedded, typed and sized from their bytes
    layouts.py  where layouts come from (the editor's folder, the built-in ones), Jinja's sandbox, the memory
                ceiling, and the pages of `mailer serve`

This module reads the front matter, cuts the body into sections and puts them through the layouts."""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import frontmatter
import jinja2
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from mailer.attachments import DEFAULT_LIMIT_BYTES, describe, read_attachments, unmentioned
from mailer.errors import TemplateError
from mailer.models import Lang, Theme
from mailer.render.images import embed_images, image_type
from mailer.render.issue import (
    PH_ATTR,
    PH_EMAIL,
    PH_NAME,
    PH_PREFERENCES,
    PH_UNSUBSCRIBE,
    PH_VIEW,
    PLACEHOLDER_RE,
    InlineImage,
    IssueContent,
    ListContext,
    ReadFile,
    RenderedIssue,
    Section,
    WebEdition,
    attr_placeholder_keys,
    issue_content,
    substitute,
)
from mailer.render.layouts import (
    BUILTIN_TEMPLATES,
    HTML_LAYOUT,
    TEXT_LAYOUT,
    body_environment,
    builtin_layouts,
    environment,
    layout_files,
    memory_ceiling,
    render_console_page,
    render_page,
    template_error,
)
from mailer.render.sanitise import web_safe
from mailer.render.text import inline_text, tokens_to_text
from mailer.wording import NO_LIST_TITLE

__all__ = [
    "PLACEHOLDER_RE",
    "InlineImage",
    "IssueContent",
    "ListContext",
    "RenderedIssue",
    "Section",
    "WebEdition",
    "attr_placeholder_keys",
    "builtin_layouts",
    "image_type",
    "inline_css",
    "issue_content",
    "layout_files",
    "memory_ceiling",
    "render_console_page",
    "render_issue",
    "render_page",
    "substitute",
]

IMAGE_MODES = ("url", "cid")


# Front-matter fields mailer itself reads; any other field is for the layout (editor, reviewer, ...).
_MAILER_FIELDS = ("subject", "preheader", "issue", "date", "from", "lang", "slug", "images", "attachments")
FRONT_MATTER_FIELDS = (*_MAILER_FIELDS, "segment")  # segment: read by mailer send (send.py), not here
TEXT_FIELDS = ("subject", "preheader", "issue", "date", "from", "lang", "slug")  # one value each, shown as text


class _FrontMatter(dict[str, Any]):
    """The front matter as the body and layouts see it (`meta`), noting every field they ask for, present or not:
    a field nobody asked for is shown nowhere, and a field asked for but missing is a likely correct spelling."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self._asked: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self._asked.add(str(key))
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._asked.add(str(key))
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._asked.add(str(key))
        return super().__contains__(key)

    def _all_asked(self) -> None:
        self._asked.update(super().keys())

    def __iter__(self) -> Iterator[str]:
        self._all_asked()
        return super().__iter__()

    def keys(self) -> Any:
        self._all_asked()
        return super().keys()

    def values(self) -> Any:
        self._all_asked()
        return super().values()

    def items(self) -> Any:
        self._all_asked()
        return super().items()

    def unused(self, origin: str) -> list[str]:
        """One warning per field neither mailer nor the body nor the layouts read, with the nearest known name."""
        fields = list(dict.keys(self))
        known = sorted(set(FRONT_MATTER_FIELDS) | (self._asked - set(fields)))
        warnings = []
        for key in fields:
            if key in FRONT_MATTER_FIELDS or key in self._asked:
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f" (mailer reads {', '.join(FRONT_MATTER_FIELDS)})"
            warnings.append(
                f"{origin}: front matter field '{key}' is not used by mailer or the layout, so it appears nowhere{hint}"
            )
        return warnings


class _RecipientFields:
    """Stands in for a subscriber while rendering: every field renders as a placeholder, recorded in `_keys`."""

    def __init__(self) -> None:
        # underscored: the sandbox keeps layouts from it, and a CSV column named `keys` is not shadowed by it
        self._keys: list[str] = []

    @property
    def name(self) -> str:
        return PH_NAME

    @property
    def email(self) -> str:
        return PH_EMAIL

    def __getattr__(self, key: str) -> str:
        if key.startswith("__"):
            raise AttributeError(key)
        return self[key]

    def __getitem__(self, key: str) -> str:
        if key == "name":
            return PH_NAME
        if key == "email":
            return PH_EMAIL
        if key not in self._keys:
            self._keys.append(key)
        return PH_ATTR.format(self._keys.index(key))


class _NeutralReader:
    """The reader of a web edition: nobody. Every field is blank, so a layout's own default shows
    (`{{ subscriber.city or "各地" }}`) and no personal value can reach a public page."""

    name = ""
    email = ""

    def __getattr__(self, key: str) -> str:
        if key.startswith("__"):
            raise AttributeError(key)
        return ""

    def __getitem__(self, key: str) -> str:
        return ""


def _markdown() -> MarkdownIt:
    return MarkdownIt("gfm-like", {"typographer": False})


def split_front_matter(source: str, origin: str, given: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """The YAML front matter and the Markdown body; a missing subject or bad YAML is a TemplateError.

    `given`: front-matter values the caller supplies as data (over the file's), never parsed as YAML."""
    try:
        post = frontmatter.loads(source.lstrip("\ufeff"))
    except yaml.YAMLError as exc:
        # Where the trouble started (an unclosed quote) rather than where YAML gave up (the end of the block).
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        # +1: the mark counts lines from 0, and the block handed to YAML starts with the opening line's newline
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = (
            " ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None))))
            or str(exc).splitlines()[0]
        )
        raise TemplateError(f"{origin}{where}: front matter is not valid YAML: {problem}") from None
    _check_front_matter_size(post.metadata, origin)
    meta = {**{str(k): v for k, v in post.metadata.items()}, **(given or {})}
    for key in TEXT_FIELDS:
        if isinstance(meta.get(key), Mapping | list | set):  # it became "['a', 'b']" in the Subject header
            raise TemplateError(
                f"{origin}: front matter '{key}' must be text, not a {type(meta[key]).__name__} ({meta[key]!r:.60})"
            )
    subject = str(meta.get("subject") or "").strip()
    if not subject:
        raise TemplateError(f"{origin}: front matter has no 'subject'")
    return meta, post.content


MAX_FRONT_MATTER_VALUES = 10_000  # a front matter holds a few dozen values


def _check_front_matter_size(metadata: Mapping[str, Any], origin: str) -> None:
    """YAML aliases let a few lines stand for billions of values (`b: [*a, *a, ...]`, "billion laughs": 9 lines took
    40 s and 2 GB, then a traceback) or for a list that holds itself (`a: &a [*a]`: a RecursionError); either is
    refused before anything walks the front matter (the campaign record, the layout's `meta`)."""
    count = 0
    pending: list[tuple[Any, frozenset[int]]] = [(metadata, frozenset())]
    while pending:
        value, holders = pending.pop()
        count += 1
        if count > MAX_FRONT_MATTER_VALUES:
            raise TemplateError(
                f"{origin}: front matter holds over {MAX_FRONT_MATTER_VALUES:,} values (YAML aliases "
                "(*name) repeating a list?); write the values out"
            )
        if isinstance(value, Mapping | list):
            if id(value) in holders:
                raise TemplateError(
                    f"{origin}: front matter has a value that contains itself (a YAML alias inside its own anchor)"
                )
            inner = holders | {id(value)}
            pending.extend((child, inner) for child in (value.values() if isinstance(value, Mapping) else value))


def slugify(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = re.sub(r"[^\w.-]+", "-", text, flags=re.UNICODE).strip("-.")
    return text[:80] or "issue"


def _slug_anchor(title: str, index: int) -> str:
    ascii_slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return ascii_slug or f"section-{index}"


def split_sections(md: MarkdownIt, tokens: list[Token]) -> tuple[Markup, str, list[Section]]:
    """Cut the body at its `##` headings: the content before the first one is the intro."""
    groups: list[tuple[str, list[Token]]] = [("", [])]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == "heading_open" and tok.tag == "h2":
            title = inline_text(tokens[i + 1].children)
            groups.append((title, []))
            i += 3
            continue
        groups[-1][1].append(tok)
        i += 1
    intro_tokens = groups[0][1]
    intro_html = Markup(md.renderer.render(intro_tokens, md.options, {}))
    intro_text = tokens_to_text(intro_tokens)
    sections = [
        Section(title, _slug_anchor(title, n), Markup(md.renderer.render(body, md.options, {})), tokens_to_text(body))
        for n, (title, body) in enumerate(groups[1:], start=1)
    ]
    return intro_html, intro_text, sections


def _body_line_offset(source: str, body: str) -> int:
    start = source.find(body) if body else -1
    return source[:start].count("\n") if start > 0 else 0


def inline_css(html: str) -> str:
    """premailer with the network off: rules it cannot inline (media queries) stay in one <style> block."""
    import premailer  # lxml + cssutils take ~0.25 s to import; commands that never render should not pay it

    try:
        return str(
            premailer.Premailer(
                html,
                allow_network=False,
                disable_validation=True,
                remove_classes=False,
                strip_important=False,
                cssutils_logging_level=logging.CRITICAL,
            ).transform()
        )
    except Exception as exc:  # premailer raises a grab bag (lxml, cssutils, its own ExternalNotFoundError)
        raise TemplateError(f"CSS inlining failed: {exc}") from None


def theme_context(theme: Theme, list_title: str) -> tuple[InlineImage | None, dict[str, Any]]:
    """What a layout sees of the theme (`theme.accent`, `theme.logo.src`, `theme.footer`, ...) and the logo image
    to embed when the logo is a local file rather than a URL."""
    image = None
    logo: dict[str, str] | None = None
    if theme.logo_data:
        try:
            content_type, ext, size = image_type(theme.logo_data)
        except ValueError as exc:
            raise TemplateError(f"theme logo {theme.logo}: {exc}") from None
        digest = hashlib.sha256(theme.logo_data).hexdigest()[:16]
        image = InlineImage(f"logo.{digest}@mailer", f"logo.{ext}", content_type, theme.logo_data)
        width = min(size[0], theme.logo_width) if size and size[0] else theme.logo_width
        logo = {"src": f"cid:{image.cid}", "width": str(width), "alt": list_title}
    elif theme.logo:
        logo = {"src": theme.logo, "width": str(theme.logo_width), "alt": list_title}
    return image, {"accent": theme.accent, "highlight": theme.highlight, "logo": logo, "footer": list(theme.footer)}


def render_issue(
    source: str,
    origin: str = "issue.md",
    list_ctx: ListContext | None = None,
    templates_dir: Path | None = None,
    read_file: ReadFile | None = None,
    given: Mapping[str, Any] | None = None,
    theme: Theme | None = None,
    attachment_limit: int = DEFAULT_LIMIT_BYTES,
    *,
    edition: WebEdition | None = None,
    view_link: bool = True,
) -> RenderedIssue:
    """Render an issue once; raises TemplateError for anything that would break a send.

    `read_file` reads a file next to the issue (path as written in it): the images of `images: cid` and the
    files of `attachments:`, together at most `attachment_limit` bytes.
    `given` sets front-matter values as data (a confirmation mail's subject naming the list).
    `theme`: the colours, logo and footer lines of mailer.toml's [theme].
    `edition`: render the web edition (a neutral reader, no personal links) instead of the mail.
    `view_link`: the mail links to its web edition ("view in browser"); not a confirmation mail, which has none."""
    list_ctx = list_ctx or ListContext()
    parsed, body = split_front_matter(source, origin, given)
    meta = _FrontMatter(parsed)
    recipient = _RecipientFields()
    reader: _RecipientFields | _NeutralReader = recipient if edition is None else _NeutralReader()
    lang = str(meta.get("lang") or list_ctx.lang or "zh").strip().lower()
    if lang not in tuple(Lang):
        # The layouts' own words (greeting, headings, footer) exist in these; any other value printed the English
        # layout with an empty greeting ("Hello ,") for a Chinese list, silently.
        raise TemplateError(f"{origin}: front matter 'lang' must be {' or '.join(Lang)}, not {meta['lang']!r}")
    list_title = list_ctx.title or list_ctx.name or NO_LIST_TITLE.get(lang, NO_LIST_TITLE["en"])
    logo, layout_theme = theme_context(theme or Theme(), list_title)
    attachments, size_warnings = read_attachments(meta.get("attachments"), read_file, origin, attachment_limit)
    base_context: dict[str, Any] = {
        "subject": str(meta["subject"]).strip(),
        "preheader": str(meta.get("preheader") or "").strip(),
        "issue_number": str(meta.get("issue") or "").strip(),
        "date": str(meta.get("date") or "").strip(),
        "lang": lang,
        "list_title": list_title,
        "list_name": list_ctx.name,
        "meta": meta,
        "subscriber": reader,
        "unsubscribe_url": PH_UNSUBSCRIBE if edition is None else "",
        "preferences_url": PH_PREFERENCES if edition is None else "",
        "view_url": PH_VIEW if edition is None and view_link else "",
        "web": edition is not None,
        "signup_url": edition.signup_url if edition else "",
        "archive_url": edition.archive_url if edition else "",
        "theme": layout_theme,
        "attachments": describe(attachments),  # name and size of each, for the layouts to list
    }
    try:
        with memory_ceiling():
            body = body_environment().from_string(body).render(**base_context)
    except Exception as exc:  # whatever the issue's own code raised (a refusal, 1/0) is the issue's error
        raise template_error(origin, exc, _body_line_offset(source, body)) from None
    md = _markdown()
    tokens = md.parse(body)
    image_mode = str(meta.get("images") or "url").strip().lower()
    if image_mode not in IMAGE_MODES:
        raise TemplateError(f"{origin}: front matter 'images' must be url or cid, not {meta['images']!r}")
    images = embed_images(tokens, read_file, origin) if image_mode == "cid" else ()
    images += (logo,) if logo else ()
    intro_html, intro_text, sections = split_sections(md, tokens)
    context = {**base_context, "intro_html": intro_html, "intro_text": intro_text, "sections": sections}
    try:
        with memory_ceiling():
            raw_html = environment(templates_dir, html=True).get_template(HTML_LAYOUT).render(**context)
            text = environment(templates_dir, html=False).get_template(TEXT_LAYOUT).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"layout {exc.name} not found in {templates_dir or BUILTIN_TEMPLATES}") from None
    except Exception as exc:  # as for the body: a layout's own error, named by its file and line
        raise template_error(origin, exc) from None
    html = inline_css(raw_html) if edition is None else web_safe(inline_css(raw_html))  # the mail is the editor's
    text = "\n".join(line.rstrip() for line in text.strip("\n").split("\n")) + "\n"
    content = issue_content(source, raw_html, text, images, attachments)
    warnings = [*meta.unused(origin), *size_warnings, *unmentioned(attachments, html, text, origin)]
    return RenderedIssue(
        slug=slugify(str(meta.get("slug") or Path(origin).stem)),
        subject=base_context["subject"],
        preheader=base_context["preheader"],
        lang=lang,
        html=html,
        text=text,
        meta={k: _plain(v) for k, v in parsed.items()},
        attr_keys=tuple(recipient._keys),
        content_hash=content.digest,
        from_addr=str(meta.get("from") or ""),
        sections=tuple(s.title for s in sections),
        images=images,
        warnings=tuple(warnings),
        attachments=attachments,
        content_parts=content.parts,
    )


def _plain(value: Any) -> Any:
    """Front matter values as JSON-safe data (YAML dates become ISO strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
