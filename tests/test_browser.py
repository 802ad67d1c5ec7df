"""The subscriber pages in a real headless Chromium (Debian's chromium, driven by Playwright; never a downloaded
browser): links taken from an actually sent message, clicked through, the database checked after each click.
Screenshots of the zh and en pages land in tests/artifacts/ (not committed) for a person to look at."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from mailer.capture import Captured, CaptureServer
from mailer.config import Config
from mailer.engine import SendOptions
from mailer.models import Subscriber, SubscriberStatus
from mailer.preview import CHROMIUM_ARGS
from mailer.send import send_issue
from mailer.smtp import relays
from mailer.store import Store
from mailer.subscriptions import create_list
from mailer.web import create_app
from tests.conftest import SAMPLE_ISSUE, LiveWeb, web_config

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run must install Debian's chromium")
    pytest.skip("Debian chromium is not installed (bash scripts/setup --test installs it)", allow_module_level=True)

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # The flags `mailer preview` uses (no sandbox: CI may run as root, or in a container without user namespaces).
    args = [*CHROMIUM_ARGS, "--disable-quic"]
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield chromium
        chromium.close()


@pytest.fixture
def site(config: Config, store: Store, smtp_server: CaptureServer) -> Iterator[Config]:
    create_list(store, "weekly", "Weekly Notes", "Notes <notes@example.org>", "", "en")
    holder: dict[str, Config] = {}

    def make(url: str) -> object:
        holder["config"] = web_config(config, smtp_server, url)
        return create_app(holder["config"])

    with LiveWeb(make):
        yield holder["config"]


def send_now(store: Store, config: Config, issue: Path, list_name: str) -> None:
    """Send in a thread of its own: Playwright's sync API keeps an event loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, send_issue(store, config, issue, list_name, SendOptions(), relays(config))).result()


def shot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    assert path.stat().st_size > 5000  # a blank page compresses to almost nothing
    return path


def html_link(data: bytes, pattern: str) -> str:
    msg = message_from_bytes(data, policy=policy.default)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    match = re.search(pattern, html)
    assert match, pattern
    return match.group(1).replace("&amp;", "&")


def text_link(data: bytes, pattern: str) -> str:
    msg = message_from_bytes(data, policy=policy.default)
    match = re.search(pattern, msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert match, pattern
    return match.group(0)


def test_unsubscribe_from_the_link_in_a_sent_issue(
    browser: object, site: Config, store: Store, smtp_server: CaptureServer
) -> None:
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email="zhang.wei@example.org", name="张伟")], "test")
    send_now(store, site, SAMPLE_ISSUE, "bulletin")
    [mail] = smtp_server.received
    link = html_link(mail.data, r'<a class="unsubscribe"[^>]*href="([^"]+)"')
    assert link.startswith(site.base_url + "/u/")

    page = browser.new_page(viewport={"width": 800, "height": 600}, locale="zh-CN")  # type: ignore[attr-defined]
    page.goto(link)
    assert page.locator("h1").inner_text() == "退订「知识产权运营简报」"
    assert "zh***@example.org" in page.content()
    shot(page, "unsubscribe-zh.png")
    assert store.subscribers.get(list_id, "zhang.wei@example.org").status == SubscriberStatus.ACTIVE

    page.get_by_role("button", name="确认退订").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "已退订"
    shot(page, "unsubscribed-zh.png")
    sub = store.subscribers.get(list_id, "zhang.wei@example.org")
    assert sub.status == SubscriberStatus.UNSUBSCRIBED
    assert store.subscribers.last_unsubscribe(sub.id).source == "page"
    page.close()


def test_english_unsubscribe_page(
    browser: object, site: Config, store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    list_id = store.lists.get("weekly").id
    store.subscribers.upsert(list_id, [Subscriber(email="ann@example.org", name="Ann")], "test")
    issue = tmp_path / "notes.md"
    issue.write_text("---\nsubject: Weekly Notes 1\n---\n\nHello.\n\n## News\n\nSomething new.\n", encoding="utf-8")
    send_now(store, site, issue, "weekly")
    link = html_link(smtp_server.received[0].data, r'<a class="unsubscribe"[^>]*href="([^"]+)"')
    page = browser.new_page(viewport={"width": 390, "height": 700})  # type: ignore[attr-defined]
    page.goto(link)
    assert page.locator("h1").inner_text() == "Unsubscribe from Weekly Notes"
    shot(page, "unsubscribe-en-mobile.png")
    page.get_by_role("button", name="Unsubscribe").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "You are unsubscribed"
    assert store.subscribers.get(list_id, "ann@example.org").status == SubscriberStatus.UNSUBSCRIBED
    page.close()


def wait_for_mail(server: CaptureServer, count: int) -> list[Captured]:
    """The relay's messages once `count` have arrived (the page does not wait for its confirmation mail)."""
    deadline = time.monotonic() + 10
    while len(server.received) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.received


def test_sign_up_and_confirm_in_the_browser(
    browser: object, site: Config, store: Store, smtp_server: CaptureServer
) -> None:
    list_id = store.lists.get("bulletin").id
    page = browser.new_page(viewport={"width": 800, "height": 700}, locale="zh-CN")  # type: ignore[attr-defined]
    page.goto(f"{site.base_url}/s/bulletin")
    assert page.locator("h1").inner_text() == "订阅「知识产权运营简报」"
    trap = page.locator("#website").bounding_box()  # the honeypot is in the form, but off-screen for people
    assert trap is not None and trap["x"] + trap["width"] < 0
    page.get_by_label("邮箱").fill("li.na@example.org")
    page.get_by_label("称呼（可选）").fill("李娜")
    shot(page, "signup-zh.png")
    page.get_by_role("button", name="订阅").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "请查收确认邮件"
    assert store.subscribers.get(list_id, "li.na@example.org").status == SubscriberStatus.PENDING

    [mail] = wait_for_mail(smtp_server, 1)  # sent in the background, after the page answered
    link = text_link(mail.data, r"https?://\S+/c/[a-z0-9]+")
    page.goto(link)
    assert page.locator("h1").inner_text() == "确认订阅「知识产权运营简报」"
    shot(page, "confirm-zh.png")
    assert store.subscribers.get(list_id, "li.na@example.org").status == SubscriberStatus.PENDING
    page.get_by_role("button", name="确认订阅").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "订阅成功"
    shot(page, "confirmed-zh.png")
    assert store.subscribers.get(list_id, "li.na@example.org").status == SubscriberStatus.ACTIVE
    page.close()


def test_cjk_text_is_drawn_with_a_cjk_font(browser: object, site: Config) -> None:
    """Tofu boxes would still be 'text'; measure that CJK glyphs have their full width instead."""
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(f"{site.base_url}/s/bulletin")
    width = page.evaluate("""() => {
        const span = document.createElement('span');
        span.style.fontSize = '20px';
        span.textContent = '知识产权运营简报';
        document.body.appendChild(span);
        return span.getBoundingClientRect().width;
    }""")
    assert 150 <= width <= 170, width  # 8 full-width glyphs at 20 px
    page.close()
