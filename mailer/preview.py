"""Previews: the issue as a recipient sees it, as PNG screenshots from headless Chromium (desktop and mobile width),
a check of what mail clients break, and a live-reloading page on 127.0.0.1 while the editor writes.

The only module that imports playwright. Chromium is Debian's (/usr/bin/chromium), never a downloaded one; pages are
set from memory, and with `offline` every request that would leave this machine is refused."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html as html_lib
import json
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mailer.clock import utcnow
from mailer.config import Config
from mailer.errors import MailerError
from mailer.models import Recipient
from mailer.render import InlineImage, layout_files
from mailer.send import GMAIL_CLIP_BYTES, build_template, prepare_sample
from mailer.smtp import is_loopback
from mailer.store import Store

CHROMIUM = "/usr/bin/chromium"
# What `mailer preview` needs beyond the main job, in one line: a Python extra and two Debian packages.
INSTALL_HINT = "pip install 'mailer[preview]' and apt-get install chromium fonts-noto-cjk"
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DESKTOP_WIDTH = 1200
MOBILE_WIDTH = 390
VIEWPORT_HEIGHT = 900
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
SAFE_SCHEMES = ("https:", "mailto:", "tel:", "cid:", "#")
_CONDITIONAL_COMMENT = re.compile(r"<!--\[if.*?<!\[endif\]-->", re.S | re.I)
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)


@dataclass(frozen=True)
class SampleMessage:
    """One sample recipient's message: what the browser shows and what travels."""

    slug: str
    html: str  # personalised HTML as sent (embedded images still `cid:`)
    text: str
    data: bytes  # the whole message as it goes on the wire
    images: tuple[InlineImage, ...] = ()
    subject: str = ""
    notes: tuple[str, ...] = ()  # what mailer send would warn about (a front-matter field nothing reads, ...)

    @property
    def browser_html(self) -> str:
        """The HTML with `cid:` images as data: URIs, which a browser can show."""
        out = self.html
        for image in self.images:
            uri = f"data:{image.content_type};base64,{base64.b64encode(image.data).decode('ascii')}"
            out = out.replace(f"cid:{image.cid}", uri)
        return out


def render_sample(issue_path: Path, config: Config, store: Store | None = None,
                  list_name: str | None = None) -> SampleMessage:
    """The issue rendered and personalised for the list's first active subscriber (or a sample reader), exactly as
    `mailer render` and `mailer send` would build it."""
    prepared, sample = prepare_sample(issue_path, config, store, list_name)
    secret = config.secret or secrets.token_bytes(16)  # links in a preview are samples
    template = build_template(prepared, 0, "preview", secret)
    recipient = Recipient(0, sample.id, sample.email, sample.name, sample.attrs)
    message = template.build(recipient, utcnow())
    html, text = template.personal_bodies(recipient, message.unsubscribe_url)
    return SampleMessage(prepared.issue.slug, html, text, message.data, prepared.issue.images,
                         prepared.issue.subject, tuple(prepared.warnings))


# ---- the compatibility check ---------------------------------------------------------------------------------------


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
    return src if len(src) <= limit else src[:limit - 3] + "..."


def _is_loopback_url(url: str) -> bool:
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
        return [f"the subject {_describe(subject)!r} is in capitals: spam filters score that (rspamd SUBJ_ALL_CAPS "
                "+3.0); write it in normal case"]
    return []


def check_message(message: SampleMessage) -> list[str]:
    """check_html on the message's HTML and check_subject on its subject."""
    return check_html(message.html) + check_subject(message.subject)


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
        warnings.append(f"CSS rule '{_describe(selector)}' stayed in <style> (only @media rules should): Gmail's "
                        "app and Outlook.com drop it; style the element inline instead")
    seen = set()
    for href in collector.links:
        scheme_lower = href[:8].lower() + href[8:]  # HTTPS://EXAMPLE.ORG is as good as https://example.org
        if scheme_lower.startswith(SAFE_SCHEMES) or href in seen:
            continue
        seen.add(href)
        if scheme_lower.startswith("http:"):
            where = " (this machine: subscribers cannot open it)" if _is_loopback_url(href) else ""
            warnings.append(f"link {_describe(href)} is not https{where}")
        else:
            warnings.append(f"link {_describe(href)} has no https:// host: it cannot work in a mail client")
    size = len(html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        warnings.append(f"the HTML part is {size / 1024:.0f} KB: Gmail clips messages over 102 KB, hiding the rest "
                        "(and the unsubscribe link) behind 'View entire message'")
    return warnings


# ---- screenshots ---------------------------------------------------------------------------------------------------


def cjk_font_installed() -> bool | None:
    """Whether fontconfig (what Chromium draws text with) knows a Chinese font; None when fc-list is missing."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return None
    found = subprocess.run([fc_list, ":lang=zh", "family"], capture_output=True, text=True, timeout=30)
    return found.returncode == 0 and bool(found.stdout.strip())


def check_fonts(html: str) -> list[str]:
    """A screenshot of CJK text without a CJK font is rows of empty boxes: say so instead of writing it silently."""
    if not _CJK.search(html):
        return []
    installed = cjk_font_installed()
    if installed:
        return []
    why = "no Chinese font is installed" if installed is False else "fc-list is missing, so no font could be found"
    return [f"{why}: the screenshots show empty boxes for CJK text (apt-get install fonts-noto-cjk fontconfig); "
            "recipients see the text in their own fonts"]



@dataclass(frozen=True)
class Screenshots:
    desktop: Path
    mobile: Path


def _allow_request(url: str, offline: bool) -> bool:
    return url.startswith(("data:", "about:")) or not offline or _is_loopback_url(url)


def screenshot(html: str, out_dir: Path, slug: str, offline: bool = False,
               chromium: str = CHROMIUM) -> Screenshots:
    """Full-page PNGs of the HTML at 1200 and 390 CSS pixels wide, from headless Chromium."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import Route as BrowserRoute
        from playwright.sync_api import sync_playwright
    except ImportError:  # an extra: the main job does not need a browser driver (165 MB)
        raise MailerError(f"mailer preview needs Playwright and Chromium: {INSTALL_HINT}") from None
    if not Path(chromium).is_file():
        raise MailerError(f"mailer preview needs Chromium at {chromium}: {INSTALL_HINT}")

    out_dir.mkdir(parents=True, exist_ok=True)
    shots = Screenshots(out_dir / f"{slug}-desktop.png", out_dir / f"{slug}-mobile.png")

    def route(r: BrowserRoute) -> None:
        if _allow_request(r.request.url, offline):
            r.continue_()
        else:
            r.abort()

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                for width, path in ((DESKTOP_WIDTH, shots.desktop), (MOBILE_WIDTH, shots.mobile)):
                    page = browser.new_page(viewport={"width": width, "height": VIEWPORT_HEIGHT},
                                            device_scale_factor=1, is_mobile=width == MOBILE_WIDTH,
                                            has_touch=width == MOBILE_WIDTH)
                    page.route("**/*", route)
                    page.set_content(html, wait_until="load", timeout=30_000)
                    page.screenshot(path=str(path), full_page=True)
                    page.close()
            finally:
                browser.close()
    except PlaywrightError as exc:
        raise MailerError(f"Chromium ({chromium}) could not make the preview: {str(exc).splitlines()[0]}") from None
    return shots


@dataclass
class PreviewResult:
    message: SampleMessage
    screenshots: Screenshots | None
    warnings: list[str] = field(default_factory=list)


def preview_issue(issue_path: Path, out_dir: Path, config: Config, store: Store | None = None,
                  list_name: str | None = None, *, offline: bool = False) -> PreviewResult:
    """Render for a sample recipient, check it, and write <slug>-desktop.png and <slug>-mobile.png in out_dir."""
    message = render_sample(issue_path, config, store, list_name)
    warnings = [*message.notes, *check_message(message), *check_fonts(message.html)]
    shots = screenshot(message.browser_html, out_dir, message.slug, offline=offline)
    return PreviewResult(message, shots, warnings)


# ---- live preview --------------------------------------------------------------------------------------------------


_FRAME_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>preview: {title}</title>
<style>
body {{ margin: 0; font: 14px system-ui, sans-serif; background: #d9dde3; color: #222; }}
header {{ padding: 8px 16px; background: #fff; border-bottom: 1px solid #bbb; }}
header .problems {{ color: #8a4b00; margin: 4px 0 0 0; padding-left: 18px; }}
header .error {{ color: #b00020; font-weight: bold; }}
main {{ display: flex; gap: 24px; padding: 16px; align-items: flex-start; }}
figure {{ margin: 0; }} figcaption {{ margin-bottom: 4px; color: #555; }}
iframe {{ border: 1px solid #999; background: #fff; height: 85vh; }}
</style></head>
<body>
<header><b>{title}</b> &middot; updates when you save the issue
{error}<ul class="problems">{warnings}</ul></header>
<main>
<figure><figcaption>desktop</figcaption><iframe src="/message.html" width="700"></iframe></figure>
<figure><figcaption>mobile ({mobile} px)</figcaption><iframe src="/message.html" width="{mobile}"></iframe></figure>
</main>
<script>
let version = {version};
setInterval(async () => {{
  try {{
    const r = await fetch("/version", {{cache: "no-store"}});
    const v = (await r.json()).version;
    if (v !== version) location.reload();
  }} catch (e) {{}}
}}, 700);
</script>
</body></html>
"""


class LivePreview:
    """The latest rendering of an issue, re-rendered when the issue, its images or the layouts change."""

    def __init__(self, render: Callable[[], SampleMessage], watched: Callable[[], Iterator[Path]],
                 on_render: Callable[[LivePreview], None] | None = None) -> None:
        self.render = render
        self.watched = watched
        self.on_render = on_render
        self.version = 0
        self.message: SampleMessage | None = None
        self.warnings: list[str] = []
        self.error = ""
        self._stamps: dict[Path, float] = {}
        self._lock = threading.Lock()

    def _snapshot(self) -> dict[Path, float]:
        stamps = {}
        for path in self.watched():
            try:
                stamps[path] = path.stat().st_mtime_ns
            except OSError:
                stamps[path] = -1
        return stamps

    def refresh(self, force: bool = False) -> bool:
        """Render again if a watched file changed (or `force`); True when there is something new to show."""
        with self._lock:
            stamps = self._snapshot()
            if not force and stamps == self._stamps:
                return False
            self._stamps = stamps
            try:
                message = self.render()
            except MailerError as exc:
                self.error = str(exc)
            else:
                self.message, self.error, self.warnings = message, "", [*message.notes, *check_message(message)]
            self.version += 1
        if self.on_render:
            self.on_render(self)
        return True

    def page(self) -> str:
        title = html_lib.escape(self.message.slug if self.message else "issue")
        error = f'<p class="error">{html_lib.escape(self.error)} (showing the last good version)</p>' \
            if self.error else ""
        warnings = "".join(f"<li>{html_lib.escape(w)}</li>" for w in self.warnings)
        return _FRAME_PAGE.format(title=title, error=error, warnings=warnings, version=json.dumps(self.version),
                                  desktop=DESKTOP_WIDTH, mobile=MOBILE_WIDTH)

    def app(self, poll_seconds: float = 0.3) -> Starlette:
        """`/` the desktop and mobile frames (reloading when a new version is rendered), `/message.html` the
        message itself, `/version` the rendering's number; a background task re-renders on change."""
        headers = {"Cache-Control": "no-store"}

        async def frame(request: Request) -> Response:
            return HTMLResponse(self.page(), headers=headers)

        async def message(request: Request) -> Response:
            body = self.message.browser_html if self.message else f"<p>{html_lib.escape(self.error)}</p>"
            return HTMLResponse(body, headers=headers)

        async def version(request: Request) -> Response:
            return JSONResponse({"version": self.version}, headers=headers)

        async def watch() -> None:
            while True:
                await asyncio.sleep(poll_seconds)
                await asyncio.to_thread(self.refresh)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            task = asyncio.create_task(watch())
            try:
                yield
            finally:
                task.cancel()

        return Starlette(routes=[Route("/", frame), Route("/message.html", message), Route("/version", version)],
                         lifespan=lifespan)


def live_preview(issue_path: Path, config: Config, store: Store | None = None, list_name: str | None = None,
                 on_render: Callable[[LivePreview], None] | None = None) -> LivePreview:
    """A LivePreview of the issue that watches the issue file, the files beside it and the layouts."""
    issue_path = Path(issue_path)

    def watched() -> Iterator[Path]:
        yield issue_path
        folder = issue_path.resolve().parent
        for pattern in ("*", "*/*"):  # images beside the issue or one folder down, as `images: cid` finds them
            for path in sorted(folder.glob(pattern)):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    yield path
        yield from layout_files(config.templates)

    live = LivePreview(lambda: render_sample(issue_path, config, store, list_name), watched, on_render)
    live.refresh(force=True)
    return live


def serve_live_preview(live: LivePreview, port: int, host: str = "127.0.0.1",
                       ready: Callable[[str], None] | None = None) -> None:
    """Serve the live preview until Ctrl-C (loopback only: a draft is not for the network)."""
    import uvicorn

    if not _is_loopback_url(f"http://{host}/"):
        raise MailerError(f"the live preview only listens on this machine, not on {host}")
    from mailer.web import listen_socket

    sock = listen_socket(host, port)
    if ready:
        ready(f"http://{host}:{sock.getsockname()[1]}/")
    uvicorn.Server(uvicorn.Config(live.app(), log_level="warning", access_log=False)).run(sockets=[sock])
