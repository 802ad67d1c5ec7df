"""`mailer serve` through real HTTP: httpx against uvicorn on 127.0.0.1, confirmation mail through aiosmtpd."""

from __future__ import annotations

import re
import subprocess
import sys
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

from mailer.capture import CaptureServer, Rule
from mailer.clock import utcnow
from mailer.config import Config
from mailer.models import SubscriberStatus
from mailer.store import Store
from mailer.subscriptions import SignupLimits, add_subscriber, create_list
from mailer.tokens import TokenKind, make_token
from mailer.web import create_app
from mailer.web.endpoints import WebApp
from tests.conftest import CHECK_EML, LiveWeb, dkim_signed_web, dkim_verifies, web_config


@dataclass
class Site:
    url: str
    config: Config
    store: Store
    smtp: CaptureServer
    clock: list[timedelta]  # how far the app's clock is ahead of the real one
    web: WebApp

    def settle(self) -> None:
        """Wait until the confirmation mails the app handed to the background have been sent (or given up)."""
        deadline = time.monotonic() + 10
        while self.web.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.web.pending == 0

    def client(self, **kwargs: object) -> httpx.Client:
        client = httpx.Client(base_url=self.url, follow_redirects=False, timeout=10, **kwargs)  # type: ignore[arg-type]
        client.settle = self.settle  # type: ignore[attr-defined]
        return client

    def unsub_token(self, email: str, list_name: str = "bulletin") -> str:
        sub = self.store.subscribers.get(self.store.lists.get(list_name).id, email)
        return make_token(self.config.secret, TokenKind.UNSUBSCRIBE, sub.list_id, sub.id)

    def status(self, email: str, list_name: str = "bulletin") -> str:
        return self.store.subscribers.get(self.store.lists.get(list_name).id, email).status


@pytest.fixture
def site(config: Config, store: Store, smtp_server: CaptureServer) -> Iterator[Site]:
    create_list(store, "weekly", "Weekly Notes", "Notes <notes@example.org>", "", "en")
    add_subscriber(store, "bulletin", "zhang.wei@example.org", "张伟")
    add_subscriber(store, "weekly", "ann@example.org", "Ann")
    clock = [timedelta(0)]
    holder: dict[str, Config] = {}

    apps: list[Any] = []

    def make(url: str) -> object:
        holder["config"] = web_config(config, smtp_server, url)
        apps.append(create_app(holder["config"], SignupLimits(client_max=6), clock=lambda: utcnow() + clock[0]))
        return apps[0]

    with LiveWeb(make) as live:
        yield Site(live.url, holder["config"], store, smtp_server, clock, apps[0].state.web)


def unsubscribe_rows(store: Store, email: str) -> list[tuple[str, str]]:
    return store.conn.execute(
        "SELECT u.source, u.at FROM unsubscribes u JOIN subscribers s ON s.id = u.subscriber_id WHERE s.email = ?",
        (email,),
    ).fetchall()


# ---- unsubscribe -------------------------------------------------------------------------------------------------


def test_get_shows_a_page_in_the_lists_language_and_changes_nothing(site: Site) -> None:
    token = site.unsub_token("zhang.wei@example.org")
    with site.client() as http:
        for _ in range(3):  # link scanners may fetch it several times
            page = http.get(f"/u/{token}")
            assert page.status_code == 200
    assert 'lang="zh-CN"' in page.text
    assert "退订「知识产权运营简报」" in page.text
    assert "zh***@example.org" in page.text and "zhang.wei@" not in page.text
    assert f'action="/u/{token}"' in page.text and "确认退订" in page.text
    assert site.status("zhang.wei@example.org") == SubscriberStatus.ACTIVE
    assert unsubscribe_rows(site.store, "zhang.wei@example.org") == []


def test_english_list_gets_an_english_page(site: Site) -> None:
    with site.client() as http:
        page = http.get(f"/u/{site.unsub_token('ann@example.org', 'weekly')}")
    assert page.status_code == 200 and 'lang="en"' in page.text
    assert "Unsubscribe from Weekly Notes" in page.text and "a***@example.org" in page.text


def test_rfc8058_one_click_post_without_cookies(site: Site) -> None:
    token = site.unsub_token("zhang.wei@example.org")
    with site.client() as http:
        first = http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
        again = http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
        assert not http.cookies
    assert first.status_code == 200 and again.status_code == 200  # no redirect, idempotent
    assert "已退订" in first.text
    assert site.status("zhang.wei@example.org") == SubscriberStatus.UNSUBSCRIBED
    rows = unsubscribe_rows(site.store, "zhang.wei@example.org")
    assert [source for source, _ in rows] == ["one-click"]  # recorded once, with its source
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rows[0][1])


def test_one_click_as_multipart_form_data(site: Site) -> None:
    """RFC 8058 allows either form encoding; mail providers use both."""
    token = site.unsub_token("ann@example.org", "weekly")
    with site.client() as http:
        reply = http.post(f"/u/{token}", files={"List-Unsubscribe": (None, "One-Click")})
    assert reply.status_code == 200
    assert site.status("ann@example.org", "weekly") == SubscriberStatus.UNSUBSCRIBED


def test_the_pages_button_records_page_as_source(site: Site) -> None:
    token = site.unsub_token("zhang.wei@example.org")
    with site.client() as http:
        assert http.post(f"/u/{token}", data={}).status_code == 200
        after = http.get(f"/u/{token}")
    assert [s for s, _ in unsubscribe_rows(site.store, "zhang.wei@example.org")] == ["page"]
    assert "已经退订" in after.text and "<form" not in after.text


def forged_tokens(site: Site) -> dict[str, str]:
    good = site.unsub_token("zhang.wei@example.org")
    sub = site.store.subscribers.get(site.store.lists.get("bulletin").id, "zhang.wei@example.org")
    weekly = site.store.lists.get("weekly")
    flipped = good[:5] + ("a" if good[5] != "a" else "b") + good[6:]
    return {
        "tampered": flipped,
        "truncated": good[:-3],
        "other secret": make_token(b"not-our-secret", TokenKind.UNSUBSCRIBE, sub.list_id, sub.id),
        "other list": make_token(site.config.secret, TokenKind.UNSUBSCRIBE, weekly.id, sub.id),
        "confirm kind": make_token(site.config.secret, TokenKind.CONFIRM, sub.list_id, sub.id),
        "bounce kind": make_token(site.config.secret, TokenKind.BOUNCE, 1, sub.id),
        "no such subscriber": make_token(site.config.secret, TokenKind.UNSUBSCRIBE, sub.list_id, 99999),
        "garbage": "not-a-token",
    }


def test_forged_tokens_get_400_and_a_page_that_reveals_nothing(site: Site) -> None:
    with site.client() as http:
        tokens = forged_tokens(site)
        for why, token in tokens.items():
            replies = [http.get(f"/u/{token}"), http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})]
            # a confirm token is fine at /c/; an unsubscribe token is the wrong kind there
            confirm_token = site.unsub_token("zhang.wei@example.org") if why == "confirm kind" else token
            replies += [http.get(f"/c/{confirm_token}"), http.post(f"/c/{confirm_token}")]
            for reply in replies:
                assert reply.status_code == 400, why
                assert "链接无效" in reply.text
                for secret_word in ("zh***", "zhang", "知识产权", "Weekly", "bulletin"):
                    assert secret_word not in reply.text, (why, secret_word)
    assert site.status("zhang.wei@example.org") == SubscriberStatus.ACTIVE


def test_every_response_carries_the_security_headers(site: Site) -> None:
    with site.client() as http:
        for reply in (
            http.get(f"/u/{site.unsub_token('zhang.wei@example.org')}"),
            http.get("/u/bad"),
            http.get("/s/bulletin"),
            http.get("/s/nope"),
        ):
            assert reply.headers["referrer-policy"] == "same-origin"  # the token must not leak via Referer
            assert "default-src 'none'" in reply.headers["content-security-policy"]
            assert reply.headers["cache-control"] == "no-store"
            assert reply.headers["x-frame-options"] == "DENY"
            assert "<script" not in reply.text


# ---- sign-up and double opt-in -----------------------------------------------------------------------------------


def form_token(page: str) -> str:
    match = re.search(r'name="form_token" value="([^"]+)"', page)
    assert match, "no form token in the page"
    return match.group(1)


def sign_up(http: httpx.Client, list_name: str, email: str, name: str = "", **extra: str) -> httpx.Response:
    """Fill in and send the form as a browser would, then wait for any confirmation mail to be sent."""
    page = http.get(f"/s/{list_name}")
    assert page.status_code == 200
    data = {"email": email, "name": name, "form_token": form_token(page.text), "website": "", **extra}
    answer = http.post(f"/s/{list_name}", data=data)
    http.settle()  # type: ignore[attr-defined]
    return answer


def confirm_link(message: bytes) -> str:
    parsed = BytesParser(policy=policy.default).parsebytes(message)
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = re.search(r"https?://\S+/c/[a-z0-9]+", text)
    assert match, text
    return match.group(0)


def test_sign_up_confirm_by_mail_then_activate(site: Site, tmp_path: Path) -> None:
    with site.client() as http:
        page = http.get("/s/bulletin")
        assert "订阅「知识产权运营简报」" in page.text and 'name="website"' in page.text
        answer = sign_up(http, "bulletin", "li.na@example.org", "李娜")
    assert answer.status_code == 200 and "请查收确认邮件" in answer.text
    assert site.status("li.na@example.org") == SubscriberStatus.PENDING
    # pending is not a recipient
    assert site.store.subscribers.count_recipients(site.store.lists.get("bulletin").id) == 1
    [mail] = site.smtp.received
    assert mail.rcpt_tos == ("li.na@example.org",)
    assert mail.mail_from.startswith("bounces+") and mail.mail_from.endswith("@example.org")
    parsed = BytesParser(policy=policy.default).parsebytes(mail.data)
    assert parsed["Subject"] == "请确认订阅「知识产权运营简报」"
    assert str(parsed["To"]) == "li.na@example.org"  # the name typed into the form is not put into the mail
    assert "李娜" not in parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert site.store.subscribers.get(site.store.lists.get("bulletin").id, "li.na@example.org").name == ""
    eml = tmp_path / "confirm.eml"
    eml.write_bytes(mail.data)
    check = subprocess.run([sys.executable, str(CHECK_EML), str(eml)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout

    link = confirm_link(mail.data)
    assert link.startswith(site.url + "/c/")
    path = link[len(site.url) :]
    with site.client() as http:
        look = http.get(path)
        assert look.status_code == 200 and "确认订阅" in look.text and "li***@example.org" in look.text
        assert site.status("li.na@example.org") == SubscriberStatus.PENDING  # GET changes nothing
        done = http.post(path)
        twice = http.post(path)
    assert done.status_code == 200 and "订阅成功" in done.text and twice.status_code == 200
    assert site.status("li.na@example.org") == SubscriberStatus.ACTIVE
    assert site.store.subscribers.get(site.store.lists.get("bulletin").id, "li.na@example.org").name == "李娜"
    assert site.store.subscribers.count_recipients(site.store.lists.get("bulletin").id) == 2


def name_of(site: Site, email: str) -> str:
    return site.store.subscribers.get(site.store.lists.get("bulletin").id, email).name


def test_a_stranger_cannot_rename_someone_who_signed_up(site: Site) -> None:
    with site.client() as owner:
        sign_up(owner, "bulletin", "li.na@example.org", "李娜")
    own_link = confirm_link(site.smtp.received[0].data).split(site.url, 1)[1]
    with site.client() as stranger:
        sign_up(stranger, "bulletin", "li.na@example.org", "Click evil.test")  # quiet: the address limit
        assert name_of(site, "li.na@example.org") == "" and len(site.smtp.received) == 1
        site.clock[0] += timedelta(minutes=11)
        sign_up(stranger, "bulletin", "li.na@example.org", "Click evil.test")  # this one mails the owner
    assert len(site.smtp.received) == 2 and name_of(site, "li.na@example.org") == ""
    with site.client() as owner:
        page = owner.get(own_link)  # the owner sees the name their own request asked for, and may change it
        assert page.status_code == 200 and 'value="李娜"' in page.text and "evil" not in page.text
        owner.post(own_link)  # a bare POST (no field) takes the name of the request the link answers
    assert site.status("li.na@example.org") == SubscriberStatus.ACTIVE
    assert name_of(site, "li.na@example.org") == "李娜"


def test_the_owner_sets_the_name_on_the_confirm_page(site: Site) -> None:
    with site.client() as stranger:
        sign_up(stranger, "bulletin", "wu@example.org", "Prize winner: call +1 555")
    link = confirm_link(site.smtp.received[0].data).split(site.url, 1)[1]
    with site.client() as owner:
        assert 'value="Prize winner: call +1 555"' in owner.get(link).text
        done = owner.post(link, data={"name": "吴芳"})
        assert done.status_code == 200
    assert name_of(site, "wu@example.org") == "吴芳"


def test_signing_up_again_changes_no_known_name(site: Site) -> None:
    list_id = site.store.lists.get("bulletin").id
    site.store.subscribers.unsubscribe(site.store.subscribers.get(list_id, "zhang.wei@example.org").id, "test")
    before = name_of(site, "zhang.wei@example.org")
    with site.client() as stranger:
        sign_up(stranger, "bulletin", "zhang.wei@example.org", "Stranger")
    assert name_of(site, "zhang.wei@example.org") == before
    assert site.status("zhang.wei@example.org") == SubscriberStatus.UNSUBSCRIBED


def test_same_answer_for_new_active_and_bounced_addresses(site: Site) -> None:
    site.store.suppressions.add("gone@example.org", "bounced")
    with site.client() as http:
        answers = [
            sign_up(http, "bulletin", email)
            for email in ("new@example.org", "zhang.wei@example.org", "gone@example.org")
        ]
    assert {a.status_code for a in answers} == {200}
    assert {re.sub(r"\w\w?\*\*\*@example\.org", "X", a.text) for a in answers} == {
        re.sub(r"\w\w?\*\*\*@example\.org", "X", answers[0].text)
    }
    assert [m.rcpt_tos for m in site.smtp.received] == [("new@example.org",)]  # only the new one is mailed
    assert site.status("zhang.wei@example.org") == SubscriberStatus.ACTIVE


def test_an_address_is_mailed_once_however_often_the_form_is_sent(site: Site) -> None:
    with site.client() as http:
        for _ in range(4):
            assert sign_up(http, "bulletin", "victim@example.org").status_code == 200
    assert len(site.smtp.received) == 1
    site.clock[0] += timedelta(minutes=11)  # after the interval, one more is allowed
    with site.client() as http:
        sign_up(http, "bulletin", "victim@example.org")
    assert len(site.smtp.received) == 2


def test_one_client_is_limited(site: Site) -> None:
    with site.client() as http:
        codes = [sign_up(http, "bulletin", f"p{i}@example.org").status_code for i in range(8)]
    assert codes[:6] == [200] * 6 and codes[6:] == [429, 429]
    assert len(site.smtp.received) == 6


def test_honeypot_filled_looks_fine_but_does_nothing(site: Site) -> None:
    with site.client() as http:
        answer = sign_up(http, "bulletin", "bot@example.org", website="http://spam.example")
    assert answer.status_code == 200 and "请查收确认邮件" in answer.text
    assert site.smtp.received == []
    assert not site.store.conn.execute("SELECT 1 FROM subscribers WHERE email = 'bot@example.org'").fetchone()


def forge(token: str) -> str:
    """The token with its first character changed: the first character always carries bits of the signature
    (the last may carry only padding bits that decoding drops)."""
    return ("B" if token[0] == "A" else "A") + token[1:]


def test_cross_site_or_replayed_forms_are_refused(site: Site) -> None:
    with site.client() as http:
        token = form_token(http.get("/s/bulletin").text)
        other_origin = http.post(
            "/s/bulletin",
            data={"email": "a@example.org", "form_token": token},
            headers={"Origin": "https://evil.example"},
        )
        assert other_origin.status_code == 403
        other_list = http.post("/s/weekly", data={"email": "a@example.org", "form_token": token})
        assert other_list.status_code == 403
        forged = http.post("/s/bulletin", data={"email": "a@example.org", "form_token": forge(token)})
        assert forged.status_code == 403
    with site.client() as fresh:  # a form token without its cookie (another site posting our form)
        no_cookie = fresh.post("/s/bulletin", data={"email": "a@example.org", "form_token": token})
    assert no_cookie.status_code == 403 and "表单已过期" in no_cookie.text
    assert site.smtp.received == []


def test_bad_address_shows_the_form_again_with_an_error(site: Site) -> None:
    with site.client() as http:
        answer = sign_up(http, "bulletin", "not-an-address", "王")
    assert answer.status_code == 400 and "请填写有效的邮箱地址" in answer.text
    assert 'value="not-an-address"' in answer.text and 'value="王"' in answer.text


def test_html_in_the_name_is_escaped(site: Site) -> None:
    with site.client() as http:
        answer = sign_up(http, "weekly", "bad@", "<script>alert(1)</script>")
    assert "<script>alert" not in answer.text and "&lt;script&gt;" in answer.text


def test_unknown_list_is_404(site: Site) -> None:
    with site.client() as http:
        assert http.get("/s/nope").status_code == 404
        assert http.post("/s/nope", data={"email": "a@example.org"}).status_code == 404


def test_confirm_link_expires_after_seven_days(site: Site) -> None:
    with site.client() as http:
        sign_up(http, "weekly", "late@example.org")
    path = confirm_link(site.smtp.received[0].data).split(str(site.config.base_url), 1)[1]
    site.clock[0] += timedelta(days=8)
    with site.client() as http:
        answer = http.post(path)
    assert answer.status_code == 400 and "expired" in answer.text
    assert site.status("late@example.org", "weekly") == SubscriberStatus.PENDING


def test_a_confirmation_the_relay_refused_does_not_count_against_the_address(site: Site) -> None:
    site.smtp.set_rule("retry@example.org", Rule(stage="rcpt", code=451, text="try later", times=1))
    with site.client() as http:
        first = sign_up(http, "bulletin", "retry@example.org")
        second = sign_up(http, "bulletin", "retry@example.org")  # at once: the refused mail did not count
    assert first.status_code == 200 and second.status_code == 200
    assert [m.rcpt_tos for m in site.smtp.received] == [("retry@example.org",)]


def test_the_answer_does_not_wait_for_the_relay(site: Site) -> None:
    site.smtp.set_rule("slow@example.org", Rule(stage="rcpt", hang=2, times=1))
    with site.client() as http:
        page = http.get("/s/bulletin")
        answer = http.post("/s/bulletin", data={"email": "slow@example.org", "form_token": form_token(page.text)})
        # Answered while the relay still holds the confirmation at RCPT: had the answer waited, it would be in.
        assert answer.status_code == 200 and site.smtp.received == []
    site.settle()
    assert [m.rcpt_tos for m in site.smtp.received] == [("slow@example.org",)]


def test_unsubscribed_person_can_sign_up_again_through_double_opt_in(site: Site) -> None:
    token = site.unsub_token("zhang.wei@example.org")
    with site.client() as http:
        http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
        sign_up(http, "bulletin", "zhang.wei@example.org")
    # A stranger typing the address changes nothing: it stays unsubscribed until the mailbox owner confirms.
    assert site.status("zhang.wei@example.org") == SubscriberStatus.UNSUBSCRIBED
    path = confirm_link(site.smtp.received[0].data).split(site.url, 1)[1]
    with site.client() as http:
        http.post(path)
    assert site.status("zhang.wei@example.org") == SubscriberStatus.ACTIVE


def test_an_old_confirm_link_does_not_undo_a_later_unsubscribe(site: Site) -> None:
    with site.client() as http:
        sign_up(http, "bulletin", "li.na@example.org")
        path = confirm_link(site.smtp.received[0].data).split(site.url, 1)[1]
        http.post(path)
        sub = site.store.subscribers.get(site.store.lists.get("bulletin").id, "li.na@example.org")
        token = make_token(site.config.secret, TokenKind.UNSUBSCRIBE, sub.list_id, sub.id)
        http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
        replay = http.post(path)
    assert replay.status_code == 400
    assert site.status("li.na@example.org") == SubscriberStatus.UNSUBSCRIBED


def test_addresses_are_one_person_whatever_their_case(site: Site) -> None:
    site.store.suppressions.add("gone@example.org", "bounced")
    with site.client() as http:
        sign_up(http, "bulletin", "Gone@Example.ORG")
        sign_up(http, "bulletin", "Zhang.Wei@example.org")
        sign_up(http, "bulletin", "New@example.org")
        sign_up(http, "bulletin", "NEW@example.org")
    assert [m.rcpt_tos for m in site.smtp.received] == [("new@example.org",)]
    assert (
        site.store.conn.execute("SELECT COUNT(*) FROM subscribers WHERE lower(email) = 'new@example.org'").fetchone()[0]
        == 1
    )


def test_method_not_allowed_names_both_methods_and_no_slash_redirect(site: Site) -> None:
    token = site.unsub_token("zhang.wei@example.org")
    with site.client() as http:
        put = http.put(f"/u/{token}")
        slash = http.get(f"/u/{token}/", headers={"Host": "evil.example"})
        broken = http.post(f"/u/{token}", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    assert put.status_code == 405 and set(put.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert slash.status_code == 404 and "location" not in slash.headers
    assert broken.status_code == 400 and "链接无效" in broken.text


def test_serve_without_a_database_is_one_error_line(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("serve", "--port", "1")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: database") and len(result.stderr.strip().splitlines()) == 1


def test_serve_on_a_port_in_use_or_out_of_range(store: Store, run_cli) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(taken), timeout=20)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{taken}: Address already in use"
    result = run_cli("serve", "--port", "99999")
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_confirmation_mails_are_dkim_signed_when_a_key_is_configured(
    config: Config, store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    with dkim_signed_web(config, smtp_server, tmp_path) as (http, settle):
        page = http.get("/s/bulletin")
        http.post("/s/bulletin", data={"email": "signed@example.org", "form_token": form_token(page.text)})
        settle()
    [mail] = smtp_server.received
    assert dkim_verifies(mail.data, tmp_path)


def test_the_unsubscribe_link_of_a_test_send_explains_itself(site: Site) -> None:
    list_id = site.store.lists.get("bulletin").id
    token = make_token(site.config.secret, TokenKind.UNSUBSCRIBE, list_id, 0)  # what --test messages carry
    with site.client() as http:
        page = http.get(f"/u/{token}")
        post = http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert page.status_code == 200 and "测试邮件中的链接" in page.text and "<form" not in page.text
    assert post.status_code == 200
    assert site.status("zhang.wei@example.org") == SubscriberStatus.ACTIVE
    assert site.store.conn.execute("SELECT COUNT(*) FROM unsubscribes").fetchone()[0] == 0


# ---- configuration problems and failures on our side --------------------------------------------------------------


SECURITY = ("content-security-policy", "referrer-policy", "cache-control", "x-frame-options", "x-content-type-options")


def test_sign_up_to_a_list_without_from_is_a_page_not_a_500(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    create_list(site.store, "nofrom", "No From", "", "", "en")
    with caplog.at_level("ERROR", logger="mailer.web"), site.client() as http:
        answer = sign_up(http, "nofrom", "eve@example.org", "Eve")
    assert answer.status_code == 503 and "Not available right now" in answer.text
    assert all(name in answer.headers for name in SECURITY), answer.headers
    assert site.smtp.received == []
    assert site.store.conn.execute("SELECT COUNT(*) FROM signup_requests").fetchone()[0] == 0  # nothing counted
    assert any("nofrom" in r.getMessage() and "no From address" in r.getMessage() for r in caplog.records)


def test_a_failure_on_our_side_answers_a_page_with_the_security_headers(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    token = site.unsub_token("zhang.wei@example.org")
    db = site.config.db_path
    moved = db.with_name("elsewhere.db")
    db.rename(moved)  # the database goes away under the running server (a botched deploy, a full disk)
    try:
        with caplog.at_level("ERROR", logger="mailer.web"), site.client() as http:
            replies = [
                http.get(f"/u/{token}"),
                http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}),
                http.get("/s/bulletin"),
            ]
    finally:
        moved.rename(db)
    for reply in replies:
        assert reply.status_code == 500 and "Not available right now" in reply.text
        assert all(name in reply.headers for name in SECURITY), reply.headers
        assert token not in reply.text
    assert any(r.exc_info for r in caplog.records)
    assert all(token not in r.getMessage() for r in caplog.records)
