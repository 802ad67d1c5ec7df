"""What ops read at scale: keyset pages of deliveries (status and domain filters), `mailer log` (newest N with the
total; --csv and --json in one index-ordered pass), and a campaign's summary (`mailer campaigns show`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailer.campaign_report import campaign_report
from mailer.models import DeliveryStatus
from mailer.store import Store
from tests.synthetic import fill_campaign


@pytest.fixture
def big(store: Store) -> int:
    return fill_campaign(store, "big", 2000)


def _all(store: Store, campaign_id: int) -> list[tuple[int, str, str, int]]:
    return store.conn.execute(
        "SELECT id, status, email, attempts FROM deliveries WHERE campaign_id = ? ORDER BY id DESC", (campaign_id,)
    ).fetchall()


@pytest.mark.parametrize(
    ("status", "domain"),
    [(None, None), ("failed", None), (None, "qq.com"), ("deferred", "gmail.com"), ("sent", "nowhere.test")],
)
def test_keyset_pages_walk_every_matching_delivery_once_newest_first(
    store: Store, big: int, status: str | None, domain: str | None
) -> None:
    expected = [
        row[0]
        for row in _all(store, big)
        if (status is None or row[1] == status) and (domain is None or row[2].endswith("@" + domain))
    ]
    seen: list[int] = []
    before = None
    while True:
        page = store.reports.page(
            big, status=DeliveryStatus(status) if status else None, domain=domain, before=before, limit=37
        )
        if not page:
            break
        seen += [entry.id for entry in page]
        before = page[-1].id
    assert seen == expected
    assert status is None or domain != "nowhere.test" or not seen


def _plan(store: Store, sql: str, args: tuple[object, ...]) -> str:
    return " | ".join(row[-1] for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql, args))


def test_the_log_and_the_pages_sort_nothing(store: Store, big: int) -> None:
    """At a million deliveries a sort is the difference between seconds and minutes (the chunked log re-sorted
    the whole campaign for every 500 rows): every read walks an index in the order it returns."""
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    list(store.deliveries.log(big))
    list(store.deliveries.log(big, DeliveryStatus.FAILED))
    store.reports.page(big, domain="qq.com", status=DeliveryStatus.SENT)
    store.reports.page(big, domain="qq.com")
    store.reports.page(big)
    campaign_report(store, big)
    store.conn.set_trace_callback(None)
    selects = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT") and "FROM deliver" in sql]
    assert len(selects) >= 8 and any("delivery_tally" in sql for sql in selects)
    for sql in selects:
        plan = _plan(store, sql, ())  # the traced statement has its values bound in
        assert "SCAN deliver" not in plan, (sql, plan)  # SEARCH: a range of one index (or of a tally)
        if "FROM deliveries" in sql:  # a tally's few rows may be grouped; a campaign's deliveries never are
            assert "TEMP B-TREE" not in plan, (sql, plan)


def test_mailer_log_table_shows_the_newest_with_the_total_and_how_to_see_more(store: Store, big: int, run_cli) -> None:
    result = run_cli("log", str(big), "--limit", "5")
    assert result.returncode == 0, result.stderr
    newest = [row[2] for row in _all(store, big)[:5]]
    lines = result.stdout.splitlines()
    assert [e for e in newest if any(e in line for line in lines)] == newest
    assert sum("@" in line for line in lines) == 5
    assert f"the newest 5 of 2000 deliveries; all of them: mailer log {big} --csv" in " ".join(result.stdout.split())
    failed = run_cli("log", str(big), "--status", "failed")
    n_failed = store.deliveries.counts(big)["failed"]
    assert f"of {n_failed} failed deliveries" in " ".join(failed.stdout.split())


def test_log_json_streams_the_same_array_print_json_wrote(store: Store, big: int, run_cli) -> None:
    result = run_cli("log", str(big), "--json", "--status", "deferred")
    rows = json.loads(result.stdout)
    assert [r["email"] for r in rows] == [row[2] for row in reversed(_all(store, big)) if row[1] == "deferred"]
    assert result.stdout == json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    assert run_cli("log", str(big), "--json", "--status", "sending").stdout == "[]\n"
    csv_out = run_cli("log", str(big), "--csv").stdout.splitlines()
    assert len(csv_out) == 2001 and csv_out[1].startswith(_all(store, big)[-1][2] + ",")


def test_the_summary_groups_replies_and_domains(store: Store, big: int) -> None:
    report = campaign_report(store, big, top=3)
    assert report.total == 2000 and sum(report.counts.values()) == 2000
    deferred = report.counts["deferred"]
    # Every "451 4.7.1 Try again later from 10.0.x.y" is one group, whatever the IP.
    assert report.replies[0].reply == "451 4.7.1 try again later from ip"
    assert report.replies[0].count == deferred
    assert any(g.reply.startswith("550 5.1.1 <address>") for g in report.replies)
    assert len(report.domains) == 3 and report.other_domains == 5
    qq = next(d for d in report.domains if d.domain == "126.com")  # all 250 each: by name
    assert qq.total == 250 and qq.median_attempts == 1.0
    assert sum(n for _, c in report.timeline for n in c.values()) == sum(
        report.counts[s] for s in ("sent", "deferred", "failed")
    )
    assert report.bucket_minutes == 1 and len(report.timeline) == 3  # 2000 rows 60 ms apart from 08:00: 08:00-08:02
    data = report.as_json()
    assert data["domains"][0]["median_attempts"] == 1.0 and data["progress"] == round(report.progress, 4)


def test_campaigns_show_prints_bars_sparkline_replies_and_domains(store: Store, big: int, run_cli) -> None:
    shown = run_cli("campaigns", "show", str(big))
    assert shown.returncode == 0, shown.stderr
    assert "█" in shown.stdout and "qq.com" in shown.stdout and "try again later" in shown.stdout
    assert any(ch in shown.stdout for ch in "▁▂▃▄▅▆▇")
    [as_json] = json.loads(run_cli("campaigns", "show", str(big), "--json").stdout)  # an array, as every --json
    assert as_json["id"] == big and as_json["counts"]["sent"] > 1500 and as_json["audience"] == "list big"
    assert as_json["replies"][0]["reply"] == "451 4.7.1 try again later from ip" and len(as_json["domains"]) == 8
    missing = run_cli("campaigns", "show", "999")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no campaign")


def test_a_domain_median_ignores_recipients_not_tried_yet(tmp_path: Path) -> None:
    from mailer.campaign_report import _median

    assert _median({1: 3, 4: 1}) == 1.0 and _median({1: 1, 3: 1}) == 2.0 and _median({}) == 0.0


def _tallies(store: Store) -> tuple[object, ...]:
    """The tallies the triggers keep, and what they should hold counted from the rows and events themselves."""
    kept = (
        sorted(store.conn.execute("SELECT campaign_id, domain, status, attempts, n FROM delivery_tally WHERE n > 0")),
        sorted(
            store.conn.execute("SELECT campaign_id, smtp_code, smtp_reply, status, n FROM delivery_replies WHERE n > 0")
        ),
        sorted(store.conn.execute("SELECT campaign_id, minute, status, n FROM delivery_minutes WHERE n > 0")),
    )
    counted = (
        sorted(
            store.conn.execute(
                "SELECT campaign_id, domain, status, attempts, COUNT(*) FROM deliveries GROUP BY 1, 2, 3, 4"
            )
        ),
        sorted(
            store.conn.execute(
                "SELECT campaign_id, COALESCE(smtp_code, 0), smtp_reply, status, COUNT(*) FROM deliveries "
                "WHERE status IN ('deferred', 'failed', 'bounced', 'skipped') GROUP BY 1, 2, 3, 4"
            )
        ),
        sorted(
            store.conn.execute(
                "SELECT d.campaign_id, substr(e.at, 1, 16), e.status, COUNT(*) FROM delivery_events e "
                "JOIN deliveries d ON d.id = e.delivery_id WHERE e.status IN ('sent', 'deferred', 'failed') "
                "GROUP BY 1, 2, 3"
            )
        ),
    )
    return kept, counted


def test_the_triggers_keep_the_tallies_in_step_with_every_change(store: Store, config, smtp_server) -> None:  # type: ignore[no-untyped-def]
    """A real send with deferrals and refusals, a retry, a requeue of the failed, a bounce and a cancel: after each,
    the tallies the pages read equal what counting the rows says."""
    import asyncio

    from mailer.capture import Rule
    from mailer.engine import SendOptions
    from mailer.models import Subscriber
    from mailer.send import send_issue
    from mailer.smtp import relays
    from tests.conftest import SAMPLE_ISSUE

    people = [Subscriber(email=f"p{i}@{('qq.com', '163.com', 'example.org')[i % 3]}") for i in range(30)]
    store.subscribers.upsert(store.lists.get("bulletin").id, people, "t")
    for i in range(0, 30, 7):
        smtp_server.set_rule(
            f"p{i}@{('qq.com', '163.com', 'example.org')[i % 3]}", Rule(stage="rcpt", code=451, text="4.7.1 later")
        )
    smtp_server.set_rule("p4@163.com", Rule(stage="rcpt", code=550, text="5.1.1 no such user"))
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    asyncio.run(send_issue(store, config, SAMPLE_ISSUE, "bulletin", SendOptions(), settings))
    kept, counted = _tallies(store)
    assert kept == counted and any(row[2] == "deferred" for row in kept[0])
    campaign_id = store.conn.execute("SELECT id FROM campaigns").fetchone()[0]
    store.deliveries.requeue_due(campaign_id, None)
    assert _tallies(store)[0] == _tallies(store)[1]
    store.deliveries.requeue_failed(campaign_id)
    store.returned.mark_bounced(
        store.conn.execute("SELECT MIN(id) FROM deliveries WHERE status = 'sent'").fetchone()[0], "5.1.1", "gone"
    )
    kept, counted = _tallies(store)
    assert kept == counted
    store.campaigns.cancel(campaign_id)
    kept, counted = _tallies(store)
    assert kept == counted and any(row[2] == "skipped" for row in kept[0])
    assert store.deliveries.counts(campaign_id) == dict(
        store.conn.execute(
            "SELECT status, COUNT(*) FROM deliveries WHERE campaign_id = ? GROUP BY status", (campaign_id,)
        )
    )
