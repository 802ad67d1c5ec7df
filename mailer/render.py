"""Issue rendering: Markdown + front matter -> Jinja2 layouts -> premailer, done ONCE per issue.

Pure: takes the issue text and list values, returns a RenderedIssue whose HTML and text still hold per-recipient
placeholders (substituted later by message.py). The only module that imports Jinja2, premailer and markdown-it."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.resources
import logging
import os
import re
import struct
import threading
import traceback
import unicodedata
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import frontmatter
import jinja2
import yaml
from jinja2.loaders import split_template_path
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from mailer.errors import TemplateError
from mailer.models import Lang, Theme

# The built-in layouts travel inside the package (a wheel, a zip or a checkout alike), read through importlib.resources.
BUILTIN_TEMPLATES = importlib.resources.files("mailer") / "templates"
HTML_LAYOUT = "issue.html.j2"
TEXT_LAYOUT = "issue.txt.j2"

# Per-recipient values are rendered as these markers and substituted after inlining. They are plain ASCII with no
# Markdown, HTML or URI meaning, so Markdown, Jinja autoescape, lxml and premailer all pass them through unchanged.
PH_NAME = "@@MAILER_NAME@@"
PH_EMAIL = "@@MAILER_EMAIL@@"
PH_UNSUBSCRIBE = "@@MAILER_UNSUBSCRIBE_URL@@"
_PH_ATTR = "@@MAILER_A{}@@"
PLACEHOLDER_RE = re.compile(r"@@MAILER_(NAME|EMAIL|UNSUBSCRIBE_URL|A\d+)@@")

IMAGE_MODES = ("url", "cid")
CONTENT_WIDTH = 536  # the layout's 600 px column less its 2 x 32 px padding: the widest an image is shown
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")
ReadFile = Callable[[str], bytes]


@dataclass(frozen=True)
class ListContext:
    """What a layout may know about the list an issue goes to; no name: no list (a neutral sample rendering)."""

    name: str = ""
    title: str = ""
    lang: str = "zh"


# The masthead and footer of an issue rendered for no list (mailer render / preview without --list) name no list:
# they show where the list's title will go.
NO_LIST_TITLE = {"zh": "（简报名称）", "en": "(newsletter title)"}


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


# Front-matter fields mailer itself reads; any other field is for the layout (editor, reviewer, ...).
FRONT_MATTER_FIELDS = ("subject", "preheader", "issue", "date", "from", "lang", "slug", "images")
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
            warnings.append(f"{origin}: front matter field '{key}' is not used by mailer or the layout, so it "
                            f"appears nowhere{hint}")
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
        return _PH_ATTR.format(self._keys.index(key))


def _markdown() -> MarkdownIt:
    return MarkdownIt("gfm-like", {"typographer": False})


def split_front_matter(
    source: str, origin: str, given: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """The YAML front matter and the Markdown body; a missing subject or bad YAML is a TemplateError.

    `given`: front-matter values the caller supplies as data (over the file's), never parsed as YAML."""
    try:
        post = frontmatter.loads(source.lstrip("\ufeff"))
    except yaml.YAMLError as exc:
        # Where the trouble started (an unclosed quote) rather than where YAML gave up (the end of the block).
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        # +1: the mark counts lines from 0, and the block handed to YAML starts with the opening line's newline
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None)))) \
            or str(exc).splitlines()[0]
        raise TemplateError(f"{origin}{where}: front matter is not valid YAML: {problem}") from None
    _check_front_matter_size(post.metadata, origin)
    meta = {**{str(k): v for k, v in post.metadata.items()}, **(given or {})}
    for key in TEXT_FIELDS:
        if isinstance(meta.get(key), Mapping | list | set):  # it became "['a', 'b']" in the Subject header
            raise TemplateError(f"{origin}: front matter '{key}' must be text, not a {type(meta[key]).__name__} "
                                f"({meta[key]!r:.60})")
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
            raise TemplateError(f"{origin}: front matter holds over {MAX_FRONT_MATTER_VALUES:,} values (YAML aliases "
                                "(*name) repeating a list?); write the values out")
        if isinstance(value, Mapping | list):
            if id(value) in holders:
                raise TemplateError(f"{origin}: front matter has a value that contains itself (a YAML alias inside "
                                    "its own anchor)")
            inner = holders | {id(value)}
            pending.extend((child, inner) for child in (value.values() if isinstance(value, Mapping) else value))


def slugify(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = re.sub(r"[^\w.-]+", "-", text, flags=re.UNICODE).strip("-.")
    return text[:80] or "issue"


def _inline_text(children: Sequence[Token] | None) -> str:
    """Plain text of an inline token run; links become `text <url>`, images `[alt] <src>`."""
    out: list[str] = []
    href_stack: list[tuple[str, int]] = []
    for tok in children or ():
        if tok.type in ("text", "code_inline"):
            out.append(tok.content)
        elif tok.type == "softbreak" or tok.type == "hardbreak":
            out.append("\n")
        elif tok.type == "link_open":
            href_stack.append((str(tok.attrs.get("href", "")), len(out)))
        elif tok.type == "link_close" and href_stack:
            href, start = href_stack.pop()
            label = "".join(out[start:])
            target = href.removeprefix("mailto:")
            if label.strip() and label.strip() not in (href, target):
                out.append(f" <{href}>")
            else:
                del out[start:]
                out.append(f"<{href}>" if not href.startswith("mailto:") else target)
        elif tok.type == "image":
            alt = tok.content or "".join(c.content for c in tok.children or ())
            src = str(tok.attrs.get("src", ""))
            if src.startswith("cid:"):  # embedded: the text part names it, the image travels with the message
                out.append(f"[{alt}]" if alt else "")
            else:
                out.append(f"[{alt}] <{src}>" if alt else f"<{src}>")
        elif tok.type == "html_inline":
            continue
    return "".join(out)


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def tokens_to_text(tokens: Sequence[Token]) -> str:
    """A readable plain-text rendering of Markdown block tokens: headings, lists, quotes, code, tables."""
    blocks: list[str] = []
    list_stack: list[list[int | None]] = []  # per open list: [next number or None for bullets]
    quote_depth = 0
    pending_prefix = ""
    table_row: list[str] = []
    heading_level = 0
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            heading_level = int(tok.tag[1])
        elif tok.type == "inline":
            text = _inline_text(tok.children)
            if heading_level:
                rule = "-" if heading_level >= 3 else "="
                blocks.append(f"{text}\n{rule * max(4, _display_width(text))}")
            elif table_row is not None and tokens[i - 1].type in ("th_open", "td_open"):
                table_row.append(text)
            else:
                indent = "   " * max(0, len(list_stack) - 1)
                prefix = pending_prefix or (indent + "   " if list_stack else "")
                lines = text.split("\n")
                body = (prefix + lines[0]) + "".join(
                    "\n" + (indent + "   " if list_stack else "") + line for line in lines[1:]
                )
                if quote_depth:
                    body = "\n".join("> " * quote_depth + line for line in body.split("\n"))
                blocks.append(body)
                pending_prefix = ""
        elif tok.type == "heading_close":
            heading_level = 0
        elif tok.type in ("bullet_list_open", "ordered_list_open"):
            start = int(tok.attrs.get("start", 1) or 1) if tok.type == "ordered_list_open" else None
            list_stack.append([start])
        elif tok.type in ("bullet_list_close", "ordered_list_close"):
            list_stack.pop()
        elif tok.type == "list_item_open" and list_stack:
            indent = "   " * (len(list_stack) - 1)
            counter = list_stack[-1]
            if counter[0] is None:
                pending_prefix = f"{indent}-  "
            else:
                pending_prefix = f"{indent}{counter[0]}. "
                counter[0] += 1
        elif tok.type == "blockquote_open":
            quote_depth += 1
        elif tok.type == "blockquote_close":
            quote_depth -= 1
        elif tok.type in ("fence", "code_block"):
            blocks.append("\n".join("    " + line for line in tok.content.rstrip("\n").split("\n")))
        elif tok.type == "hr":
            blocks.append("-" * 20)
        elif tok.type == "tr_open":
            table_row = []
        elif tok.type == "tr_close":
            blocks.append(" | ".join(cell.strip() for cell in table_row))
        elif tok.type == "html_block":
            stripped = re.sub(r"<[^>]+>", "", tok.content).strip()
            if stripped:
                blocks.append(stripped)
    text = _join_blocks(blocks, tokens)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _join_blocks(blocks: list[str], tokens: Sequence[Token]) -> str:
    # Tight list items and table rows sit on consecutive lines; everything else is a paragraph apart.
    out: list[str] = []
    for block in blocks:
        if out and _is_tight(block) and _is_tight(out[-1]):
            out.append("\n" + block)
        else:
            out.append(("\n\n" if out else "") + block)
    return "".join(out)


def _is_tight(block: str) -> bool:
    last_line = block.rsplit("\n", 1)[-1]
    return bool(block.lstrip().startswith("-  ") or re.match(r"\s*\d+\. ", block) or " | " in last_line)


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
            title = _inline_text(tokens[i + 1].children)
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


def _template_error(origin: str, exc: Exception, line_offset: int = 0) -> TemplateError:
    """One line naming the file and line for anything a template raised: Jinja's errors, the sandbox's refusals,
    and plain Python errors of the template's own making ({{ 1/0 }})."""
    where = origin
    jinja_error = isinstance(exc, jinja2.TemplateError)
    lineno = getattr(exc, "lineno", None) if jinja_error else None
    name = (getattr(exc, "filename", None) or getattr(exc, "name", None)) if jinja_error else None
    if not lineno:
        # Render-time errors (StrictUndefined) carry no lineno; Jinja rewrites the traceback so that each template
        # line that ran appears as a frame whose filename is the template's (or "<template>" for a string).
        # Python's own frozen modules ("<frozen abc>", where a RecursionError often lands) are not templates.
        frames = [(frame.filename, frame.lineno) for frame in traceback.extract_tb(exc.__traceback__)
                  if not frame.filename.endswith(".py") and not frame.filename.startswith("<frozen")]
        if frames:
            # the innermost line that ran; for endless recursion, the line that repeats (the include of itself)
            filename, lineno = Counter(frames).most_common(1)[0][0] if isinstance(exc, RecursionError) else frames[-1]
            name = None if filename == "<template>" else filename
    if name:
        where = str(name)
    elif lineno:
        lineno += line_offset  # the body's line numbers, counted from the top of the issue file
    if lineno:
        where = f"{where} line {lineno}"
    text = str(exc.message if jinja_error and getattr(exc, "message", None) else exc)
    message = (text.splitlines() or [""])[0] or type(exc).__name__
    if isinstance(exc, RecursionError):
        message = "it includes, imports or calls itself without end (maximum recursion depth exceeded)"
    elif isinstance(exc, MemoryError):
        message = (f"it needs more than {MAX_RENDER_MEMORY >> 20} MB of memory to render (a loop, a repeat or a "
                   "padding width building a huge text, or a file of tens of MB?)")
    if isinstance(exc, SecurityError) and "unsafe" in message:
        message += " (issues and layouts run in Jinja's sandbox, with only the documented variables)"
    return TemplateError(f"{where}: {message}")


def image_type(data: bytes) -> tuple[str, str, tuple[int, int] | None]:
    """(MIME type, file extension, (width, height) or None) of a PNG, JPEG, GIF or WebP image, from its bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return "image/png", "png", struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return "image/gif", "gif", struct.unpack("<HH", data[6:10])
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg", "jpg", _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp", None
    raise ValueError("not a PNG, JPEG, GIF or WebP image")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame: height, width
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def is_local_src(src: str) -> bool:
    """A path next to the issue (`images/chart.png`), not a URL of any scheme."""
    return bool(src) and not _URL_SCHEME.match(src)


def embed_images(tokens: Sequence[Token], read_file: ReadFile | None, origin: str) -> tuple[InlineImage, ...]:
    """`images: cid`: point each local Markdown image at a `cid:` part carrying its bytes, with a width attribute
    (Outlook sizes images by it, not by CSS) no wider than the layout's column."""
    images: dict[str, InlineImage] = {}
    widths: dict[str, str] = {}
    for tok in tokens:
        for child in tok.children or ():
            src = str(child.attrs.get("src", "")) if child.type == "image" else ""
            if not is_local_src(src):
                continue
            if src not in images:
                if read_file is None:
                    raise TemplateError(f"{origin}: images: cid needs the issue's folder to read {src}")
                # markdown-it percent-encodes the link (图表.png -> %E5%9B%BE...): the file has the written name
                data = read_file(urllib.parse.unquote(src))
                try:
                    content_type, ext, size = image_type(data)
                except ValueError as exc:
                    raise TemplateError(f"{origin}: image {src}: {exc}") from None
                digest = hashlib.sha256(data).hexdigest()[:16]
                stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(urllib.parse.unquote(src)).stem).strip("-")[:40] or "image"
                images[src] = InlineImage(f"{stem}.{digest}@mailer", f"{stem}.{ext}", content_type, data)
                if size and size[0]:
                    widths[src] = str(min(size[0], CONTENT_WIDTH))
            child.attrs["src"] = f"cid:{images[src].cid}"
            if src in widths and "width" not in child.attrs:
                child.attrs["width"] = widths[src]
    return tuple(images.values())


def _body_line_offset(source: str, body: str) -> int:
    start = source.find(body) if body else -1
    return source[:start].count("\n") if start > 0 else 0


class BuiltinLoader(jinja2.BaseLoader):
    """Jinja loader for the layouts shipped in the package (`sub`: a folder inside them, e.g. "web")."""

    def __init__(self, sub: str = "") -> None:
        self.root = BUILTIN_TEMPLATES / sub if sub else BUILTIN_TEMPLATES

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        node = self.root
        for part in template.split("/"):
            if part in ("", ".", ".."):
                raise jinja2.TemplateNotFound(template)
            node = node / part
        if not node.is_file():
            raise jinja2.TemplateNotFound(template)
        return node.read_text(encoding="utf-8"), str(node), lambda: True


def builtin_layouts() -> Iterator[tuple[str, bytes]]:
    """Every built-in layout file as (path inside the layouts folder, bytes): what `mailer new` copies."""
    folders = [("", BUILTIN_TEMPLATES)]
    while folders:
        prefix, folder = folders.pop()
        for node in sorted(folder.iterdir(), key=lambda n: n.name):
            if node.is_dir():
                folders.append((f"{prefix}{node.name}/", node))
            elif node.name.endswith(".j2"):
                yield prefix + node.name, node.read_bytes()


def layout_files(templates_dir: Path | None) -> list[Path]:
    """The layout files on disk that a rendering may read (what a live preview watches)."""
    folders = [Path(templates_dir)] if templates_dir else []
    if isinstance(BUILTIN_TEMPLATES, Path):  # a wheel or a checkout; a zip import has nothing to watch
        folders.append(BUILTIN_TEMPLATES)
    return [path for folder in folders for path in sorted(folder.glob("*.j2"))]


class _LayoutFolderLoader(jinja2.FileSystemLoader):
    """The editor's layouts folder. What a layout loads must be a file, and one reached through a symlink out of the
    folder must be a layout (*.j2): the sandbox keeps layouts from reading the machine's files, but a link shipped
    with a layouts folder (`x.j2 -> /proc/self/environ`, `-> ../mailer.db.secret`) and `{% include "x.j2" %}`
    put the SMTP password or the signing secret into every message, and a link to /dev/zero read forever."""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder))
        self.folder = folder

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        path = self.folder.joinpath(*split_template_path(template))
        if path.exists():  # a name that is not there falls through to the built-in layouts, as before
            real = path.resolve()
            if not real.is_file():
                raise SecurityError(f"layout {template!r} is not a file ({real})")
            if not real.is_relative_to(self.folder.resolve()) and not real.name.endswith(".j2"):
                raise SecurityError(f"layout {template!r} leads to {real}, outside the layouts folder {self.folder}; "
                                    "only layouts (*.j2) may be linked from elsewhere")
        return super().get_source(environment, template)


def _layout_loader(templates_dir: Path | None, sub: str = "") -> jinja2.BaseLoader:
    """The editor's folder first; a layout it lacks comes from the built-in ones."""
    builtin = BuiltinLoader(sub)
    if templates_dir is None:
        return builtin
    return jinja2.ChoiceLoader([_LayoutFolderLoader(Path(templates_dir) / sub), builtin])


MAX_REPEAT = 100_000  # longest string or list `*` may build: a layout needs a rule of a few dozen characters
MAX_POWER_BITS = 4096  # largest integer `**` may build


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with no globals (range, cycler, lipsum...: only the variables mailer documents
    exist), attributes of an undefined value refused outright, and `*` / `**` kept from building huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.clear()

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, jinja2.Undefined):  # `cycler.__init__` when cycler is not a variable: say so
            obj._fail_with_undefined_error()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, jinja2.Undefined):
            obj._fail_with_undefined_error()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int) and len(seq) * count > MAX_REPEAT:
                    raise SecurityError(f"the result of * would be too large ({len(seq) * count:,} items)")
        elif isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_POWER_BITS:
            raise SecurityError("the result of ** would be too large")
        return super().call_binop(context, operator, left, right)


MAX_RENDER_MEMORY = 512 << 20  # address space a rendering may add to the process's; an issue takes a few MB
_ceiling_lock = threading.Lock()
_ceiling: dict[str, Any] = {"users": 0, "saved": None}


@contextlib.contextmanager
def memory_ceiling() -> Iterator[None]:
    """While templates render, the process may grow by at most MAX_RENDER_MEMORY (RLIMIT_AS, where the system has
    it). The sandbox stops `*` and `**` from building huge values, but not a loop printing 100,000 x 100,000
    characters, "x".ljust(10**10), a format width, |center, |join or a chain of `~`: each asked the system for 10 GB
    or more, and the machine ran out. Over the ceiling an allocation fails at once: a MemoryError, which the
    caller reports by file and line. Threads rendering at once share one ceiling, restored when the last ends."""
    try:
        import resource

        used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError):  # not Linux: no ceiling
        yield
        return
    with _ceiling_lock:
        if _ceiling["users"] == 0:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = used + MAX_RENDER_MEMORY
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            if soft == resource.RLIM_INFINITY or soft > limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
                _ceiling["saved"] = (soft, hard)
        _ceiling["users"] += 1
    try:
        yield
    finally:
        with _ceiling_lock:
            _ceiling["users"] -= 1
            if _ceiling["users"] == 0 and _ceiling["saved"] is not None:
                resource.setrlimit(resource.RLIMIT_AS, _ceiling["saved"])
                _ceiling["saved"] = None


class _NoOtherFiles(jinja2.BaseLoader):
    """An issue is one file: it may not pull in other templates (layouts can, from their own folder)."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        raise SecurityError(f"an issue cannot include, import or extend another template ({template!r}); "
                            "that belongs in the layout")


def _body_environment() -> jinja2.Environment:
    return _Sandbox(loader=_NoOtherFiles(), undefined=jinja2.StrictUndefined, autoescape=False,
                    keep_trailing_newline=True)


def _environment(templates_dir: Path | None, html: bool) -> jinja2.Environment:
    return _Sandbox(
        loader=_layout_loader(templates_dir),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


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
) -> RenderedIssue:
    """Render an issue once; raises TemplateError for anything that would break a send.

    `read_file` reads a file next to the issue (path as written in it): the images of `images: cid`.
    `given` sets front-matter values as data (a confirmation mail's subject naming the list).
    `theme`: the colours, logo and footer lines of mailer.toml's [theme]."""
    list_ctx = list_ctx or ListContext()
    parsed, body = split_front_matter(source, origin, given)
    meta = _FrontMatter(parsed)
    recipient = _RecipientFields()
    lang = str(meta.get("lang") or list_ctx.lang or "zh").strip().lower()
    if lang not in tuple(Lang):
        # The layouts' own words (greeting, headings, footer) exist in these; any other value printed the English
        # layout with an empty greeting ("Hello ,") for a Chinese list, silently.
        raise TemplateError(f"{origin}: front matter 'lang' must be {' or '.join(Lang)}, not {meta['lang']!r}")
    list_title = list_ctx.title or list_ctx.name or NO_LIST_TITLE.get(lang, NO_LIST_TITLE["en"])
    logo, layout_theme = theme_context(theme or Theme(), list_title)
    base_context: dict[str, Any] = {
        "subject": str(meta["subject"]).strip(),
        "preheader": str(meta.get("preheader") or "").strip(),
        "issue_number": str(meta.get("issue") or "").strip(),
        "date": str(meta.get("date") or "").strip(),
        "lang": lang,
        "list_title": list_title,
        "list_name": list_ctx.name,
        "meta": meta,
        "subscriber": recipient,
        "unsubscribe_url": PH_UNSUBSCRIBE,
        "theme": layout_theme,
    }
    try:
        with memory_ceiling():
            body = _body_environment().from_string(body).render(**base_context)
    except Exception as exc:  # whatever the issue's own code raised (a refusal, 1/0) is the issue's error
        raise _template_error(origin, exc, _body_line_offset(source, body)) from None
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
            raw_html = _environment(templates_dir, html=True).get_template(HTML_LAYOUT).render(**context)
            text = _environment(templates_dir, html=False).get_template(TEXT_LAYOUT).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"layout {exc.name} not found in {templates_dir or BUILTIN_TEMPLATES}") from None
    except Exception as exc:  # as for the body: a layout's own error, named by its file and line
        raise _template_error(origin, exc) from None
    html = inline_css(raw_html)
    text = "\n".join(line.rstrip() for line in text.strip("\n").split("\n")) + "\n"
    digest = hashlib.sha256()
    for part in (source, raw_html, text):
        digest.update(part.encode("utf-8"))
    for image in images:
        digest.update(image.data)
    return RenderedIssue(
        slug=slugify(str(meta.get("slug") or Path(origin).stem)),
        subject=base_context["subject"],
        preheader=base_context["preheader"],
        lang=lang,
        html=html,
        text=text,
        meta={k: _plain(v) for k, v in parsed.items()},
        attr_keys=tuple(recipient._keys),
        content_hash=digest.hexdigest(),
        from_addr=str(meta.get("from") or ""),
        sections=tuple(s.title for s in sections),
        images=images,
        warnings=tuple(meta.unused(origin)),
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


def substitute(template: str, values: dict[str, str]) -> str:
    """Replace placeholders by already-escaped values (unknown ones become empty)."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), template)


def attr_placeholder_keys(keys: Iterable[str]) -> dict[str, str]:
    """Map placeholder codes (A0, A1, ...) to the subscriber attribute names they stand for."""
    return {f"A{i}": key for i, key in enumerate(keys)}


def render_page(name: str, context: dict[str, Any], templates_dir: Path | None = None) -> str:
    """One page of `mailer serve` (autoescaped HTML, StrictUndefined): a missing value is a bug, not a blank.

    Pages are `web/NAME` in the editor's layouts folder, else the built-in ones."""
    env = _page_environment(templates_dir)
    try:
        # No memory ceiling here: pages render on a busy server's threads, where a process-wide RLIMIT_AS would
        # fail other requests' allocations. mailer serve renders its page once under the ceiling before serving.
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"layout web/{exc.name} not found in {templates_dir or BUILTIN_TEMPLATES}") from None
    except Exception as exc:  # named by its file and line, like an issue's layout
        raise _template_error(f"web/{name}", exc) from None


@functools.lru_cache(maxsize=4)
def _page_environment(templates_dir: Path | None) -> jinja2.Environment:
    return _Sandbox(
        loader=_layout_loader(templates_dir, "web"), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
