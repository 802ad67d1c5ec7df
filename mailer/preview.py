"""Previews: the issue as a recipient sees it, as PNG screenshots from headless Chromium (desktop and mobile width),
with what mail clients break (checks.py) and whether a CJK font is there to draw it, and the live preview's state:
the latest rendering, re-rendered when the issue, its images or the layouts change.

The only module that imports playwright. Chromium is Debian's (/usr/bin/chromium), never a downloaded one; pages are
set from memory, and with `offline` every request that would leave this machine is refused. Serving the live
preview is web/live.py's: this module imports no web framework."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailer.checks import check_html, check_subject, is_loopback_url
from mailer.config import Config
from mailer.errors import MailerError
from mailer.render import layout_files
from mailer.sample import SampleMessage, build_sample
from mailer.store import Store

CHROMIUM = "/usr/bin/chromium"


# What `mailer preview` needs beyond the main job, in one line: a Python extra and two Debian packages.
INSTALL_HINT = "pip install 'mailer[preview]' and apt-get install chromium fonts-noto-cjk"


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


DESKTOP_WIDTH = 1200


MOBILE_WIDTH = 390


VIEWPORT_HEIGHT = 900


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def check_message(message: SampleMessage) -> list[str]:
    """check_html on the message's HTML and check_subject on its subject."""
    return check_html(message.html) + check_subject(message.subject)


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
    return [
        f"{why}: the screenshots show empty boxes for CJK text (apt-get install fonts-noto-cjk fontconfig); "
        "recipients see the text in their own fonts"
    ]


@dataclass(frozen=True)
class Screenshots:
    desktop: Path
    mobile: Path


def _allow_request(url: str, offline: bool) -> bool:
    return url.startswith(("data:", "about:")) or not offline or is_loopback_url(url)


def screenshot(html: str, out_dir: Path, slug: str, offline: bool = False, chromium: str = CHROMIUM) -> Screenshots:
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
                    page = browser.new_page(
                        viewport={"width": width, "height": VIEWPORT_HEIGHT},
                        device_scale_factor=1,
                        is_mobile=width == MOBILE_WIDTH,
                        has_touch=width == MOBILE_WIDTH,
                    )
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


def preview_issue(
    issue_path: Path,
    out_dir: Path,
    config: Config,
    store: Store | None = None,
    list_name: str | None = None,
    *,
    offline: bool = False,
    segment: tuple[str | None, str | None] = (None, None),
) -> PreviewResult:
    """Render for a sample recipient (of the segment, if any), check it, and write <slug>-desktop.png and
    <slug>-mobile.png in out_dir."""
    message = build_sample(issue_path, config, store, list_name, segment=segment)
    warnings = [*message.notes, *check_message(message), *check_fonts(message.html)]
    shots = screenshot(message.browser_html, out_dir, message.slug, offline=offline)
    return PreviewResult(message, shots, warnings)


class LivePreview:
    """The latest rendering of an issue, re-rendered when the issue, its images or the layouts change."""

    def __init__(
        self,
        render: Callable[[], SampleMessage],
        watched: Callable[[], Iterator[Path]],
        on_render: Callable[[LivePreview], None] | None = None,
    ) -> None:
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
        stamps: dict[Path, float] = {}
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


def live_preview(
    issue_path: Path,
    config: Config,
    store: Store | None = None,
    list_name: str | None = None,
    on_render: Callable[[LivePreview], None] | None = None,
    segment: tuple[str | None, str | None] = (None, None),
) -> LivePreview:
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

    live = LivePreview(lambda: build_sample(issue_path, config, store, list_name, segment=segment), watched, on_render)
    live.refresh(force=True)
    return live
