"""Returned mail: DSN fixtures (RFC 3464 5.1.1 and 4.2.2, Gmail, Exchange, qmail, unknown message, the same DSN
twice), complaints and mailto unsubscribes, read from a Maildir, an mbox and .eml files by the real CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import mailbox
import quopri
import re
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

import httpx
import pytest

from mailer.bounces import parse_returned
from mailer.capture import CaptureServer
from mailer.config import Config
from mailer.engine import SendOptions
from mailer.models import DeliveryStatus, ReturnedKind, Subscriber, SubscriberStatus
from mailer.send import send_issue
from mailer.smtp import relays
from mailer.store import Store
from mailer.web import create_app
from tests.conftest import SAMPLE_ISSUE, LiveWeb, web_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "returned"
READERS = [f"reader{i}@example.net" for i in range(8)]


@dataclass(frozen=True)
class Sent:
    email: str
    verp: str
    message_id: str
    unsubscribe: str  # the mailto address of List-Unsubscribe


def fill(name: str, sent: Sent) -> bytes:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    for marker, value in (
        ("@@VERP@@", sent.verp),
        ("@@RCPT@@", sent.email),
        ("@@MSGID@@", sent.message_id),
        ("@@UNSUB@@", sent.unsubscribe),
        ("@@ESC@@", "\x1b"),
        ("@@BEL@@", "\x07"),
    ):
        text = text.replace(marker, value)
    return text.encode("utf-8")


def sent_messages(smtp: CaptureServer) -> dict[str, Sent]:
    out = {}
    for captured in smtp.received:
        msg = message_from_bytes(captured.data)
        mailto = str(msg["List-Unsubscribe"]).split("<mailto:", 1)[1].split("?", 1)[0]
        out[captured.rcpt_tos[0]] = Sent(
            captured.rcpt_tos[0], captured.mail_from, str(msg["Message-ID"]).strip(), mailto
        )
    return out


@pytest.fixture
async def campaign(store: Store, config: Config, smtp_server: CaptureServer) -> dict[str, Sent]:
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email=e, name="读者") for e in READERS], "test")
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    summary = await send_issue(store, config, SAMPLE_ISSUE, "bulletin", SendOptions(concurrency=2), settings)
    assert summary.counts == {"sent": len(READERS)}
    return sent_messages(smtp_server)


def delivery_status(store: Store, email: str) -> str:
    return str(
        store.conn.execute(
            "SELECT status FROM deliveries WHERE email = ? ORDER BY id DESC LIMIT 1", (email,)
        ).fetchone()[0]
    )


def scan_json(run_cli, path: Path, env: dict[str, str] | None = None) -> list[dict]:  # type: ignore[no-untyped-def]
    result = run_cli("bounces", "scan", str(path), "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---- parsing (pure) ----------------------------------------------------------------------------------------------

SAMPLE = Sent(
    "li.na@example.net",
    "bounces+aaaabbbbccccddddeeee@example.org",
    "<m.1.2.abc@example.org>",
    "unsubscribe+ffffgggghhhhiiiijjjj@example.org",
)


@pytest.mark.parametrize(
    ("fixture", "kind", "status"),
    [
        ("rfc3464-5.1.1.eml", ReturnedKind.HARD, "5.1.1"),
        ("rfc3464-4.2.2.eml", ReturnedKind.SOFT, "4.2.2"),
        ("gmail.eml", ReturnedKind.HARD, "5.1.1"),
        ("exchange.eml", ReturnedKind.HARD, "5.1.10"),
        ("qmail.eml", ReturnedKind.HARD, "5.1.1"),
        ("complaint-arf.eml", ReturnedKind.COMPLAINT, ""),
        ("mailto-unsubscribe.eml", ReturnedKind.UNSUBSCRIBE, ""),
    ],
)
def test_each_kind_of_report_is_read(fixture: str, kind: ReturnedKind, status: str) -> None:
    report = parse_returned(fill(fixture, SAMPLE))
    assert [f.kind for f in report.findings] == [kind]
    finding = report.findings[0]
    assert finding.status == status
    if kind in (ReturnedKind.HARD, ReturnedKind.SOFT, ReturnedKind.COMPLAINT):
        assert finding.email == SAMPLE.email
    if kind == ReturnedKind.UNSUBSCRIBE:
        assert report.unsubscribe_tokens == ["ffffgggghhhhiiiijjjj"]
    elif fixture != "exchange.eml":  # Exchange answers the From address: no VERP, only the Message-ID
        assert report.verp_tokens[0] == "aaaabbbbccccddddeeee"
    if kind != ReturnedKind.UNSUBSCRIBE:
        assert SAMPLE.message_id in report.message_ids


def test_diagnostic_is_one_line_and_the_key_is_the_dsn_message_id() -> None:
    report = parse_returned(fill("gmail.eml", SAMPLE))
    assert "\n" not in report.findings[0].diagnostic and "does not exist" in report.findings[0].diagnostic
    assert report.key == "mid:<67456f0b.050a0220.1c2d3e.8f9aGMR@mx.google.com>"


def test_an_auto_reply_is_not_a_bounce() -> None:
    report = parse_returned(fill("out-of-office.eml", SAMPLE))
    assert all(f.kind == ReturnedKind.OTHER for f in report.findings)


# ---- scanning a mailbox: matching and recording --------------------------------------------------------------------


def test_scan_a_maildir_matches_records_and_counts_once(
    campaign: dict[str, Sent], store: Store, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    r = [campaign[e] for e in READERS]
    box = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    for raw in (
        fill("rfc3464-5.1.1.eml", r[0]),
        fill("gmail.eml", r[1]),
        fill("exchange.eml", r[2]),
        fill("qmail.eml", r[3]),
        fill("rfc3464-4.2.2.eml", r[4]),
        fill("unknown-message.eml", r[0]),
        fill("rfc3464-5.1.1.eml", r[0]),  # the same DSN twice
        fill("out-of-office.eml", r[5]),
    ):
        box.add(raw)

    rows = scan_json(run_cli, tmp_path / "Maildir")
    by_result = sorted((row["email"], row["kind"], row["result"].split(" (")[0]) for row in rows)
    assert by_result == sorted(
        [
            (r[0].email, "hard", "bounced and suppressed"),
            (r[0].email, "hard", "duplicate: already counted"),
            (r[1].email, "hard", "bounced and suppressed"),
            (r[2].email, "hard", "bounced and suppressed"),
            (r[3].email, "hard", "bounced and suppressed"),
            (r[4].email, "soft", "soft bounce 1/3 counted"),
            ("stranger@example.net", "hard", "unmatched: no valid VERP address or known Message-ID"),
            ("", "other", "ignored: not a bounce"),
        ]
    )
    exchange = next(row for row in rows if row["email"] == r[2].email)
    assert "matched by message-id" in exchange["result"]
    for email in (r[0].email, r[1].email, r[2].email, r[3].email):
        assert delivery_status(store, email) == DeliveryStatus.BOUNCED
        assert store.suppressions.get(email).reason == "bounced"
        assert store.subscribers.get(store.lists.get("bulletin").id, email).status == SubscriberStatus.BOUNCED
    assert delivery_status(store, r[4].email) == DeliveryStatus.SENT
    assert not store.suppressions.is_suppressed(r[4].email)
    code, reply = store.conn.execute(
        "SELECT smtp_code, smtp_reply FROM deliveries WHERE email = ?", (r[0].email,)
    ).fetchone()
    assert code == 550 and reply.startswith("5.1.1 ")  # the receiver's answer, not our relay's 250
    assert store.suppressions.get(r[0].email).detail.startswith("5.1.1 ")

    again = scan_json(run_cli, tmp_path / "Maildir")  # reading the mailbox again changes nothing
    assert {row["result"] for row in again if row["email"] in {x.email for x in r[:5]}} == {
        "duplicate: already counted"
    }
    assert store.returned.soft_bounce_count(r[4].email) == 1

    log = json.loads(run_cli("log", "1", "--status", "bounced", "--json").stdout)
    assert sorted(row["email"] for row in log) == sorted(x.email for x in r[:4])


def test_soft_bounces_suppress_after_the_limit(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email="full@example.net")], "test")
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    issues = []
    for n in range(2):
        issue = tmp_path / f"issue{n}.md"
        issue.write_text(f"---\nsubject: 第{n}期\n---\n\n## 行业动态\n\n第{n}期正文。\n", encoding="utf-8")
        issues.append(issue)
    for n, issue in enumerate(issues):
        asyncio.run(send_issue(store, config, issue, "bulletin", SendOptions(), settings))
        sent = sent_messages(smtp_server)["full@example.net"]
        raw = fill("rfc3464-4.2.2.eml", sent).replace(b"<20261125031540.7Yc3@", f"<dsn{n}@".encode())
        (tmp_path / f"dsn{n}.eml").write_bytes(raw)
        rows = scan_json(run_cli, tmp_path / f"dsn{n}.eml", env={"MAILER_SOFT_BOUNCE_LIMIT": "2"})
        assert rows[0]["result"].startswith(f"soft bounce {n + 1}/2"), rows
        assert store.suppressions.is_suppressed("full@example.net") == (n == 1)
    assert store.suppressions.get("full@example.net").reason == "soft-bounces"


def test_complaint_and_mailto_unsubscribe_from_an_mbox(
    campaign: dict[str, Sent], store: Store, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    r = [campaign[e] for e in READERS]
    box = mailbox.mbox(str(tmp_path / "returned.mbox"), create=True)
    for raw in (
        fill("complaint-arf.eml", r[5]),
        fill("mailto-unsubscribe.eml", r[6]),
        fill("mailto-unsubscribe.eml", r[6]).replace(b"unsub-request-1", b"unsub-request-2"),
    ):
        box.add(raw)
    box.flush()
    rows = scan_json(run_cli, tmp_path / "returned.mbox")
    assert [(row["kind"], row["email"], row["result"].split(" (")[0]) for row in rows] == [
        ("complaint", r[5].email, "complaint: unsubscribed and suppressed"),
        ("unsubscribe", r[6].email, "unsubscribed"),
        ("unsubscribe", r[6].email, "already unsubscribed"),
    ]
    list_id = store.lists.get("bulletin").id
    assert store.subscribers.get(list_id, r[6].email).status == SubscriberStatus.UNSUBSCRIBED
    sub6 = store.subscribers.get(list_id, r[6].email)
    assert store.subscribers.last_unsubscribe(sub6.id).source == "mailto"
    assert store.suppressions.get(r[5].email).reason == "complained"


def test_a_folder_of_eml_files_and_a_forged_unsubscribe(
    campaign: dict[str, Sent], store: Store, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "returned"
    folder.mkdir()
    r = campaign[READERS[7]]
    forged = Sent(r.email, r.verp, r.message_id, "unsubscribe+" + "a" * 24 + "@example.org")
    (folder / "1.eml").write_bytes(fill("mailto-unsubscribe.eml", forged))
    rows = scan_json(run_cli, folder)
    assert rows[0]["result"].startswith("unmatched") and not rows[0]["matched"]
    assert store.subscribers.get(store.lists.get("bulletin").id, r.email).status == SubscriberStatus.ACTIVE


def test_a_broken_message_is_skipped_and_the_rest_is_read(
    campaign: dict[str, Sent], store: Store, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    box = mailbox.mbox(str(tmp_path / "mixed.mbox"), create=True)
    box.add(b"Subject: no sender at all\n\nnot a bounce, no From: header\n")
    box.add(bytes(range(256)) * 4)
    box.add(fill("rfc3464-5.1.1.eml", campaign[READERS[2]]))
    box.flush()
    rows = scan_json(run_cli, tmp_path / "mixed.mbox")
    assert rows[-1]["result"].startswith("bounced") and rows[-1]["email"] == READERS[2]
    assert all(row["result"].startswith("ignored") for row in rows[:-1])
    (tmp_path / "empty.mbox").write_bytes(b"")
    assert scan_json(run_cli, tmp_path / "empty.mbox") == []


def test_scan_of_a_missing_path_is_one_error_line(store: Store, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("bounces", "scan", str(tmp_path / "nope"))
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "does not exist" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("bounces", "scan", str(empty))
    assert result.returncode == 1 and "neither a Maildir nor a folder with .eml files" in result.stderr


# ---- end to end: one-click unsubscribe + hard bounce, then the next issue reaches neither ------------------------


def test_unsubscribed_and_bounced_readers_miss_the_next_issue(
    store: Store,
    config: Config,
    smtp_server: CaptureServer,
    tmp_path: Path,
    run_cli,  # type: ignore[no-untyped-def]
) -> None:
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email=e) for e in READERS[:4]], "test")
    holder: dict[str, Config] = {}

    def make(url: str) -> object:
        holder["config"] = web_config(config, smtp_server, url)
        return create_app(holder["config"])

    with LiveWeb(make):
        web = holder["config"]
        settings = relays(web)
        asyncio.run(send_issue(store, web, SAMPLE_ISSUE, "bulletin", SendOptions(), settings))
        first = sent_messages(smtp_server)
        leaving = message_from_bytes(next(c.data for c in smtp_server.received if c.rcpt_tos[0] == READERS[0]))
        url = str(leaving["List-Unsubscribe"]).split("<", 1)[1].split(">", 1)[0]
        assert url.startswith(web.base_url + "/u/")
        reply = httpx.post(url, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
        assert reply.status_code == 200
    (tmp_path / "dsn.eml").write_bytes(fill("rfc3464-5.1.1.eml", first[READERS[1]]))
    assert scan_json(run_cli, tmp_path / "dsn.eml")[0]["result"].startswith("bounced")

    next_issue = tmp_path / "next.md"
    next_issue.write_text("---\nsubject: 知识产权运营简报 第13期\n---\n\n## 行业动态\n\n下一期。\n", encoding="utf-8")
    before = len(smtp_server.received)
    summary = asyncio.run(send_issue(store, web, next_issue, "bulletin", SendOptions(), settings))
    got = sorted(c.rcpt_tos[0] for c in smtp_server.received[before:])
    assert got == sorted(READERS[2:4])
    assert summary.counts == {"sent": 2}

    # Re-importing them from a CSV does not bring them back.
    csv_path = tmp_path / "again.csv"
    csv_path.write_text("email\n" + "\n".join(READERS[:4]) + "\n", encoding="utf-8")
    assert run_cli("subs", "import", str(csv_path), "--list", "bulletin").returncode == 0
    assert store.subscribers.count_recipients(list_id) == 2


def test_suppressions_ls_and_remove(campaign: dict[str, Sent], store: Store, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    bounced = campaign[READERS[0]]
    (tmp_path / "dsn.eml").write_bytes(fill("rfc3464-5.1.1.eml", bounced))
    scan_json(run_cli, tmp_path / "dsn.eml")
    listed = json.loads(run_cli("suppressions", "ls", "--json").stdout)
    assert [(r["email"], r["reason"]) for r in listed] == [(bounced.email, "bounced")]
    list_id = store.lists.get("bulletin").id
    before = store.subscribers.count_recipients(list_id)
    result = run_cli("suppressions", "remove", bounced.email)
    assert result.returncode == 0, result.stderr
    assert store.subscribers.get(list_id, bounced.email).status == SubscriberStatus.ACTIVE
    assert store.subscribers.count_recipients(list_id) == before + 1
    again = run_cli("suppressions", "remove", bounced.email)
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "not suppressed" in again.stderr


# ---- forged reports: what arrives by mail is untrusted ----------------------------------------------------------


def interrupted_campaign(store: Store) -> int:
    """A second campaign whose snapshot was written and whose run stopped before anyone was mailed: every delivery
    queued, none with a Message-ID yet."""
    list_id = store.lists.get("bulletin").id
    campaign = store.campaigns.create(list_id, "interrupted", "第13期", "interrupted.md", "h", {}, "salt")
    assert store.deliveries.counts(campaign.id) == {"queued": len(READERS)}
    return campaign.id


@pytest.mark.parametrize("fixture", ["forged-blank-message-id.eml", "forged-complaint.eml"])
def test_a_blank_message_id_matches_no_delivery(
    fixture: str, campaign: dict[str, Sent], store: Store, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    interrupted_campaign(store)
    victim = campaign[READERS[7]]
    forged = Sent(victim.email, "bounces+" + "a" * 26 + "@example.org", "", victim.unsubscribe)  # no valid VERP
    assert parse_returned(fill(fixture, forged)).message_ids == []
    (tmp_path / "forged.eml").write_bytes(fill(fixture, forged))
    rows = scan_json(run_cli, tmp_path / "forged.eml")
    assert [row["result"].split(":")[0] for row in rows] == ["unmatched"], rows
    assert not store.suppressions.is_suppressed(victim.email)
    assert store.subscribers.get(store.lists.get("bulletin").id, victim.email).status == SubscriberStatus.ACTIVE


def test_a_message_id_matches_only_a_delivery_that_was_sent_with_it(campaign: dict[str, Sent], store: Store) -> None:
    interrupted = interrupted_campaign(store)
    assert store.returned.by_message_id("") is None
    sent = campaign[READERS[0]]
    assert store.returned.by_message_id(sent.message_id).email == READERS[0]
    # A Message-ID the engine may know before the first attempt names no mail that exists.
    store.conn.execute(
        "UPDATE deliveries SET message_id = '<mailer.x.1.abc@example.org>' WHERE campaign_id = ?", (interrupted,)
    )
    assert store.returned.by_message_id("<mailer.x.1.abc@example.org>") is None


def test_terminal_escapes_in_a_report_are_neither_stored_nor_printed(
    campaign: dict[str, Sent], store: Store, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    reader = campaign[READERS[1]]
    raw = fill("forged-blank-message-id.eml", reader).replace(b"=?utf-8?q?_?=", reader.message_id.encode())
    finding = parse_returned(raw).findings[0]
    assert finding.diagnostic == "550 5.1.1 User unknown"
    (tmp_path / "dsn.eml").write_bytes(raw)
    assert scan_json(run_cli, tmp_path / "dsn.eml")[0]["result"].startswith("bounced")
    suppression = store.suppressions.get(reader.email)
    assert suppression and (suppression.reason, suppression.detail) == ("bounced", "5.1.1 550 5.1.1 User unknown")
    # Rows stored before this check (or a relay's reply) are cleaned where they are printed too.
    store.conn.execute("UPDATE deliveries SET smtp_reply = '550 \x1b[2Jgone\x07' WHERE email = ?", (READERS[2],))
    for args in (("suppressions", "ls"), ("log", "1")):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.stdout), (args, result.stdout)
    assert "gone" in run_cli("log", "1").stdout


# ---- RFC 6533: reports about internationalised addresses --------------------------------------------------------

UTF8_SAMPLE = Sent("李四@example.net", SAMPLE.verp, SAMPLE.message_id, SAMPLE.unsubscribe)


@pytest.mark.parametrize(
    ("fixture", "kind", "status"),
    [
        ("postfix-smtputf8-delay.eml", ReturnedKind.SOFT, "4.4.1"),  # message/global-headers
        ("postfix-smtputf8-failed.eml", ReturnedKind.HARD, "5.1.1"),  # message/global
    ],
)
def test_a_global_delivery_status_report_is_read(fixture: str, kind: ReturnedKind, status: str) -> None:
    report = parse_returned(fill(fixture, UTF8_SAMPLE))
    assert [(f.kind, f.email, f.status) for f in report.findings] == [(kind, "李四@example.net", status)]
    assert report.verp_tokens[0] == "aaaabbbbccccddddeeee"
    assert report.message_ids == [SAMPLE.message_id]


def test_a_global_report_may_be_transfer_encoded_and_spell_characters_as_unitext() -> None:
    raw = fill("postfix-smtputf8-delay.eml", UTF8_SAMPLE)
    opening = b"Content-Type: message/global-delivery-status\nContent-Transfer-Encoding: 8bit\n\n"
    head, _, rest = raw.partition(opening)
    body, boundary, tail = rest.partition(b"\n--4Zk3")
    body = body.replace("utf-8; 李四@".encode(), b"utf-8; \\x{674E}\\x{56DB}@", 1)
    for name, encoded in (("base64", base64.encodebytes(body)), ("quoted-printable", quopri.encodestring(body))):
        part = f"Content-Type: message/global-delivery-status\nContent-Transfer-Encoding: {name}\n\n".encode()
        report = parse_returned(head + part + encoded + boundary + tail)
        assert [(f.kind, f.email) for f in report.findings] == [(ReturnedKind.SOFT, "李四@example.net")], name


async def test_scan_matches_rfc6533_reports_by_verp_and_by_message_id(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:  # type: ignore[no-untyped-def]
    readers = ["李四@example.net", "王五@example.net"]
    store.subscribers.upsert(store.lists.get("bulletin").id, [Subscriber(email=e) for e in readers], "test")
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    summary = await send_issue(store, config, SAMPLE_ISSUE, "bulletin", SendOptions(), settings)
    assert summary.counts == {"sent": 2}
    sent = sent_messages(smtp_server)
    returned = tmp_path / "returned"
    returned.mkdir()
    (returned / "delay.eml").write_bytes(fill("postfix-smtputf8-delay.eml", sent[readers[0]]))
    by_id = Sent(readers[1], "bulletin@example.org", sent[readers[1]].message_id, "")  # no VERP address
    (returned / "failed.eml").write_bytes(fill("postfix-smtputf8-failed.eml", by_id))
    rows = await asyncio.to_thread(scan_json, run_cli, returned)
    assert [(r["email"], r["kind"], r["result"]) for r in rows] == [
        (readers[0], "soft", "soft bounce 1/3 counted (matched by verp)"),
        (readers[1], "hard", "bounced and suppressed (matched by message-id)"),
    ]
    assert store.suppressions.get(readers[1]).reason == "bounced" and not store.suppressions.is_suppressed(readers[0])
