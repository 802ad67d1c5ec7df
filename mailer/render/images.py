"""`images: cid`: the local images an issue names, read once through the issue's reader, typed and sized from
their bytes (PNG, JPEG, GIF, WebP), given a content ID and a width no wider than the layout's column.

Pure but for the reader it is given; never opens a file itself."""

from __future__ import annotations

import hashlib
import html
import re
import struct
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from markdown_it.token import Token

from mailer.errors import TemplateError
from mailer.render.issue import InlineImage, ReadFile

CONTENT_WIDTH = 536  # the layout's 600 px column less its 2 x 32 px padding: the widest an image is shown


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


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
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame: height, width
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def is_local_src(src: str) -> bool:
    """A path next to the issue (`images/chart.png`), not a URL of any scheme."""
    return bool(src) and not _URL_SCHEME.match(src)


def embed_images(tokens: Sequence[Token], read_file: ReadFile | None, origin: str) -> tuple[InlineImage, ...]:
    """`images: cid`: point each local image, Markdown (`![alt](a.png)`) or raw HTML (`<img src="a.png">`), at a
    `cid:` part carrying its bytes, with a width attribute (Outlook sizes images by it, not by CSS) no wider than
    the layout's column."""
    embedder = _Embedder(read_file, origin)
    for tok in tokens:
        if tok.type == "html_block":
            tok.content = embedder.raw_html(tok.content)
        for child in tok.children or ():
            if child.type == "html_inline":
                child.content = embedder.raw_html(child.content)
                continue
            src = str(child.attrs.get("src", "")) if child.type == "image" else ""
            if not is_local_src(src):
                continue
            # markdown-it percent-encodes the link (图表.png -> %E5%9B%BE...): the file has the written name
            image, width = embedder.embed(urllib.parse.unquote(src))
            child.attrs["src"] = f"cid:{image.cid}"
            if width and "width" not in child.attrs:
                child.attrs["width"] = width
    return embedder.images()


# An <img> tag of raw HTML in the Markdown, and each attribute in it (quoted either way, or bare). Comments are
# matched first so that an <img> inside one stays as it is, and unread.
_RAW_IMG = re.compile(r"<!--.*?-->|<img\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>", re.IGNORECASE | re.DOTALL)
_ATTR = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""")


class _Embedder:
    """The images of one issue, each read and given its content ID once however often it is shown."""

    def __init__(self, read_file: ReadFile | None, origin: str) -> None:
        self.read_file = read_file
        self.origin = origin
        self._found: dict[str, tuple[InlineImage, str]] = {}

    def images(self) -> tuple[InlineImage, ...]:
        return tuple(image for image, _ in self._found.values())

    def embed(self, path: str) -> tuple[InlineImage, str]:
        """The image at `path` (as the file is named, next to the issue) and its width attribute ("" if unknown)."""
        if path not in self._found:
            if self.read_file is None:
                raise TemplateError(f"{self.origin}: images: cid needs the issue's folder to read {path}")
            data = self.read_file(path)
            try:
                content_type, ext, size = image_type(data)
            except ValueError as exc:
                raise TemplateError(f"{self.origin}: image {path}: {exc}") from None
            digest = hashlib.sha256(data).hexdigest()[:16]
            stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(path).stem).strip("-")[:40] or "image"
            width = str(min(size[0], CONTENT_WIDTH)) if size and size[0] else ""
            self._found[path] = (InlineImage(f"{stem}.{digest}@mailer", f"{stem}.{ext}", content_type, data), width)
        return self._found[path]

    def raw_html(self, markup: str) -> str:
        """Raw HTML with each local `<img src>` pointing at its `cid:` part, and a width where it had none."""
        return _RAW_IMG.sub(self._raw_tag, markup) if "<img" in markup.lower() else markup

    def _raw_tag(self, match: re.Match[str]) -> str:
        tag = match.group(0)
        if tag.startswith("<!--"):
            return tag
        attrs: dict[str, re.Match[str]] = {}
        for attr in _ATTR.finditer(tag, len("<img")):
            attrs.setdefault(attr.group(1).lower(), attr)  # the first of a repeated attribute is the one shown
        src_attr = attrs.get("src")
        if src_attr is None:
            return tag
        src = html.unescape(next((g for g in src_attr.groups()[1:] if g is not None), "")).strip()
        if not is_local_src(src):
            return tag
        image, width = self.embed(urllib.parse.unquote(src))
        out = f'{tag[: src_attr.start()]}src="cid:{image.cid}"{tag[src_attr.end() :]}'
        if width and "width" not in attrs:
            end = len(out) - 2 if out.endswith("/>") else len(out) - 1
            out = f'{out[:end].rstrip()} width="{width}"{out[end:]}'
        return out
