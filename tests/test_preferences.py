"""A subscriber's own page, `/p/TOKEN`, and "send me my link", `/p/`: real HTTP (httpx against uvicorn on
127.0.0.1), real SQLite, the issue and the link mail through the aiosmtpd capture server."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailer.capture import CaptureServer
from mailer.clock import utcnow
from mailer.config import Config
from mailer.models import SubscriberStatus
from mailer.preferences import PREFERENCES_TTL
from mailer.store import Store
from mailer.subscriptions import SignupLimits, add_subscriber, create_list
from mailer.tokens import TokenKind, make_token
from mailer.web import create_app
from mailer.web.endpoints import WebApp
from tests.conftest import LiveWeb, dkim_signed_web, dkim_verifies, send_issue, web_config, write_issue

PREFS_LINK = re.compile(r"https?://[^\s\"'<>]+/p/[a-z0-9]+")


@dataclass
class Home:
    url: str
    config: Config
    store: Store
    smtp: CaptureServer
    clock: list[timedelta]  # how far the app's clock is ahead of the real one
    web: WebApp
    tmp_path: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=10, **kwargs)

    def settle(self) -> None:
        deadline = time.monotonic() + 10
        while self.web.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.web.pending == 0

    def subscriber(self, email: str, list_name: str = "bulletin") -> Any:
        return self.store.subscribers.get(self.store.lists.get(list_name).id, email)

    def token(self, email: str, list_name: str = "bulletin", age: timedelta = timedelta(0)) -> str:
        sub = self.subscriber(email, list_name)
        issued = int((utcnow() + self.clock[0] - age).timestamp())
        return make_token(self.config.secret, TokenKind.PREFERENCES, sub.list_id, sub.id, issued)

    def changes(self) -> tuple[Any, ...]:
        """Everything a preferences change could touch."""
        return tuple(
            self.store.conn.execute(sql).fetchall()
            for sql in (
                "SELECT id, list_id, email, name, status, confirmed FROM subscribers ORDER BY id",
                "SELECT * FROM unsubscribes",
                "SELECT * FROM joins",
                "SELECT * FROM people",
            )
        )


@pytest.fixture
def home(config: Config, store: Store, smtp_server: CaptureServer, tmp_path: Path) -> Iterator[Home]:
    create_list(store, "weekly", "Weekly Notes", "Notes <notes@example.org>", "", "en")
    create_list(store, "internal", "Staff only", "Staff <staff@example.org>", "", "zh")
    store.lists.set_flags("weekly", public=True)
    add_subscriber(store, "bulletin", "zhang.wei@example.org", "张伟")
    add_subscriber(store, "bulletin", "ann@example.org", "Ann")
    clock = [timedelta(0)]
    holder: dict[str, Any] = {}

    def make(url: str) -> object:
        holder["config"] = web_config(config, smtp_server, url)
        holder["app"] = create_app(holder["config"], SignupLimits(client_max=6), clock=lambda: utcnow() + clock[0])
        return holder["app"]

    with LiveWeb(make) as live:
        yield Home(live.url, holder["config"], store, smtp_server, clock, holder["app"].state.web, tmp_path)


def form_token(page: str) -> str:
    found = re.search(r'name="form_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def prefs_link_of(data: bytes) -> tuple[str, str]:
    """The preferences link in a captured message's HTML part and in its text part."""
    message = BytesParser(policy=policy.default).parsebytes(data)
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    [in_html] = set(PREFS_LINK.findall(html))
    [in_text] = set(PREFS_LINK.findall(text))
    return in_html, in_text


def test_every_issue_links_to_the_page_and_a_get_changes_nothing(home: Home, run_cli) -> None:  # type: ignore[no-untyped-def]
    issue = write_issue(home.tmp_path, "n1", "第1期", "Hello.\n\n## One\n\nText.\n")
    send_issue(run_cli, issue, "bulletin", home.smtp, home.url)
    mail = next(m for m in home.smtp.received if "zhang.wei@example.org" in m.rcpt_tos)
    in_html, in_text = prefs_link_of(mail.data)
    assert in_html == in_text and in_html.startswith(f"{home.url}/p/")
    before = home.changes()
    with home.client() as http:
        for _ in range(3):  # link scanners fetch links, several times
            page = http.get(in_html.removeprefix(home.url))
            assert page.status_code == 200
    assert home.changes() == before
    assert 'lang="zh-CN"' in page.text and "zh***@example.org" in page.text and "zhang.wei@" not in page.text
    assert re.search(r'value="bulletin" checked', page.text)  # on it
    assert re.search(r'value="weekly">', page.text)  # public: offered, not ticked
    assert "internal" not in page.text and "Staff only" not in page.text  # not public, not on it: not shown
    assert 'value="张伟"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "same-origin"


def _save(http: httpx.Client, token: str, **fields: Any) -> httpx.Response:
    page = http.get(f"/p/{token}")
    assert page.status_code == 200, page.text
    return http.post(f"/p/{token}", data={"form_token": form_token(page.text), "action": "save", **fields})


def test_saving_joins_leaves_renames_and_rotates_the_link(home: Home) -> None:
    token = home.token("zhang.wei@example.org")
    with home.client() as http:
        saved = _save(http, token, list=["weekly"], name="张 伟", lang="en")
        assert saved.status_code == 303
        new = saved.headers["location"]
        assert re.fullmatch(r"/p/[a-z0-9]+\?saved=1", new) and token not in new
        after = http.get(new)
        old = http.get(f"/p/{token}")
    assert after.status_code == 200 and 'lang="en"' in after.text and "Saved." in after.text
    assert re.search(r'value="weekly" checked', after.text) and not re.search(r'value="bulletin" checked', after.text)
    # the link used for the change no longer works: it says so and offers a new one
    assert old.status_code == 400 and 'href="/p/"' in old.text
    left = home.subscriber("zhang.wei@example.org")
    joined = home.subscriber("zhang.wei@example.org", "weekly")
    assert left.status == SubscriberStatus.UNSUBSCRIBED and joined.status == SubscriberStatus.ACTIVE
    assert joined.name == left.name == "张 伟"
    assert home.store.subscribers.last_unsubscribe(left.id).source == "preferences"  # type: ignore[union-attr]
    assert home.store.conn.execute("SELECT subscriber_id, source FROM joins").fetchall() == [(joined.id, "preferences")]
    (confirmed,) = home.store.conn.execute("SELECT confirmed FROM subscribers WHERE id = ?", (joined.id,)).fetchone()
    assert confirmed  # joined from here counts as confirmed: the link proves the mailbox
    assert home.store.people.get("zhang.wei@example.org").lang == "en"


def test_each_change_retires_the_link_it_was_made_with_even_within_a_second(home: Home) -> None:
    home.clock[0] = timedelta(seconds=0.001 - time.time() % 1)  # early in a second: the saves below share it
    links = [home.token("ann@example.org")]
    with home.client() as http:
        for lang in ("en", "zh", "en"):
            saved = _save(http, links[-1], list=["bulletin"], lang=lang)
            assert saved.status_code == 303
            links.append(saved.headers["location"].split("?")[0].removeprefix("/p/"))
        answers = [http.get(f"/p/{token}").status_code for token in links]
    assert len(set(links)) == 4 and answers == [400, 400, 400, 200]


def test_a_list_that_is_not_shown_cannot_be_joined(home: Home) -> None:
    with home.client() as http:
        assert _save(http, home.token("ann@example.org"), list=["bulletin", "internal"]).status_code == 303
    assert home.store.conn.execute(
        "SELECT COUNT(*) FROM subscribers s JOIN lists l ON l.id = s.list_id WHERE l.name = 'internal'"
    ).fetchone() == (0,)


def test_a_suppressed_address_sees_why_and_joins_nothing(home: Home) -> None:
    from mailer.models import SuppressionReason

    home.store.suppressions.suppress_address("ann@example.org", SuppressionReason.BOUNCED, "550 5.1.1")
    with home.client() as http:
        page = http.get(f"/p/{home.token('ann@example.org')}")
        assert page.status_code == 200 and "bounced or was reported as spam" not in page.text  # the page is zh
        assert "被退回" in page.text and re.search(r'value="weekly" disabled', page.text)
        assert _save(http, home.token("ann@example.org"), list=["bulletin", "weekly"]).status_code == 303
    assert home.store.conn.execute("SELECT COUNT(*) FROM joins").fetchone() == (0,)
    assert home.store.conn.execute(
        "SELECT COUNT(*) FROM subscribers WHERE email = 'ann@example.org' AND status = 'active'"
    ).fetchone() == (0,)


def test_unsubscribe_from_everything(home: Home) -> None:
    home.store.people.join(home.store.lists.get("weekly").id, "ann@example.org", "Ann", "test")
    token = home.token("ann@example.org")
    with home.client() as http:
        page = http.get(f"/p/{token}")
        done = http.post(f"/p/{token}", data={"form_token": form_token(page.text), "action": "leave"})
        assert done.status_code == 303 and done.headers["location"].endswith("?left=1")
        shown = http.get(done.headers["location"])
    assert "a***@example.org" in shown.text and not re.search(r"checked", shown.text)
    for name in ("bulletin", "weekly"):
        sub = home.subscriber("ann@example.org", name)
        assert sub.status == SubscriberStatus.UNSUBSCRIBED
        assert home.store.subscribers.last_unsubscribe(sub.id).source == "preferences"  # type: ignore[union-attr]


def test_a_post_without_our_form_changes_nothing(home: Home) -> None:
    token = home.token("zhang.wei@example.org")
    before = home.changes()
    with home.client() as http:
        bare = http.post(f"/p/{token}", data={"action": "leave"})  # another site's form: no token, no cookie
        page = http.get(f"/p/{token}")
        other_site = http.post(
            f"/p/{token}",
            data={"form_token": form_token(page.text), "action": "leave"},
            headers={"origin": "https://evil.example"},
        )
    with home.client() as http:  # the token of a form shown in another browser, without its cookie
        stolen = http.post(f"/p/{token}", data={"form_token": form_token(page.text), "action": "leave"})
    assert [r.status_code for r in (bare, other_site, stolen)] == [403, 403, 403]
    assert home.changes() == before


def test_forged_truncated_and_other_kinds_of_token_get_the_same_400(home: Home) -> None:
    good = home.token("zhang.wei@example.org")
    sub = home.subscriber("zhang.wei@example.org")
    unsubscribe = make_token(home.config.secret, TokenKind.UNSUBSCRIBE, sub.list_id, sub.id)
    forged = make_token(b"another secret", TokenKind.PREFERENCES, sub.list_id, sub.id, int(time.time()))
    other_list = make_token(
        home.config.secret, TokenKind.PREFERENCES, home.store.lists.get("weekly").id, sub.id, int(time.time())
    )
    before = home.changes()
    with home.client() as http:
        pages = [http.get(f"/p/{t}") for t in (good[:-3], forged, unsubscribe, other_list, good[:-1] + "a")]
        posts = [http.post(f"/p/{t}", data={"action": "leave"}) for t in (forged, unsubscribe)]
    assert {p.status_code for p in pages + posts} == {400}
    assert len({p.text for p in pages + posts}) == 1  # one page that names nothing
    assert home.changes() == before


def test_the_link_works_for_a_year_then_asks_for_a_new_one(home: Home) -> None:
    with home.client() as http:
        kept = http.get(f"/p/{home.token('ann@example.org', age=PREFERENCES_TTL - timedelta(hours=1))}")
        expired = http.get(f"/p/{home.token('ann@example.org', age=PREFERENCES_TTL + timedelta(hours=1))}")
        home.clock[0] = timedelta(days=400)  # an issue kept for months, opened much later
        token_of_issue = home.token("ann@example.org", age=timedelta(days=300))
        months_later = http.get(f"/p/{token_of_issue}")
    assert kept.status_code == 200 and months_later.status_code == 200
    assert expired.status_code == 400 and 'href="/p/"' in expired.text and "a***@" not in expired.text


def test_a_test_sends_link_speaks_for_nobody(home: Home) -> None:
    list_id = home.store.lists.get("bulletin").id
    token = make_token(home.config.secret, TokenKind.PREFERENCES, list_id, 0, int(time.time()))
    with home.client() as http:
        page = http.get(f"/p/{token}")
        post = http.post(f"/p/{token}", data={"action": "leave"})
    assert page.status_code == 200 and "测试邮件" in page.text and post.status_code == 200


# ---- send me my link ----------------------------------------------------------------------------------------------


def _ask(http: httpx.Client, email: str) -> httpx.Response:
    page = http.get("/p/")
    assert page.status_code == 200
    return http.post("/p/", data={"email": email, "form_token": form_token(page.text)})


def test_send_me_my_link_answers_the_same_for_known_and_unknown_addresses(home: Home) -> None:
    with home.client() as http:
        known = _ask(http, "zhang.wei@example.org")
        unknown = _ask(http, "zhou.yu@example.org")  # same mask: zh***@example.org
    home.settle()
    assert known.status_code == unknown.status_code == 200
    assert known.text == unknown.text
    [mail] = home.smtp.received
    assert mail.rcpt_tos == ("zhang.wei@example.org",)
    link = prefs_link_of(mail.data)[0]
    with home.client() as http:
        page = http.get(link.removeprefix(home.url))
    assert page.status_code == 200 and "zh***@example.org" in page.text
    message = BytesParser(policy=policy.default).parsebytes(mail.data)
    assert message["List-Unsubscribe"] and "订阅设置" in str(message["Subject"])


def test_send_me_my_link_is_rate_limited_like_sign_ups(home: Home) -> None:
    with home.client() as http:
        answers = [_ask(http, "ann@example.org") for _ in range(2)]  # the second within 10 minutes: no mail
        home.settle()
        assert len(home.smtp.received) == 1
        home.clock[0] = timedelta(minutes=11)
        answers.append(_ask(http, "ann@example.org"))
        home.settle()
        assert len(home.smtp.received) == 2
        answers += [_ask(http, f"nobody{n}@example.org") for n in range(3)]  # 6 requests from this client
        limited = _ask(http, "ann@example.org")
    assert {a.status_code for a in answers} == {200}
    assert limited.status_code == 429
    home.settle()
    assert len(home.smtp.received) == 2


def test_send_me_my_link_needs_our_form_and_its_get_changes_nothing(home: Home) -> None:
    with home.client() as http:
        shown = [http.get("/p/").status_code for _ in range(3)]
        bare = http.post("/p/", data={"email": "ann@example.org"})
    home.settle()
    assert shown == [200, 200, 200] and bare.status_code == 403 and home.smtp.received == []
    assert home.store.conn.execute("SELECT COUNT(*) FROM link_requests").fetchone() == (0,)


def test_the_link_mail_is_dkim_signed(config: Config, store: Store, smtp_server: CaptureServer, tmp_path: Path) -> None:
    add_subscriber(store, "bulletin", "ann@example.org", "Ann")
    with dkim_signed_web(config, smtp_server, tmp_path) as (http, settle):
        _ask(http, "ann@example.org")
        settle()
    [mail] = smtp_server.received
    assert dkim_verifies(mail.data, tmp_path)


def test_confirmation_mails_link_to_the_page_too(home: Home) -> None:
    with home.client() as http:
        page = http.get("/s/weekly")
        http.post("/s/weekly", data={"email": "new@example.org", "form_token": form_token(page.text)})
    home.settle()
    [mail] = home.smtp.received
    link = prefs_link_of(mail.data)[0]
    with home.client() as http:
        shown = http.get(link.removeprefix(home.url))
    assert shown.status_code == 200 and "awaiting confirmation" in shown.text


def test_the_access_log_never_writes_a_preferences_token(home: Home, caplog: pytest.LogCaptureFixture) -> None:
    token = home.token("ann@example.org")
    with caplog.at_level("INFO", logger="mailer.web"), home.client() as http:
        http.get(f"/p/{token}")
        http.post(f"/p/{token}", data={"action": "leave"})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "GET /p/… 200" in logged and "POST /p/… 403" in logged and token not in logged
