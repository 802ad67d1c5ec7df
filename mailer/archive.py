"""A list's public archive: the index of its past issues (newest first, with date and issue number), each issue's
web edition (rendered for a neutral reader when its campaign was created, its embedded images as files beside it),
the Atom feed, and all of it written as static files (`mailer archive build`).

The same pages for `mailer serve` (web/archive.py) and the static build: links between them are relative, so a
folder of these files works on any web server. Must not render an issue (campaign.py made the web edition) nor
hold personal data: nothing here reads a subscriber."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from mailer.config import Config
from mailer.errors import MailerError, NotFoundError
from mailer.feed import FeedEntry, FeedInfo, atom_feed
from mailer.models import MailingList, Theme
from mailer.render import render_page
from mailer.store import ArchivedIssue, Store
from mailer.wording import TEXT

FEED_ENTRIES = 20  # the newest issues a feed carries, with their content
_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.S | re.I)


@dataclass(frozen=True)
class EditionImage:
    """An image of a web edition, served beside it: `{slug}/{name}` relative to the archive."""

    cid: str
    name: str
    content_type: str
    data: bytes


def archive_url(base_url: str, mailing_list: MailingList) -> str:
    return f"{base_url.rstrip('/')}/a/{mailing_list.name}/"


def signup_url(base_url: str, mailing_list: MailingList) -> str:
    return f"{base_url.rstrip('/')}/s/{mailing_list.name}"


def edition_images(store: Store, campaign_id: int) -> list[EditionImage]:
    found = []
    for n, image in enumerate(store.archive.images(campaign_id), start=1):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", image["filename"]).lstrip(".") or "image"
        found.append(EditionImage(image["cid"], f"{n}-{safe}", image["content_type"], base64.b64decode(image["data"])))
    return found


def edition_html(html: str, slug: str, images: list[EditionImage], query: str = "") -> str:
    """The web edition as a browser shows it: embedded (`cid:`) images point at their files beside the page."""
    for image in images:
        html = html.replace(f"cid:{image.cid}", f"{slug}/{image.name}{query}")
    return html


def edition_of(store: Store, mailing_list: MailingList, slug: str) -> tuple[ArchivedIssue, str] | None:
    """The issue and its web edition as this list's archive shows it. A campaign for several lists was rendered
    with its first list's sign-up link; in another list's archive the link is to that list."""
    found = store.archive.issue(mailing_list.id, slug)
    if found is None or found[0].list_id in (0, mailing_list.id):
        return found
    issue, html = found
    try:
        first = store.lists.by_id(issue.list_id).name
    except NotFoundError:  # that list is gone; its link was already a dead end
        return found
    return issue, html.replace(f'/s/{first}"', f'/s/{mailing_list.name}"')


def words(mailing_list: MailingList) -> dict[str, str]:
    return TEXT.get(mailing_list.lang, TEXT["en"])


def index_page(
    mailing_list: MailingList,
    issues: list[ArchivedIssue],
    base_url: str,
    theme: Theme,
    templates: Path | None,
    suffix: str = "",
) -> str:
    """The archive's index page; each issue links to `{slug}{suffix}` (".html" for static files)."""
    said = words(mailing_list)
    title = mailing_list.title or mailing_list.name
    return render_page(
        "archive.html.j2",
        {
            "lang": mailing_list.lang,
            "list_title": title,
            "heading": said["archive_heading"].format(title=title),
            "intro": said["archive_intro"].format(count=len(issues)) if issues else said["archive_empty"],
            "issues": [
                {
                    "href": f"{issue.slug}{suffix}",
                    "subject": issue.subject,
                    "issue_number": issue.issue_number,
                    "date": issue.date or issue.sent[:10],
                    "preheader": issue.preheader,
                }
                for issue in issues
            ],
            "feed": {"href": "feed.xml", "text": said["archive_feed"]},
            "signup": {"href": signup_url(base_url, mailing_list), "text": said["archive_signup"].format(title=title)},
            "theme": theme,
        },
        templates,
    )


def feed(store: Store, mailing_list: MailingList, issues: list[ArchivedIssue], url: str, suffix: str = "") -> bytes:
    """The Atom feed of the newest FEED_ENTRIES issues, each with its web edition's body as content; `url` is the
    archive's public address (ending in /)."""
    entries = []
    for issue in issues[:FEED_ENTRIES]:
        found = edition_of(store, mailing_list, issue.slug)
        body = ""
        if found is not None:
            html = edition_html(found[1], f"{url}{issue.slug}", edition_images(store, issue.campaign_id))
            match = _BODY.search(html)
            body = (match.group(1) if match else html).strip()
        title = " ".join(filter(None, (issue.subject, issue.issue_number and f"({issue.issue_number})")))
        entries.append(FeedEntry(title, f"{url}{issue.slug}{suffix}", issue.sent, issue.preheader, body))
    title = mailing_list.title or mailing_list.name
    info = FeedInfo(title, f"{url}feed.xml", url, mailing_list.lang, title)
    return atom_feed(info, entries, mailing_list.created or "1970-01-01")


def public_list(store: Store, name: str) -> MailingList:
    """The list whose archive is asked for; NotFoundError unless it exists and its archive is on."""
    mailing_list = store.lists.get(name)
    if not mailing_list.archive:
        raise NotFoundError(
            f"list {name!r} has no public archive (turn it on: mailer lists update {name} --archive on)"
        )
    return mailing_list


def build_static(store: Store, config: Config, list_name: str, out_dir: Path, url: str = "") -> list[Path]:
    """Write the archive of a list as files: index.html, SLUG.html (with SLUG/ holding its images) and feed.xml.
    `url` is where the folder will be served (for the feed's links); by default the archive of `mailer serve`.
    Only inside `out_dir`: a symbolic link given as the folder, or planted in it, is never written through."""
    mailing_list = public_list(store, list_name)
    url = (url or archive_url(config.base_url, mailing_list)).rstrip("/") + "/"
    issues = store.archive.issues(mailing_list.id)
    theme = config.theme_for(mailing_list.name)
    files: dict[Path, bytes] = {
        out_dir / "index.html": index_page(
            mailing_list, issues, config.base_url, theme, config.templates, ".html"
        ).encode(),
        out_dir / "feed.xml": feed(store, mailing_list, issues, url, ".html"),
    }
    for issue in store.archive.pages(mailing_list.id):  # an issue sent again too: its mail links to its own page
        found = edition_of(store, mailing_list, issue.slug)
        if found is None:
            continue
        images = edition_images(store, issue.campaign_id)
        files[out_dir / f"{issue.slug}.html"] = edition_html(found[1], issue.slug, images).encode()
        for image in images:
            files[out_dir / issue.slug / image.name] = image.data
    if out_dir.is_symlink():
        raise MailerError(f"cannot write the archive to {out_dir}: it is a symbolic link; give the folder itself")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        root = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for path, data in files.items():
                _write_inside(root, path.relative_to(out_dir).parts, data)
        finally:
            os.close(root)
    except OSError as exc:
        where = f" ({exc.filename})" if isinstance(exc.filename, str) else ""
        raise MailerError(f"cannot write the archive to {out_dir}: {exc.strerror or exc}{where}") from None
    return sorted(files)


def _write_inside(root: int, parts: tuple[str, ...], data: bytes) -> None:
    """Write `data` at `parts` below the folder open as `root`, never through a link planted there: each folder is
    opened with O_NOFOLLOW, and the file is written under a new name and renamed over the old entry, which replaces a
    link itself rather than the file it points at (outside the folder, perhaps)."""
    folder = root
    try:
        for name in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=folder)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            if folder != root:
                os.close(folder)
            folder = inner
        temporary = f".{parts[-1]}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(temporary, parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        if folder != root:
            os.close(folder)
