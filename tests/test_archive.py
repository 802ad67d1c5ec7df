"""The web edition of each issue ("view in browser"), a list's public archive and its Atom feed, on `mailer serve`
(httpx against uvicorn on 127.0.0.1) and as files (`mailer archive build`); issues sent for real through the
aiosmtpd capture server into a real SQLite file."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import feedparser
import httpx
import pytest

from mailer.capture import CaptureServer
from mailer.config import Config
from mailer.store import Store
from mailer.subscriptions import import_csv
from mailer.tokens import TokenKind, make_token
from mailer.web import create_app
from tests.conftest import LiveWeb, send_issue, web_config, write_issue

VIEW_LINK = re.compile(r"https?://[^\s\"'<>]+/a/bulletin/[^\s\"'<>]+")
SECRET_CITY = "滨江区机密街7号"  # a subscriber's own attribute: in their mail, never on a public page
BODY = """{{ subscriber.name }}，本期送到 {{ subscriber.city or "各地" }}。

## 专题

联系人邮箱：{{ subscriber.email }}；退订：{{ unsubscribe_url }}
"""


@dataclass
class Archive:
    url: str
    config: Config
    store: Store
    smtp: CaptureServer
    tmp_path: Path
    run_cli: Any

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=10)

    def send(self, name: str, subject: str, *extra: str, **meta: str) -> Path:
        issue = write_issue(self.tmp_path, name, subject, BODY, **meta)
        send_issue(self.run_cli, issue, "bulletin", self.smtp, self.url, *extra)
        return issue

    def mail_to(self, email: str, subject_part: str = "") -> Any:
        for captured in reversed(self.smtp.received):
            message = BytesParser(policy=policy.default).parsebytes(captured.data)
            if email in captured.rcpt_tos and subject_part in str(message["Subject"]):
                return message
        raise AssertionError(f"no mail to {email}")


@pytest.fixture
def archive(config: Config, store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli) -> Iterator[Archive]:  # type: ignore[no-untyped-def]
    csv = tmp_path / "people.csv"
    csv.write_text(f"email,name,city\nzhang.wei@example.org,张伟,{SECRET_CITY}\nann.lee@example.org,Ann Lee,\n")
    import_csv(store, "bulletin", csv)
    holder: dict[str, Any] = {}

    def make(url: str) -> object:
        holder["config"] = web_config(config, smtp_server, url)
        return create_app(holder["config"])

    with LiveWeb(make) as live:
        yield Archive(live.url, holder["config"], store, smtp_server, tmp_path, run_cli)


def view_link(message: Any) -> str:
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    [in_html] = set(VIEW_LINK.findall(html))
    [in_text] = set(VIEW_LINK.findall(text))
    assert in_html.replace("&amp;", "&") == in_text
    return in_text


def personal_data(store: Store, config: Config) -> list[str]:
    """Every subscriber's name, address, attribute values and link tokens."""
    found: list[str] = []
    for sub_id, list_id, email, name, attrs in store.conn.execute(
        "SELECT id, list_id, email, name, attrs FROM subscribers"
    ):
        found += [email, email.split("@")[0], name, *(v for v in json.loads(attrs).values() if v)]
        found.append(make_token(config.secret, TokenKind.UNSUBSCRIBE, list_id, sub_id))
    return [value for value in found if value]


def assert_impersonal(text: str, store: Store, config: Config) -> None:
    for value in personal_data(store, config):
        assert value not in text, value
    assert not re.search(r"/(u|p|c)/[a-z0-9]{16,}", text)  # no personal link of any kind
    assert "bounces+" not in text and "@@MAILER_" not in text


def test_view_in_browser_opens_the_issue_for_a_neutral_reader(archive: Archive) -> None:
    archive.send("n1", "第1期")
    message = archive.mail_to("zhang.wei@example.org")
    assert SECRET_CITY in message.get_body(("html",)).get_content()  # the mail itself is personal
    link = view_link(message)
    assert re.fullmatch(rf"{archive.url}/a/bulletin/n1\?k=[a-z0-9]+", link)
    assert view_link(archive.mail_to("ann.lee@example.org")) == link  # one link per issue, not per reader
    with archive.client() as http:
        page = http.get(link.removeprefix(archive.url))
        without_key = http.get("/a/bulletin/n1")
        wrong_key = http.get("/a/bulletin/n1?k=aaaaaaaaaaaaaaaa")
        index = http.get("/a/bulletin/")
        feed = http.get("/a/bulletin/feed.xml")
    assert page.status_code == 200, page.text
    assert "各地" in page.text and "您好" in page.text  # the layout's neutral defaults
    assert f'href="{archive.url}/s/bulletin"' in page.text  # the list's sign-up link
    assert_impersonal(page.text, archive.store, archive.config)
    assert page.headers["x-robots-tag"] == "noindex"  # the archive is not public: for mail readers only
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # the list's archive is off: nothing is listed, and an issue needs its mail's key
    assert [r.status_code for r in (without_key, wrong_key, index, feed)] == [404, 404, 404, 404]


def test_the_public_archive_lists_issues_newest_first_and_feeds_them(archive: Archive) -> None:
    assert archive.run_cli("lists", "update", "bulletin", "--archive", "on").returncode == 0
    archive.send("n1", "知识产权运营简报 第1期", issue="第1期", date="2026年10月")
    archive.send("n2", "知识产权运营简报 第2期", issue="第2期", date="2026年11月", preheader="跨区域协作")
    archive.send("n3", "只给测试", "--test", "editor@example.org")
    archive.send("n4", "后来取消的一期")
    campaigns = archive.run_cli("campaigns", "ls", "--json")
    cancelled = next(c for c in json.loads(campaigns.stdout) if c["issue"] == "n4")
    assert archive.run_cli("campaigns", "cancel", str(cancelled["id"])).returncode == 0
    with archive.client() as http:
        index = http.get("/a/bulletin/")
        feed = http.get("/a/bulletin/feed.xml")
        page = http.get("/a/bulletin/n2")
        slashless = http.get("/a/bulletin")
        test_send = http.get("/a/bulletin/n3")
        gone = http.get("/a/bulletin/n4")
    assert index.status_code == 200 and 'lang="zh-CN"' in index.text
    hrefs = re.findall(r'<li><a href="([^"]+)">', index.text)
    assert hrefs == ["n2", "n1"]  # newest first; no test send, no cancelled campaign
    assert "2026年11月 · 第2期" in index.text and "2026年10月 · 第1期" in index.text and "跨区域协作" in index.text
    assert "只给测试" not in index.text and "后来取消" not in index.text
    assert test_send.status_code == gone.status_code == 404
    assert slashless.status_code == 308 and slashless.headers["location"] == "bulletin/"
    assert page.status_code == 200 and "x-robots-tag" not in page.headers and 'href="./"' in page.text
    assert feed.headers["content-type"].startswith("application/atom+xml")
    parsed = feedparser.parse(feed.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10" and parsed.feed.language == "zh"
    assert [e.link for e in parsed.entries] == [f"{archive.url}/a/bulletin/n2", f"{archive.url}/a/bulletin/n1"]
    assert parsed.entries[0].title == "知识产权运营简报 第2期 (第2期)" and parsed.entries[0].summary == "跨区域协作"
    assert "各地" in parsed.entries[0].content[0].value
    for text in (index.text, page.text, feed.text):
        assert_impersonal(text, archive.store, archive.config)


def test_archive_build_writes_the_same_pages_and_feed(archive: Archive) -> None:
    off = archive.run_cli("archive", "build", "bulletin", "-o", str(archive.tmp_path / "site"))
    assert off.returncode == 1 and off.stderr.startswith("error: list 'bulletin' has no public archive")
    assert len(off.stderr.strip().splitlines()) == 1 and not (archive.tmp_path / "site").exists()
    archive.run_cli("lists", "update", "bulletin", "--archive", "on")
    archive.send("n1", "第1期", issue="第1期")
    archive.send("n2", "第2期", issue="第2期")
    built = archive.run_cli(
        "archive", "build", "bulletin", "-o", str(archive.tmp_path / "site"), "--url", "https://static.example.org/b/"
    )
    assert built.returncode == 0, built.stderr
    site = archive.tmp_path / "site"
    assert sorted(p.name for p in site.iterdir()) == ["feed.xml", "index.html", "n1.html", "n2.html"]
    index = (site / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'<li><a href="([^"]+)">', index) == ["n2.html", "n1.html"]
    with archive.client() as http:
        served = http.get("/a/bulletin/n2").text
    assert (site / "n2.html").read_text(encoding="utf-8") == served
    parsed = feedparser.parse((site / "feed.xml").read_bytes())
    assert not parsed.bozo and [e.link for e in parsed.entries] == [
        "https://static.example.org/b/n2.html",
        "https://static.example.org/b/n1.html",
    ]
    for path in site.iterdir():
        assert_impersonal(path.read_text(encoding="utf-8"), archive.store, archive.config)


def test_an_issue_name_sent_twice_gets_its_own_page(archive: Archive) -> None:
    archive.run_cli("lists", "update", "bulletin", "--archive", "on")
    (archive.tmp_path / "nov").mkdir()
    (archive.tmp_path / "dec").mkdir()
    for month in ("nov", "dec"):
        issue = write_issue(archive.tmp_path / month, "issue", f"{month} issue", f"In {month}.\n")
        send_issue(archive.run_cli, issue, "bulletin", archive.smtp, archive.url)
    assert view_link(archive.mail_to("ann.lee@example.org", "dec")).split("?")[0].endswith("/a/bulletin/issue-2")
    with archive.client() as http:
        nov, dec = http.get("/a/bulletin/issue"), http.get("/a/bulletin/issue-2")
    assert "In nov." in nov.text and "In dec." in dec.text


def test_lists_update_says_what_it_set_and_refuses_other_words(archive: Archive) -> None:
    done = archive.run_cli("lists", "update", "bulletin", "--archive", "on", "--public", "on")
    assert done.returncode == 0 and "archive on, public on" in done.stdout
    bad = archive.run_cli("lists", "update", "bulletin", "--archive", "yes")
    assert bad.returncode == 2
    missing = archive.run_cli("lists", "update", "nosuch", "--archive", "on")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no list named 'nosuch'")
    flags = archive.store.lists.get("bulletin")
    assert flags.archive and flags.public


def test_embedded_images_travel_with_the_web_edition(archive: Archive) -> None:
    from tests.test_layouts import png

    archive.run_cli("lists", "update", "bulletin", "--archive", "on")
    (archive.tmp_path / "images").mkdir()
    (archive.tmp_path / "images" / "chart.png").write_bytes(png(40, 20))
    issue = write_issue(archive.tmp_path, "pics", "图片", "![图表](images/chart.png)\n", images="cid")
    send_issue(archive.run_cli, issue, "bulletin", archive.smtp, archive.url)
    with archive.client() as http:
        page = http.get("/a/bulletin/pics")
        [src] = re.findall(r'<img[^>]+src="([^"]+)"', page.text)
        image = http.get(f"/a/bulletin/{src}")
    assert src.startswith("pics/") and "cid:" not in page.text
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == (archive.tmp_path / "images" / "chart.png").read_bytes()


def test_pages_take_the_workspaces_layouts_and_theme(
    config: Config, store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    from mailer.models import Theme
    from mailer.render import builtin_layouts
    from mailer.subscriptions import add_subscriber

    (tmp_path / "mailer.toml").write_text('[theme]\naccent = "#7a1f5c"\n', encoding="utf-8")
    (tmp_path / "templates" / "web").mkdir(parents=True)
    css = dict(builtin_layouts())["web/page.css.j2"].decode()
    (tmp_path / "templates" / "web" / "page.css.j2").write_text("/* OUR STYLE */\n" + css, encoding="utf-8")
    add_subscriber(store, "bulletin", "ann.lee@example.org", "Ann Lee")
    store.lists.set_flags("bulletin", archive=True)

    def make(url: str) -> object:
        themed = web_config(config, smtp_server, url).with_overrides(
            theme=Theme(accent="#7a1f5c"), templates=tmp_path / "templates"
        )
        return create_app(themed)

    with LiveWeb(make) as live:
        send_issue(run_cli, write_issue(tmp_path, "n1", "第1期", "Hello.\n"), "bulletin", smtp_server, live.url)
        with httpx.Client(base_url=live.url, timeout=10) as http:
            index, edition, ask = http.get("/a/bulletin/"), http.get("/a/bulletin/n1"), http.get("/p/")
    for page in (index, ask):
        assert page.status_code == 200 and "/* OUR STYLE */" in page.text and "#7a1f5c" in page.text
    assert edition.status_code == 200 and "#7a1f5c" in edition.text  # the issue layout with [theme], as mailed


def test_archive_build_into_a_file_is_one_error_line(archive: Archive) -> None:
    archive.run_cli("lists", "update", "bulletin", "--archive", "on")
    archive.send("n1", "第1期")
    blocker = archive.tmp_path / "site"
    blocker.write_text("not a folder\n", encoding="utf-8")
    result = archive.run_cli("archive", "build", "bulletin", "-o", str(blocker))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write the archive to {blocker}: "), line


def test_a_control_character_in_an_issue_keeps_the_feed_well_formed(archive: Archive) -> None:
    """A form feed pasted from Word (in the subject and the body): XML 1.0 cannot carry it even escaped, so the feed
    drops it rather than become a document no reader parses; served and built alike."""
    archive.run_cli("lists", "update", "bulletin", "--archive", "on")
    issue = write_issue(archive.tmp_path, "ff", "第1\\f期", "first page\x0csecond page\n")
    send_issue(archive.run_cli, issue, "bulletin", archive.smtp, archive.url)
    built = archive.run_cli("archive", "build", "bulletin", "-o", str(archive.tmp_path / "site"))
    assert built.returncode == 0, built.stderr
    with archive.client() as http:
        served = http.get("/a/bulletin/feed.xml").content
    for document in (served, (archive.tmp_path / "site" / "feed.xml").read_bytes()):
        assert b"\x0c" not in document
        ET.fromstring(document)  # expat: raises on a character XML forbids
        parsed = feedparser.parse(document)
        assert not parsed.bozo, parsed.get("bozo_exception")
        [entry] = parsed.entries
        assert entry.title == "第1期" and "first pagesecond page" in entry.content[0].value


def test_archive_build_never_writes_through_a_link_planted_in_the_folder(archive: Archive) -> None:
    """The trial's links: a page and the feed pointing outside the folder, an issue's image folder too; and the
    folder itself given as a link. Links are replaced, what they point at is left alone."""
    from tests.test_layouts import png

    archive.run_cli("lists", "update", "bulletin", "--archive", "on")
    (archive.tmp_path / "images").mkdir()
    (archive.tmp_path / "images" / "chart.png").write_bytes(png(40, 20))
    issue = write_issue(archive.tmp_path, "pics", "图片", "![图表](images/chart.png)\n", images="cid")
    send_issue(archive.run_cli, issue, "bulletin", archive.smtp, archive.url)
    outside = archive.tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("KEEP\n", encoding="utf-8")
    site = archive.tmp_path / "site"
    site.mkdir()
    (site / "pics.html").symlink_to(victim)
    (site / "feed.xml").symlink_to(outside / "created-outside.xml")

    built = archive.run_cli("archive", "build", "bulletin", "-o", str(site))

    assert built.returncode == 0, built.stderr
    assert victim.read_text(encoding="utf-8") == "KEEP\n" and sorted(p.name for p in outside.iterdir()) == [
        "victim.txt"
    ]
    for name in ("pics.html", "feed.xml"):
        assert not (site / name).is_symlink() and (site / name).stat().st_size > 100
    assert sorted(p.name for p in site.iterdir()) == ["feed.xml", "index.html", "pics", "pics.html"]

    shutil.rmtree(site / "pics")
    (site / "pics").symlink_to(outside, target_is_directory=True)  # the issue's images would land outside
    linked_images = archive.run_cli("archive", "build", "bulletin", "-o", str(site))
    assert linked_images.returncode == 1 and linked_images.stderr.startswith(
        f"error: cannot write the archive to {site}"
    )
    assert len(linked_images.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]

    link = archive.tmp_path / "site-link"
    link.symlink_to(outside, target_is_directory=True)
    as_link = archive.run_cli("archive", "build", "bulletin", "-o", str(link))
    assert as_link.returncode == 1 and "symbolic link" in as_link.stderr
    assert len(as_link.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


def test_an_issue_sent_again_to_part_of_the_list_is_archived_once(archive: Archive) -> None:
    """The trial sent first-issue to the list, then to a latecomer with --where: the archive showed it twice."""
    archive.run_cli("lists", "update", "bulletin", "--archive", "on")
    archive.send("n1", "第1期", issue="第1期")
    archive.run_cli("subs", "add", "late@example.org", "--list", "bulletin")
    archive.send("n1", "第1期", "--where", 'email = "late@example.org"', issue="第1期")
    late_link = view_link(archive.mail_to("late@example.org"))
    with archive.client() as http:
        index = http.get("/a/bulletin/").text
        feed = feedparser.parse(http.get("/a/bulletin/feed.xml").content)
        late_page = http.get(late_link.removeprefix(archive.url))
    assert re.findall(r'<li><a href="([^"]+)">', index) == ["n1"]
    assert [e.link for e in feed.entries] == [f"{archive.url}/a/bulletin/n1"]
    assert late_page.status_code == 200  # the latecomer's own link still opens its page
    built = archive.run_cli("archive", "build", "bulletin", "-o", str(archive.tmp_path / "site"))
    assert built.returncode == 0, built.stderr
    site = archive.tmp_path / "site"
    assert re.findall(r'<li><a href="([^"]+)">', (site / "index.html").read_text(encoding="utf-8")) == ["n1.html"]
    assert len(feedparser.parse((site / "feed.xml").read_bytes()).entries) == 1
    assert (site / f"{late_link.split('?')[0].rsplit('/', 1)[1]}.html").is_file()


def test_raw_script_in_the_markdown_never_reaches_the_archive_or_the_feed(archive: Archive) -> None:
    """The web edition is made safe once, when its campaign is created; the mail keeps what the editor wrote."""
    archive.run_cli("lists", "update", "bulletin", "--archive", "on")
    body = (
        "正文<script>alert(1)</script>\n\n"
        '<img src="https://news.example.org/x.png" onerror="alert(2)" alt="图">\n\n'
        '<a href="javascript:alert(3)">点我</a> <a href="https://news.example.org/" onclick="alert(4)">主页</a>\n'
    )
    issue = write_issue(archive.tmp_path, "js", "第1期", body)
    send_issue(archive.run_cli, issue, "bulletin", archive.smtp, archive.url)
    built = archive.run_cli("archive", "build", "bulletin", "-o", str(archive.tmp_path / "site"))
    assert built.returncode == 0, built.stderr
    with archive.client() as http:
        page, feed = http.get("/a/bulletin/js").text, http.get("/a/bulletin/feed.xml").text
    site = archive.tmp_path / "site"
    documents = [page, feed, *(p.read_text(encoding="utf-8") for p in (site / "js.html", site / "feed.xml"))]
    for document in documents:
        for word in ("<script", "&lt;script", "alert(", "onerror", "onclick", "javascript:"):
            assert word not in document, word
        assert "正文" in document and "主页" in document and "https://news.example.org/x.png" in document
    mailed = archive.mail_to("ann.lee@example.org").get_body(("html",)).get_content()
    assert "<script>alert(1)</script>" in mailed  # the mail is the editor's: mail clients strip scripts themselves


def test_a_reader_of_the_second_list_of_a_campaign_views_it_in_their_own_lists_archive(archive: Archive) -> None:
    from mailer.subscriptions import create_list

    create_list(archive.store, "extra", "附刊", "附刊 <extra@example.org>", "", "zh")
    csv = archive.tmp_path / "extra.csv"
    csv.write_text("email,name\nonly.extra@example.org,Extra\n", encoding="utf-8")
    import_csv(archive.store, "extra", csv)
    archive.send("both", "第1期", "--list", "extra")
    to_extra = archive.mail_to("only.extra@example.org")
    html = to_extra.get_body(("html",)).get_content()
    [link] = set(re.findall(r"https?://[^\s\"'<>]+/a/extra/[^\s\"'<>]+", html))
    assert "/a/bulletin/" not in html and "/a/bulletin/" not in to_extra.get_body(("plain",)).get_content()
    assert view_link(archive.mail_to("ann.lee@example.org")).startswith(f"{archive.url}/a/bulletin/both?k=")
    with archive.client() as http:
        page = http.get(link.replace("&amp;", "&").removeprefix(archive.url))
        not_public = http.get("/a/extra/both")
        archive.run_cli("lists", "update", "extra", "--archive", "on")
        index = http.get("/a/extra/").text
    assert page.status_code == 200 and "第1期" in page.text, page.status_code
    assert f'href="{archive.url}/s/extra"' in page.text and "/s/bulletin" not in page.text  # sign up to their list
    assert not_public.status_code == 404  # a private archive needs the mail's key, whichever list it is
    assert re.findall(r'<li><a href="([^"]+)">', index) == ["both"]  # the campaign is in each list's archive
