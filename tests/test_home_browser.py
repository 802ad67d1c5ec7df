"""The subscriber's own pages and the archive in a real headless Chromium (Debian's, through Playwright): the
preferences link taken from an actually sent issue, lists and language switched there, and "view in browser"
opened at a phone's width and a desktop's. Screenshots land in tests/artifacts/ for a person to look at."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email import message_from_bytes, policy
from typing import Any

import pytest

from mailer.capture import CaptureServer
from mailer.config import Config
from mailer.models import Subscriber, SubscriberStatus
from mailer.store import Store
from mailer.subscriptions import create_list
from mailer.web import create_app
from tests.conftest import SAMPLE_ISSUE, LiveWeb, web_config
from tests.test_browser import browser, send_now, shot  # noqa: F401 (the browser fixture)


@pytest.fixture
def site(config: Config, store: Store, smtp_server: CaptureServer) -> Iterator[Config]:
    create_list(store, "weekly", "Weekly Notes", "Notes <notes@example.org>", "", "en")
    store.lists.set_flags("weekly", public=True)
    store.lists.set_flags("bulletin", archive=True)
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(
        list_id, [Subscriber(email="zhang.wei@example.org", name="张伟", attrs={"city": "杭州"})], "test"
    )
    holder: dict[str, Config] = {}

    def make(url: str) -> object:
        holder["config"] = web_config(config, smtp_server, url)
        return create_app(holder["config"])

    with LiveWeb(make):
        yield holder["config"]


def link_in(data: bytes, pattern: str) -> str:
    html = message_from_bytes(data, policy=policy.default).get_body(("html",)).get_content()  # type: ignore[union-attr]
    match = re.search(pattern, html)
    assert match, pattern
    return match.group(1).replace("&amp;", "&")


def csp_violations(page: Any) -> list[str]:
    found: list[str] = []
    page.on("console", lambda msg: found.append(msg.text) if "Content Security Policy" in msg.text else None)
    return found


def test_preferences_from_a_sent_issue_switch_lists_and_language(
    browser: Any,  # noqa: F811 (the fixture of test_browser)
    site: Config,
    store: Store,
    smtp_server: CaptureServer,
) -> None:
    send_now(store, site, SAMPLE_ISSUE, "bulletin")
    [mail] = smtp_server.received
    link = link_in(mail.data, r'<a href="([^"]+/p/[a-z0-9]+)"')
    assert link.startswith(site.base_url + "/p/")

    page = browser.new_page(viewport={"width": 800, "height": 700}, locale="zh-CN")
    violations = csp_violations(page)
    page.goto(link)
    assert page.locator("h1").inner_text() == "我的订阅"
    assert page.get_by_label("知识产权运营简报").is_checked()
    assert not page.get_by_label("Weekly Notes").is_checked()
    shot(page, "preferences-zh.png")
    page.get_by_label("知识产权运营简报").uncheck()
    page.get_by_label("Weekly Notes").check()
    page.get_by_label("称呼").fill("张老师")
    page.get_by_label("页面和通知的语言").select_option("en")
    page.get_by_role("button", name="保存设置").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "Your subscriptions"  # the language chosen
    assert page.get_by_label("Weekly Notes").is_checked() and not page.get_by_label("知识产权运营简报").is_checked()
    assert "Saved." in page.locator(".notice").inner_text()
    shot(page, "preferences-en-saved.png")
    bulletin = store.subscribers.get(store.lists.get("bulletin").id, "zhang.wei@example.org")
    weekly = store.subscribers.get(store.lists.get("weekly").id, "zhang.wei@example.org")
    assert (bulletin.status, weekly.status) == (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.ACTIVE)
    assert weekly.name == "张老师" and store.people.get("zhang.wei@example.org").lang == "en"

    phone = browser.new_page(viewport={"width": 390, "height": 800})
    phone.goto(page.url)  # the page under its new link, on a phone
    assert phone.locator("h1").inner_text() == "Your subscriptions"
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    shot(phone, "preferences-en-mobile.png")
    page.goto(link)  # the issue's link was used for a change: it has been replaced
    assert page.locator("h1").inner_text() in ("链接已过期", "This link has expired")
    phone.goto(f"{site.base_url}/p/")
    shot(phone, "send-me-my-link-mobile.png")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    assert violations == []
    page.close()
    phone.close()


@pytest.mark.parametrize(("width", "name"), [(1200, "desktop"), (390, "mobile")])
def test_view_in_browser_and_the_archive_at_both_widths(
    browser: Any,  # noqa: F811 (the fixture of test_browser)
    site: Config,
    store: Store,
    smtp_server: CaptureServer,
    width: int,
    name: str,
) -> None:
    send_now(store, site, SAMPLE_ISSUE, "bulletin")
    [mail] = smtp_server.received
    link = link_in(mail.data, r'<a href="([^"]+/a/bulletin/[^"]+)"')
    page = browser.new_page(viewport={"width": width, "height": 900}, locale="zh-CN")
    violations = csp_violations(page)
    page.goto(link)
    assert "知识产权运营简报" in page.locator("h1").inner_text()
    text = page.locator("body").inner_text()
    assert "张伟" not in text and "zhang.wei" not in text and "杭州" not in text
    assert "您好：" in text and "网页版" in text
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing wider than the screen
    shot(page, f"archive-issue-{name}.png")
    page.get_by_role("link", name="全部往期").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "「知识产权运营简报」往期"
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    shot(page, f"archive-index-{name}.png")
    page.locator(".issues a").first.click()
    page.wait_for_load_state()
    assert page.url.split("?")[0] == link.split("?")[0]
    assert violations == []
    page.close()
