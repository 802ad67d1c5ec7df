"""The ops console in a real headless Chromium (Debian's, through Playwright): sign in, watch a real send (to the
capture SMTP server on 127.0.0.1) progress without a reload, pause it and see sending stop, resume it to the end,
find a person and lift their suppression. Screenshots land in tests/artifacts/ for a person to look at."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailer.capture import CaptureServer
from mailer.config import Config
from mailer.engine import SendOptions
from mailer.models import CampaignState, Subscriber, SuppressionReason
from mailer.send import send_issue
from mailer.smtp import relays
from mailer.store import Store
from mailer.web import create_app
from tests.conftest import SAMPLE_ISSUE, LiveWeb, web_config
from tests.test_browser import browser, shot  # noqa: F401  (the module's Chromium fixture; skips without it)

PASSWORD = "open sesame, ops"
DOMAINS = ("qq.com", "163.com", "gmail.com", "example.org")


def wait_until(condition: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def console(config: Config, store: Store, smtp_server: CaptureServer) -> Iterator[tuple[str, Config]]:
    people = [Subscriber(email=f"reader{i}@{DOMAINS[i % len(DOMAINS)]}", name=f"读者{i}") for i in range(48)]
    store.subscribers.upsert(store.lists.get("bulletin").id, people, "import")
    holder: dict[str, Config] = {}

    def make(url: str) -> object:
        holder["config"] = web_config(config, smtp_server, url).with_overrides(ops_password=PASSWORD)
        return create_app(holder["config"])

    with LiveWeb(make) as live:
        yield live.url, holder["config"]


def _send_in_background(config: Config) -> threading.Thread:
    def run() -> None:
        with Store.open(config.db_path) as own:
            options = SendOptions(concurrency=1, rate=6)  # slow enough to watch, pause and resume
            asyncio.run(send_issue(own, config, SAMPLE_ISSUE, "bulletin", options, relays(config)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_watch_pause_resume_and_help_a_person_in_the_browser(
    browser: object,  # noqa: F811
    console: tuple[str, Config],
    store: Store,
    smtp_server: CaptureServer,
) -> None:
    url, config = console
    store.suppressions.suppress_address("reader5@163.com", SuppressionReason.BOUNCED, "campaign 0: 550 5.1.1 unknown")
    sender = _send_in_background(config)
    wait_until(lambda: bool(store.conn.execute("SELECT 1 FROM campaigns").fetchone()), what="the campaign")
    campaign_id = store.conn.execute("SELECT id FROM campaigns").fetchone()[0]

    def sent() -> int:
        return store.deliveries.counts(campaign_id).get("sent", 0)

    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(f"{url}/ops/?lang=en")
    assert page.url.startswith(f"{url}/ops/login")
    page.get_by_label("User").fill("ops")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/ops/?lang=en")  # back where the sign-in form was asked for
    row = page.locator(f'tr[data-campaign="{campaign_id}"]')
    assert row.locator('[data-field="state"]').inner_text() == "sending"
    # Live progress: the counts under the bar change while the page stays the same (no reload).
    page.evaluate("window.__same_page = true")
    first = row.locator('[data-field="counts"]').inner_text()
    wait_until(lambda: row.locator('[data-field="counts"]').inner_text() != first, what="a live update")
    assert page.evaluate("window.__same_page") is True
    wait_until(lambda: sent() >= 8, what="some sent")
    shot(page, "ops-campaigns.png")

    page.locator(f'tr[data-campaign="{campaign_id}"] a').first.click()
    page.wait_for_url(f"{url}/ops/campaigns/{campaign_id}")
    shown = page.locator('[data-count="sent"]')
    before = int(shown.inner_text())
    wait_until(lambda: int(shown.inner_text()) > before, what="the campaign page's live count")
    page.get_by_role("button", name="Pause").click()
    page.wait_for_selector('[data-field="state"]:text("paused")')
    assert store.campaigns.state(campaign_id) is CampaignState.PAUSED
    assert "paused: its sender stops taking recipients" in page.locator(".note").inner_text()
    # Sending stops: what was in flight ends, and then nothing more reaches the SMTP server while it is paused.
    wait_until(lambda: store.deliveries.counts(campaign_id).get("sending", 0) == 0, what="in-flight to end")
    held, arrived = sent(), len(smtp_server.received)
    time.sleep(1.5)
    assert (sent(), len(smtp_server.received)) == (held, arrived)
    assert held < 48 - 1
    page.reload()
    assert int(page.locator('[data-count="sent"]').inner_text()) == held
    shot(page, "ops-campaign-paused.png")

    page.get_by_role("button", name="Resume").click()
    page.wait_for_selector('[data-field="state"]:text("sending")')
    wait_until(lambda: sent() > held, what="sending again")
    sender.join(timeout=60)
    assert not sender.is_alive()
    assert sent() == 47 and len(smtp_server.received) == 47  # everyone but the suppressed address, once each
    page.wait_for_selector('[data-field="state"]:text("finished")', timeout=10000)  # the poll reloads on a change
    assert [a.action for a in store.audit.of_campaign(campaign_id)] == ["resume", "pause"]
    shot(page, "ops-campaign.png")

    page.get_by_role("searchbox").fill("reader5@163.com")
    page.get_by_role("button", name="Find").click()
    page.wait_for_url(f"{url}/ops/people?q=reader5%40163.com")
    assert "550 5.1.1 unknown" in page.content()
    page.get_by_role("button", name="Lift suppression").click()
    page.wait_for_selector(".note")
    assert "suppression of reader5@163.com lifted" in page.locator(".note").inner_text()
    assert not store.suppressions.is_suppressed("reader5@163.com")
    page.get_by_role("searchbox").fill("reader4")  # a prefix: reader4@, reader40@ ... reader47@
    page.get_by_role("button", name="Find").click()
    page.wait_for_selector("text=reader4@qq.com")
    page.get_by_role("link", name="reader4@qq.com", exact=True).click()
    page.wait_for_selector("ol.events li")
    events = page.locator("ol.events").first.inner_text()
    assert "sending #1" in events and "sent #1 250" in events
    shot(page, "ops-person.png")
    page.close()
    assert Path(shot.__code__.co_filename).exists()
