"""The ops console against odd input (issue 14's trial): query values int() refuses are ignored (never a 500),
bidi controls in a relay's reply reach neither a page nor the CSV export, and an action on a campaign that does
not exist comes back with its note. Real HTTP (httpx against uvicorn) and real SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailer.config import Config
from mailer.store import Store
from tests.test_ops_web import PASSWORD, Console, _serve, csrf_of


@pytest.fixture
def console(config: Config, store: Store) -> Iterator[Console]:
    yield from _serve(config, store, ops_password=PASSWORD)


ODD = ["%C2%B2", "%E2%91%A0", "9" * 5000, "-5", "0", "", "12abc"]


@pytest.mark.parametrize("value", ODD)
def test_odd_before_and_limit_values_are_ignored(console: Console, value: str) -> None:
    with console.signed_in() as client:
        page = client.get(f"/ops/campaigns/{console.campaign}?before={value}")
        assert page.status_code == 200 and "?before=" in page.text  # the first page, with a link to the next
        for query in (f"before={value}", f"limit={value}", f"before={value}&limit={value}"):
            got = client.get(f"/ops/api/campaigns/{console.campaign}/deliveries?{query}")
            assert got.status_code == 200 and got.headers["content-type"] == "application/json"
            assert len(got.json()["deliveries"]) == 100  # the default page, from the newest


BIDI = "\u202e\u2066\u2067\u2068\u2069\u202a\u202b\u202c\u202d\u200e\u200f\u061c"


def test_bidi_controls_of_a_reply_reach_no_page_and_no_export(console: Console) -> None:
    store = console.store
    with store.transaction():
        store.conn.execute(
            "UPDATE deliveries SET smtp_reply = ? WHERE id = (SELECT MAX(id) FROM deliveries WHERE campaign_id = ?)",
            (f"5.7.1 spam{BIDI}gpj.exe", console.campaign),
        )
    with console.signed_in() as client:
        page = client.get(f"/ops/campaigns/{console.campaign}").text
        export = client.get(f"/ops/api/campaigns/{console.campaign}/deliveries?format=csv").text
        for text in (page, export):
            assert "5.7.1 spamgpj.exe" in text
            assert not any(ch in text for ch in BIDI)


def test_an_action_on_a_campaign_that_does_not_exist_shows_its_note(console: Console) -> None:
    with console.signed_in() as client:
        page = client.get("/ops/")
        done = client.post("/ops/campaigns/99999/pause", data={"csrf": csrf_of(page)})
        assert done.status_code == 303 and done.headers["location"] == "/ops/"
        shown = client.get("/ops/")
        assert shown.status_code == 200 and "99999" in shown.text
