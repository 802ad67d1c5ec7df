"""`images: cid`: the local images an issue names, read once through the issue's reader, typed and sized from
their bytes (PNG, JPEG, GIF, WebP), given a content ID and a width no wider than the layout's column.

Pure but for the reader it is given; never opens a file itself."""

from __future__ import annotations

import hashlib
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
