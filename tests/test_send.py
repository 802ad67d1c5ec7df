"""The delivery engine end to end: a real aiosmtpd server on 127.0.0.1, a real SQLite file, the real CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import pytest

from mailer.capture import Captured, CaptureServer, Rule, free_port
from mailer.config import Config
from mailer.engine import SendOptions
from mailer.models import DeliveryStatus, Subscriber
from mailer.send import retry_campaign, send_issue
from mailer.smtp import relays
from mailer.store import Store
from tests.conftest import SAMPLE_CSV, SAMPLE_ISSUE

THREE = ["wang@example.org", "li@example.com", "zhang@example.net"]


def add_subscribers(store: Store, emails: list[str]) -> list[Subscriber]:
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email=e, name=f"读者{i}") for i, e in enumerate(emails)], "test")
    return [store.subscribers.get(list_id, e) for e in emails]


def message_id_of(captured: Captured) -> str:
    return str(message_from_bytes(captured.data)["Message-ID"]).strip()


def log_rows(run_cli, campaign_id: int | str) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    result = run_cli("log", str(campaign_id), "--json")
    assert result.returncode == 0, result.stderr
    return {row["email"]: row for row in json.loads(result.stdout)}


def campaigns(run_cli, *extra: str) -> list[dict]:  # type: ignore[no-untyped-def]
    result = run_cli("campaigns", "ls", "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_error_line(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr


async def test_200_subscribers_each_get_exactly_one_message_over_reused_connections(
    store: Store, config: Config, smtp_server: CaptureServer, run_cli
) -> None:
    emails = [f"reader{i:03d}@example.org" for i in range(200)]
    add_subscribers(store, emails)
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))

    summary = await send_issue(store, config, SAMPLE_ISSUE, "bulletin", SendOptions(concurrency=4), settings)

    assert summary.counts == {"sent": 200}
    received = smtp_server.received
    assert len(received) == 200
    assert all(len(c.rcpt_tos) == 1 for c in received)
    assert Counter(c.rcpt_tos[0] for c in received) == Counter(emails)
    assert all(c.mail_from.startswith("bounces+") for c in received)
    assert len({c.mail_from for c in received}) == 200
    ids = {c.rcpt_tos[0]: message_id_of(c) for c in received}
    assert len(set(ids.values())) == 200
    # 4 sessions reused for ~50 messages each; a session per message would be 200.
    assert 1 <= smtp_server.connections <= 8

    rows = log_rows(run_cli, summary.campaign_id)
    assert set(rows) == set(emails)
    for email, row in rows.items():
        assert row["status"] == "sent"
        assert row["smtp_code"] == 250
        assert row["attempts"] == 1
        assert row["message_id"] == ids[email]


async def test_concurrency_one_uses_a_single_session(store: Store, config: Config, smtp_server: CaptureServer) -> None:
    add_subscribers(store, [f"r{i}@example.org" for i in range(20)])
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    summary = await send_issue(store, config, SAMPLE_ISSUE, "bulletin", SendOptions(concurrency=1), settings)
    assert summary.counts == {"sent": 20}
    assert smtp_server.connections == 1  # one session for all 20 (the probe says no EHLO)


def test_550_at_rcpt_fails_that_recipient_only_and_exits_3(store: Store, smtp_server: CaptureServer, run_cli) -> None:
    add_subscribers(store, THREE)
    smtp_server.set_rule("li@example.com", Rule(stage="rcpt", code=550, text="5.1.1 mailbox li does not exist"))

    result = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))

    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(c.rcpt_tos[0] for c in smtp_server.received) == ["wang@example.org", "zhang@example.net"]
    (campaign,) = campaigns(run_cli)
    assert campaign["counts"] == {"sent": 2, "failed": 1}
    rows = log_rows(run_cli, campaign["id"])
    failed = rows["li@example.com"]
    assert failed["status"] == "failed"
    assert failed["smtp_code"] == 550
    assert "mailbox li does not exist" in failed["smtp_reply"]
    assert failed["attempts"] == 1
    assert [rows[e]["status"] for e in ("wang@example.org", "zhang@example.net")] == ["sent", "sent"]


def test_550_at_end_of_data_is_failed_too(store: Store, smtp_server: CaptureServer, run_cli) -> None:
    add_subscribers(store, THREE)
    smtp_server.set_rule("zhang@example.net", Rule(stage="data", code=554, text="5.7.1 message rejected as spam"))
    result = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))
    assert result.returncode == 3, result.stdout + result.stderr
    row = log_rows(run_cli, campaigns(run_cli)[0]["id"])["zhang@example.net"]
    assert (row["status"], row["smtp_code"]) == ("failed", 554)
    assert "rejected as spam" in row["smtp_reply"]


async def test_451_is_deferred_then_retry_sends_it_with_the_same_message_id(
    store: Store, config: Config, smtp_server: CaptureServer, run_cli
) -> None:
    add_subscribers(store, THREE)
    smtp_server.set_rule("li@example.com", Rule(stage="rcpt", code=451, text="4.7.1 greylisted, try later", times=1))
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))

    first = await send_issue(store, config, SAMPLE_ISSUE, "bulletin", SendOptions(), settings)

    assert first.counts == {"sent": 2, "deferred": 1}
    assert not first.failed
    deferred = log_rows(run_cli, first.campaign_id)["li@example.com"]
    assert deferred["status"] == "deferred"
    assert deferred["smtp_code"] == 451
    assert "greylisted" in deferred["smtp_reply"]
    assert deferred["next_attempt"]
    assert deferred["next_attempt"] > deferred["updated"]
    assert deferred["message_id"]
    assert len(smtp_server.received) == 2

    # Its backoff has not passed: a due-only retry leaves it alone.
    early = await retry_campaign(store, config, str(first.campaign_id), SendOptions(), settings, due_only=True)
    assert early.counts == {"sent": 2, "deferred": 1}
    assert len(smtp_server.received) == 2

    second = await retry_campaign(store, config, str(first.campaign_id), SendOptions(), settings)

    assert second.counts == {"sent": 3}
    received = smtp_server.received
    assert len(received) == 3  # only the deferred one was sent again
    assert received[-1].rcpt_tos == ("li@example.com",)
    row = log_rows(run_cli, first.campaign_id)["li@example.com"]
    assert row["status"] == "sent"
    assert row["smtp_code"] == 250
    assert row["attempts"] == 2
    assert row["message_id"] == deferred["message_id"] == message_id_of(received[-1])
    assert all(r["attempts"] == 1 for e, r in log_rows(run_cli, first.campaign_id).items() if e != "li@example.com")


def test_retry_command_sends_the_deferred(store: Store, smtp_server: CaptureServer, run_cli) -> None:
    add_subscribers(store, THREE)
    smtp_server.set_rule("wang@example.org", Rule(stage="data", code=452, text="4.2.2 mailbox full", times=1))
    port = str(smtp_server.port)
    sent = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--max-wait", "0", "--smtp-port", port)
    assert sent.returncode == 0
    campaign_id = campaigns(run_cli)[0]["id"]
    assert log_rows(run_cli, campaign_id)["wang@example.org"]["status"] == "deferred"

    result = run_cli("retry", str(campaign_id), env={"MAILER_SMTP_PORT": port})

    assert result.returncode == 0, result.stderr
    assert "3 sent" in result.stdout
    assert [c.rcpt_tos for c in smtp_server.received].count(("wang@example.org",)) == 1
    assert log_rows(run_cli, campaign_id)["wang@example.org"]["attempts"] == 2


def test_connection_refused_exits_4_and_marks_nobody(store: Store, run_cli) -> None:
    add_subscribers(store, THREE)
    closed = free_port()

    result = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(closed))

    assert result.returncode == 4, result.stdout + result.stderr
    assert_one_error_line(result.stderr)
    assert str(closed) in result.stderr
    assert campaigns(run_cli, "--tests") == []
    failed = store.conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'failed'").fetchone()[0]
    assert failed == 0


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize(("password", "code"), [("right-pw-Zq7", 0), ("wrong-pw-Xk9", 4)])
def test_smtp_login(store: Store, tmp_path: Path, run_cli, password: str, code: int) -> None:
    add_subscribers(store, THREE)
    with CaptureServer(tmp_path / "auth-outbox", users={"u": "right-pw-Zq7"}) as server:
        result = run_cli(
            "send",
            str(SAMPLE_ISSUE),
            "--list",
            "bulletin",
            "--yes",
            "--smtp-port",
            str(server.port),
            env={"MAILER_SMTP_USER": "u", "MAILER_SMTP_PASSWORD": password},
        )
        received = server.received
    assert result.returncode == code, result.stdout + result.stderr
    assert password not in result.stdout + result.stderr
    if code == 4:
        assert_one_error_line(result.stderr)
        assert "login" in result.stderr
        assert received == []
        assert campaigns(run_cli) == []
    else:
        assert len(received) == 3


def test_sending_again_resumes_and_never_resends(store: Store, smtp_server: CaptureServer, run_cli) -> None:
    add_subscribers(store, THREE)
    send = ("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))
    first = run_cli(*send)
    assert first.returncode == 0, first.stderr
    assert len(smtp_server.received) == 3

    again = run_cli(*send)

    assert again.returncode == 0, again.stderr
    assert len(smtp_server.received) == 3
    assert "3 recipients: 3 sent" in again.stdout
    assert len(campaigns(run_cli)) == 1

    # The recipient list is the snapshot taken when the campaign was created.
    add_subscribers(store, ["late@example.org"])
    late = run_cli(*send)
    assert late.returncode == 0, late.stderr
    assert len(smtp_server.received) == 3
    assert "late@example.org" not in log_rows(run_cli, campaigns(run_cli)[0]["id"])


async def test_unsubscribed_while_queued_is_skipped(store: Store, config: Config, smtp_server: CaptureServer) -> None:
    subs = add_subscribers(store, THREE)
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    stop = asyncio.Event()
    stop.set()  # stopped before the first message: the campaign and its snapshot exist, everyone is queued

    halted = await send_issue(store, config, SAMPLE_ISSUE, "bulletin", SendOptions(), settings, stop=stop)

    assert halted.interrupted
    assert halted.counts == {"queued": 3}
    assert smtp_server.received == []
    assert store.subscribers.unsubscribe(subs[1].id, source="test")

    resumed = await send_issue(store, config, SAMPLE_ISSUE, "bulletin", SendOptions(), settings)

    assert resumed.campaign_id == halted.campaign_id
    assert resumed.counts == {"sent": 2, "skipped": 1}
    assert sorted(c.rcpt_tos[0] for c in smtp_server.received) == ["wang@example.org", "zhang@example.net"]
    status = dict(
        store.conn.execute(
            "SELECT email, status FROM deliveries WHERE campaign_id = ?", (resumed.campaign_id,)
        ).fetchall()
    )
    assert status["li@example.com"] == DeliveryStatus.SKIPPED


def test_template_error_stops_before_anything_is_sent(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add_subscribers(store, THREE)
    issue = tmp_path / "broken-issue.md"
    issue.write_text('---\nsubject: "第1期"\n---\n你好 {{ nope }}\n\n## 一\n正文\n', encoding="utf-8")

    result = run_cli("send", str(issue), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))

    assert result.returncode == 1, result.stdout + result.stderr
    assert_one_error_line(result.stderr)
    assert "broken-issue.md" in result.stderr
    assert smtp_server.received == []
    assert smtp_server.connections == 0
    assert campaigns(run_cli, "--tests") == []


def test_dry_run_sends_nothing_and_counts_recipients(store: Store, smtp_server: CaptureServer, run_cli) -> None:
    add_subscribers(store, [*THREE, "zhao@example.org"])
    store.subscribers.unsubscribe(store.subscribers.get(store.lists.get("bulletin").id, "zhao@example.org").id, "test")

    result = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--dry-run", "--smtp-port", str(smtp_server.port))

    assert result.returncode == 0, result.stderr
    assert "would send to 3 recipients" in result.stdout
    assert smtp_server.received == []
    assert campaigns(run_cli, "--tests") == []


def test_test_send_goes_to_one_address_and_is_marked_test(store: Store, smtp_server: CaptureServer, run_cli) -> None:
    add_subscribers(store, THREE)

    result = run_cli(
        "send",
        str(SAMPLE_ISSUE),
        "--list",
        "bulletin",
        "--test",
        "me@example.org",
        "--smtp-port",
        str(smtp_server.port),
    )

    assert result.returncode == 0, result.stderr
    assert "test message" in result.stdout
    (captured,) = smtp_server.received
    assert captured.rcpt_tos == ("me@example.org",)
    assert captured.mail_from.startswith("bounces+")
    assert campaigns(run_cli) == []
    (test_campaign,) = campaigns(run_cli, "--tests")
    assert test_campaign["test"] is True
    assert test_campaign["counts"] == {"sent": 1}
    # The real send afterwards still goes to everyone on the list.
    real = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))
    assert real.returncode == 0, real.stderr
    assert sorted(c.rcpt_tos[0] for c in smtp_server.received[1:]) == sorted(THREE)


def test_machine_output_of_log_and_campaigns(store: Store, smtp_server: CaptureServer, run_cli) -> None:
    add_subscribers(store, THREE)
    smtp_server.set_rule("li@example.com", Rule(stage="rcpt", code=550, text="5.1.1 no such user"))
    run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))

    (campaign,) = campaigns(run_cli)
    assert {"id", "issue", "list", "created", "counts"} <= set(campaign)
    assert campaign["list"] == "bulletin"
    assert campaign["issue"] == "sample"
    assert campaign["counts"] == {"sent": 2, "failed": 1}

    as_json = run_cli("log", str(campaign["id"]), "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert isinstance(rows, list)
    assert len(rows) == 3
    for row in rows:
        assert {"email", "status", "attempts", "smtp_code", "smtp_reply", "message_id", "updated"} <= set(row)
    assert sorted(r["email"] for r in rows) == sorted(THREE)

    failed_only = json.loads(run_cli("log", str(campaign["id"]), "--json", "--status", "failed").stdout)
    assert [r["email"] for r in failed_only] == ["li@example.com"]

    as_csv = run_cli("log", str(campaign["id"]), "--csv")
    assert as_csv.returncode == 0, as_csv.stderr
    table = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert {"email", "status", "attempts", "smtp_code", "smtp_reply", "message_id"} <= set(table[0])
    assert len(table) == 4
    by_email = {r[table[0].index("email")]: r for r in table[1:]}
    assert by_email["li@example.com"][table[0].index("smtp_code")] == "550"

    missing = run_cli("log", "999", "--json")
    assert missing.returncode == 1
    assert_one_error_line(missing.stderr)
    assert missing.stdout == ""


def test_an_attribute_no_subscriber_has_stops_the_send_before_any_message(
    store: Store,
    smtp_server: CaptureServer,
    tmp_path: Path,
    run_cli,  # type: ignore[no-untyped-def]
) -> None:
    assert run_cli("subs", "import", str(SAMPLE_CSV), "--list", "bulletin").returncode == 0
    issue = tmp_path / "typo.md"
    issue.write_text(
        "---\nsubject: 测试\n---\n\n{{ subscriber.name }}（{{ subscriber.cty }}）您好。\n\n## 正文\n\n内容。\n",
        encoding="utf-8",
    )
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    result = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {issue}: {{{{ subscriber.cty }}}} is not an attribute of any subscriber of list 'bulletin' "
        "(its subscribers have: city, organisation)"
    )
    assert smtp_server.received == []
    # An attribute some subscribers lack is fine, and said.
    run_cli("subs", "add", "new@example.org", "--list", "bulletin")
    issue.write_text(issue.read_text(encoding="utf-8").replace("cty", "city"), encoding="utf-8")
    result = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "1 of 21 subscribers have no 'city'; it will be blank for them" in result.stderr


def test_sending_a_complete_campaign_again_says_nothing_was_sent(
    store: Store,
    smtp_server: CaptureServer,
    run_cli,  # type: ignore[no-untyped-def]
) -> None:
    add_subscribers(store, THREE)
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    assert run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", env=env).returncode == 0
    again = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", env=env)
    assert again.returncode == 0
    assert "was already complete: nothing was sent now" in again.stderr
    assert len(smtp_server.received) == 3


# ---- what a campaign is: the content and the list, not the file name ---------------------------------------------


def write_issue(path: Path, subject: str, body: str = "正文。") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\nsubject: {subject}\n---\n\n你好。\n\n## 本期\n\n{body}\n", encoding="utf-8")
    return path


def test_a_new_issue_with_the_name_of_a_finished_one_is_a_new_campaign(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add_subscribers(store, THREE)
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    november = write_issue(tmp_path / "nov" / "issue.md", "十一月")
    december = write_issue(tmp_path / "dec" / "issue.md", "十二月")
    assert run_cli("send", str(november), "--list", "bulletin", "--yes", env=env).returncode == 0

    result = run_cli("send", str(december), "--list", "bulletin", "--yes", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "already complete" not in result.stderr
    subjects = Counter(str(message_from_bytes(c.data)["Subject"]) for c in smtp_server.received)
    assert len(smtp_server.received) == 6 and len(subjects) == 2  # each issue to each reader
    assert [(c["issue"], c["counts"]) for c in campaigns(run_cli)] == [("issue", {"sent": 3})] * 2


def test_a_changed_issue_for_a_campaign_in_progress_is_refused_until_it_is_finished_or_cancelled(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add_subscribers(store, THREE)
    smtp_server.set_rule("li@example.com", Rule(stage="rcpt", code=451, text="4.7.1 greylisted"))
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    issue = write_issue(tmp_path / "issue.md", "第1期")
    first = run_cli("send", str(issue), "--list", "bulletin", "--yes", "--max-wait", "0", env=env)
    assert first.returncode == 0, first.stderr
    (campaign,) = campaigns(run_cli)
    assert campaign["counts"] == {"sent": 2, "deferred": 1}
    with store.transaction():  # as a run stopped before li's turn leaves it: queued, in the middle of sending
        store.conn.execute("UPDATE deliveries SET status = 'queued' WHERE email = 'li@example.com'")
    write_issue(issue, "第1期", body="正文（更正）。")  # the editor fixes a typo and sends again
    connections = smtp_server.connections

    refused = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert_one_error_line(refused.stderr)
    line = refused.stderr
    assert f"campaign {campaign['id']}" in line and "not finished (1 recipient(s) still to send)" in line
    assert f"mailer retry {campaign['id']}" in line and f"mailer campaigns cancel {campaign['id']}" in line
    assert smtp_server.connections == connections and len(smtp_server.received) == 2  # nothing sent
    cancelled = run_cli("campaigns", "cancel", str(campaign["id"]))
    assert cancelled.returncode == 0, cancelled.stderr
    assert "1 recipient(s) not reached are skipped, 2 had it" in cancelled.stdout
    smtp_server.set_rule("li@example.com", Rule())
    again = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)
    assert again.returncode == 0, again.stderr
    assert [c["counts"] for c in campaigns(run_cli)] == [{"sent": 2, "skipped": 1}, {"sent": 3}]
    retried = run_cli("retry", str(campaign["id"]), env=env)  # a cancelled campaign stays cancelled
    assert retried.returncode == 1 and "was cancelled" in retried.stderr
    assert len(smtp_server.received) == 5


def test_a_campaign_being_sent_cannot_be_cancelled_under_its_sender(
    store: Store,
    tmp_path: Path,
    run_cli_process,  # type: ignore[no-untyped-def]
) -> None:
    list_id = store.lists.get("bulletin").id
    add_subscribers(store, THREE)
    campaign = store.campaigns.create(list_id, "n1", "第1期", "n1.md", "hash", {}, "salt")
    store.leases.acquire(campaign.id)  # this (live) test process is sending it

    result = run_cli_process("campaigns", "cancel", str(campaign.id))  # another process than the holder

    assert result.returncode == 1
    assert_one_error_line(result.stderr)
    assert f"campaign {campaign.id} is being sent by process {os.getpid()}" in result.stderr
    assert store.deliveries.counts(campaign.id) == {"queued": 3}


# ---- asking first, and saying so off a terminal -------------------------------------------------------------------


def test_a_real_send_off_a_terminal_without_yes_is_a_usage_error_and_sends_nothing(
    store: Store,
    smtp_server: CaptureServer,
    run_cli,  # type: ignore[no-untyped-def]
) -> None:
    add_subscribers(store, THREE)

    result = run_cli(
        "send", str(SAMPLE_ISSUE), "--list", "bulletin", "--smtp-port", str(smtp_server.port), input=""
    )  # stdin a pipe, as from cron

    assert result.returncode == 2, result.stdout + result.stderr
    assert_one_error_line(result.stderr)
    assert "--yes" in result.stderr and "nothing was sent" in result.stderr
    assert smtp_server.connections == 0
    assert campaigns(run_cli, "--tests") == []


# ---- retry: on purpose, with progress, on schedule --------------------------------------------------------------


def test_retry_failed_requeues_the_failed_on_purpose_but_not_who_left_since(
    store: Store,
    smtp_server: CaptureServer,
    run_cli,  # type: ignore[no-untyped-def]
) -> None:
    subs = add_subscribers(store, [*THREE, "zhao@example.org"])
    for email in ("li@example.com", "zhang@example.net", "zhao@example.org"):
        smtp_server.set_rule(email, Rule(stage="data", code=554, text="5.7.1 blocked by policy", times=1))
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    first = run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", env=env)
    assert first.returncode == 3
    campaign_id = campaigns(run_cli)[0]["id"]
    store.subscribers.unsubscribe(subs[3].id, "test")  # zhao leaves meanwhile
    assert run_cli("retry", str(campaign_id), env=env).returncode == 3  # without --failed: nothing to do

    result = run_cli("retry", str(campaign_id), "--failed", env=env)

    assert result.returncode == 3, result.stdout + result.stderr
    assert "2 failed recipient(s) queued again; 1 left failed: unsubscribed or suppressed since" in result.stderr
    rows = log_rows(run_cli, campaign_id)
    assert {e: r["status"] for e, r in rows.items()} == {
        "wang@example.org": "sent",
        "li@example.com": "sent",
        "zhang@example.net": "sent",
        "zhao@example.org": "failed",
    }
    assert Counter(c.rcpt_tos[0] for c in smtp_server.received) == Counter(THREE)


def test_retry_says_what_it_waits_for_and_due_only_returns_at_once_when_nothing_is_due(
    store: Store,
    smtp_server: CaptureServer,
    run_cli,  # type: ignore[no-untyped-def]
) -> None:
    add_subscribers(store, THREE)
    smtp_server.set_rule("li@example.com", Rule(stage="rcpt", code=451, text="4.7.1 greylisted", times=2))
    env = {"MAILER_SMTP_PORT": str(smtp_server.port), "MAILER_RETRY_BASE": "0.5"}
    assert run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--max-wait", "0", env=env).returncode == 0
    campaign_id = campaigns(run_cli)[0]["id"]

    waited = run_cli("retry", str(campaign_id), env=env)  # deferred again once, then due within --max-wait

    assert waited.returncode == 0, waited.stderr
    assert "waiting" in waited.stderr and "for the retry time of 1 deferred recipient(s)" in waited.stderr
    assert "3 sent" in waited.stdout
    smtp_server.set_rule("li@example.com", Rule(stage="rcpt", code=451, text="4.7.1 greylisted", times=1))
    store.conn.execute("UPDATE deliveries SET status = 'queued' WHERE email = 'li@example.com'")
    assert (
        run_cli("retry", str(campaign_id), "--max-wait", "0", env={**env, "MAILER_RETRY_BASE": "3600"}).returncode == 0
    )
    connections = smtp_server.connections

    due_only = run_cli("retry", str(campaign_id), "--due-only", env=env)

    assert due_only.returncode == 0, due_only.stderr
    assert "nothing is due yet; the next retry time is" in due_only.stderr
    assert smtp_server.connections == connections  # it did not even connect, let alone wait


def test_the_log_table_shows_the_message_id(
    store: Store,
    smtp_server: CaptureServer,
    run_cli,  # type: ignore[no-untyped-def]
) -> None:
    add_subscribers(store, THREE)
    run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", "--smtp-port", str(smtp_server.port))
    campaign_id = campaigns(run_cli)[0]["id"]

    table = run_cli("log", str(campaign_id))

    assert table.returncode == 0, table.stderr
    assert "message-id" in table.stdout
    for row in log_rows(run_cli, campaign_id).values():
        assert row["message_id"] in table.stdout


@pytest.mark.parametrize(
    ("toml", "args", "sessions"),
    [
        ("", (), 4),  # the default
        ("concurrency = 2\n", (), 2),  # mailer.toml's, which send and retry used to read and ignore
        ("concurrency = 2\n", ("--concurrency", "3"), 3),  # the option wins
    ],
)
def test_send_and_retry_take_their_sessions_from_mailer_toml_unless_told(
    tmp_path: Path,
    store: Store,
    run_cli,
    monkeypatch: pytest.MonkeyPatch,
    toml: str,
    args: tuple[str, ...],
    sessions: int,
) -> None:
    import mailer.send
    from mailer.models import SendSummary

    (tmp_path / "mailer.toml").write_text(toml, encoding="utf-8")
    seen: list[int] = []

    async def spy(*given: object, **named: object) -> SendSummary:
        options = next(value for value in given if isinstance(value, SendOptions))
        seen.append(options.concurrency)
        return SendSummary(1)

    monkeypatch.setattr(mailer.send, "send_issue", spy)
    monkeypatch.setattr(mailer.send, "retry_campaign", spy)
    assert run_cli("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes", *args).returncode == 0
    assert run_cli("retry", "1", *args).returncode == 0
    assert seen == [sessions, sessions]


# ---- an operator's pause outlives the sender ------------------------------------------------------------------------


def test_a_paused_campaign_is_sent_by_nobody_until_it_is_resumed(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add_subscribers(store, THREE)
    smtp_server.set_rule("li@example.com", Rule(stage="rcpt", code=451, text="4.7.1 greylisted"))
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    issue = write_issue(tmp_path / "issue.md", "第1期")
    first = run_cli("send", str(issue), "--list", "bulletin", "--yes", "--max-wait", "0", env=env)
    assert first.returncode == 0, first.stderr
    (campaign,) = campaigns(run_cli)
    paused = run_cli("campaigns", "pause", str(campaign["id"]))
    assert paused.returncode == 0, paused.stderr
    assert f"paused with 2 sent and 1 waiting; go on with: mailer campaigns resume {campaign['id']}" in paused.stdout
    assert campaigns(run_cli)[0]["state"] == "paused"
    smtp_server.set_rule("li@example.com", Rule())
    connections = smtp_server.connections

    for refused in (
        run_cli("retry", str(campaign["id"]), env=env),
        run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env),
        run_cli("campaigns", "pause", str(campaign["id"])),
    ):
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert_one_error_line(refused.stderr)
        assert f"campaign {campaign['id']} is paused" in refused.stderr
    assert len(smtp_server.received) == 2 and campaigns(run_cli)[0]["state"] == "paused"

    resumed = run_cli("campaigns", "resume", str(campaign["id"]))
    assert resumed.returncode == 0, resumed.stderr
    retried = run_cli("retry", str(campaign["id"]), env=env)
    assert retried.returncode == 0, retried.stderr
    assert len(smtp_server.received) == 3 and smtp_server.connections > connections
    assert campaigns(run_cli)[0]["state"] == "finished"
    again = run_cli("campaigns", "resume", str(campaign["id"]))
    assert again.returncode == 1 and "is finished: only a paused one can be resumed" in again.stderr


def test_a_dry_run_of_a_campaign_that_exists_counts_who_a_send_would_still_reach(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add_subscribers(store, THREE)
    smtp_server.set_rule("li@example.com", Rule(stage="rcpt", code=451, text="4.7.1 greylisted"))
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    issue = write_issue(tmp_path / "issue.md", "第1期")
    assert run_cli("send", str(issue), "--list", "bulletin", "--yes", "--max-wait", "0", env=env).returncode == 0

    dry = run_cli("send", str(issue), "--list", "bulletin", "--dry-run", env=env)

    assert dry.returncode == 0, dry.stderr
    out = dry.stdout + dry.stderr
    assert "would send to 1 recipients" in out, out  # the deferred one: the send resumes the campaign
    assert "campaign 1 for this audience already (sending, 2 sent): a send resumes it, and reaches 1" in out
    smtp_server.set_rule("li@example.com", Rule())
    assert run_cli("retry", "1", env=env).returncode == 0
    done = run_cli("send", str(issue), "--list", "bulletin", "--dry-run", env=env)
    assert "would send to 0 recipients" in done.stdout + done.stderr
