"""Who a campaign is for and what identifies it: segments and several lists sent through a real SMTP server, the
campaign's identity (audience and the issue's own content, not its look), top-ups, approvals, lists update/delete."""

from __future__ import annotations

import json
import re
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import pytest

from mailer.capture import CaptureServer, Rule
from mailer.config import Config
from mailer.engine import SendOptions
from mailer.errors import MailerError
from mailer.models import Subscriber, SuppressionReason, Theme, UnsubscribeSource
from mailer.send import send_issue
from mailer.smtp import relays
from mailer.store import Store
from mailer.subscriptions import create_list, update_list
from mailer.tokens import TokenKind, read_token
from tests.test_send import assert_one_error_line, campaigns, write_issue

PEOPLE = [
    ("a@example.org", "甲", {"单位": "重庆江北区知识产权局", "地区": "重庆"}),
    ("b@example.com", "乙", {"单位": "某公司", "地区": "北京"}),
    ("c@example.net", "丙", {"单位": "某所", "地区": "上海"}),
    ("d@example.org", "丁", {"单位": "", "地区": "广州"}),
]


def add(store: Store, list_name: str, people: list[tuple[str, str, dict[str, str]]]) -> None:
    list_id = store.lists.get(list_name).id
    store.subscribers.upsert(list_id, [Subscriber(email=e, name=n, attrs=a) for e, n, a in people], "test")


def received_by(server: CaptureServer) -> Counter[str]:
    return Counter(c.rcpt_tos[0] for c in server.received)


@pytest.fixture
def settings(config: Config, smtp_server: CaptureServer):  # type: ignore[no-untyped-def]
    return relays(config.with_overrides(smtp_port=smtp_server.port))


async def test_a_segment_send_reaches_exactly_the_matching_addresses_once(
    store: Store, config: Config, smtp_server: CaptureServer, settings, tmp_path: Path
) -> None:
    add(store, "bulletin", PEOPLE)
    issue = write_issue(tmp_path / "issue.md", "第1期")
    where = '单位 = "重庆江北区知识产权局" or 地区 in ("北京", "重庆")'

    dry = await send_issue(store, config, issue, "bulletin", SendOptions(dry_run=True), settings, where=where)
    assert dry.total == 2 and dry.sample == ("a@example.org", "b@example.com")
    assert not smtp_server.received

    summary = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, where=where)

    assert summary.counts == {"sent": 2}
    assert received_by(smtp_server) == Counter({"a@example.org": 1, "b@example.com": 1})
    (row,) = campaigns_of(store)
    assert json.loads(row.audience) == {"lists": ["bulletin"], "where": where, "segment": ""}
    # The same send again is the same campaign (the expression as printed identifies it, not its spacing).
    again = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, where=where.replace(" ", "  "))
    assert again.campaign_id == summary.campaign_id and len(smtp_server.received) == 2


def campaigns_of(store: Store):  # type: ignore[no-untyped-def]
    return store.campaigns.with_counts()


async def test_several_lists_send_each_address_once_with_the_list_it_is_on(
    store: Store, config: Config, smtp_server: CaptureServer, settings, tmp_path: Path
) -> None:
    create_list(store, "extra", "附刊", "附刊 <extra@example.org>", "", "zh")
    add(store, "bulletin", PEOPLE[:3])
    add(store, "extra", [PEOPLE[1], PEOPLE[3], ("e@example.org", "戊", {})])
    store.subscribers.unsubscribe(
        store.subscribers.get(store.lists.get("bulletin").id, "c@example.net").id, UnsubscribeSource.OPS
    )
    issue = write_issue(tmp_path / "issue.md", "第1期")

    summary = await send_issue(store, config, issue, ["bulletin", "extra"], SendOptions(), settings)

    assert summary.counts == {"sent": 4}  # a, b (on both: once), d, e; c unsubscribed from bulletin
    assert received_by(smtp_server) == Counter(
        dict.fromkeys(["a@example.org", "b@example.com", "d@example.org", "e@example.org"], 1)
    )
    lists = {"bulletin": store.lists.get("bulletin").id, "extra": store.lists.get("extra").id}
    for captured in smtp_server.received:
        message = message_from_bytes(captured.data)
        on = "bulletin" if captured.rcpt_tos[0] in ("a@example.org", "b@example.com") else "extra"
        assert f"<{on}.example.org>" in str(message["List-Id"]), (captured.rcpt_tos, message["List-Id"])
        token = re.search(r"/u/([A-Za-z0-9]+)>", str(message["List-Unsubscribe"])).group(1)  # type: ignore[union-attr]
        parsed = read_token(config.secret, token, TokenKind.UNSUBSCRIBE)
        subscriber = store.subscribers.by_id(parsed.b)
        assert parsed.a == lists[on] and subscriber.list_id == lists[on] and subscriber.email == captured.rcpt_tos[0]
        body = "".join(
            part.get_payload(decode=True).decode("utf-8")  # type: ignore[union-attr]
            for part in message.walk()
            if part.get_content_type() == "text/plain"
        )
        prefs = read_token(config.secret, re.search(r"/p/([A-Za-z0-9]+)", body).group(1), TokenKind.PREFERENCES)  # type: ignore[union-attr]
        assert (prefs.a, prefs.b) == (lists[on], subscriber.id)  # the preferences link is of that list too
        assert str(message["From"]).endswith("<bulletin@example.org>")  # the content is the first list's
    # The other order is the same audience: resumed, nobody mailed twice.
    again = await send_issue(store, config, issue, ["extra", "bulletin"], SendOptions(), settings)
    assert again.campaign_id == summary.campaign_id and len(smtp_server.received) == 4


def test_two_list_options_on_the_command_line_both_count(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    create_list(store, "extra", "附刊", "附刊 <extra@example.org>", "", "zh")
    add(store, "bulletin", PEOPLE[:2])
    add(store, "extra", PEOPLE[2:])
    issue = write_issue(tmp_path / "issue.md", "第1期")
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}

    result = run_cli("send", str(issue), "--list", "bulletin", "--list", "extra", "--workers", "2", "--yes", env=env)

    assert result.returncode == 0, result.stderr
    assert received_by(smtp_server) == Counter({e: 1 for e, _, _ in PEOPLE})
    for captured in smtp_server.received:  # worker processes build each list's own List-Id too
        on = "bulletin" if captured.rcpt_tos[0] in ("a@example.org", "b@example.com") else "extra"
        assert f"<{on}.example.org>" in str(message_from_bytes(captured.data)["List-Id"])
    (row,) = campaigns(run_cli)
    assert row["counts"] == {"sent": 4} and row["list"] == "bulletin"
    assert row["audience"] == {"lists": ["bulletin", "extra"], "where": "", "segment": ""}


async def test_a_new_look_alone_is_the_same_campaign_and_says_the_look_changed(
    store: Store, config: Config, smtp_server: CaptureServer, settings, tmp_path: Path
) -> None:
    add(store, "bulletin", PEOPLE)
    issue = write_issue(tmp_path / "issue.md", "第1期")
    first = await send_issue(store, config, issue, "bulletin", SendOptions(), settings)
    assert first.counts == {"sent": 4}
    update_list(store, "bulletin", title="新的简报名称")
    restyled = config.with_overrides(theme=Theme(accent="#7a1f5c"))

    again = await send_issue(store, restyled, issue, "bulletin", SendOptions(), settings)

    assert again.campaign_id == first.campaign_id and len(smtp_server.received) == 4
    notes = " ".join(again.warnings)
    assert "already complete" in notes and "the look (layout, theme or list settings) changed" in notes
    # An image the issue embeds is part of its content: changing it is a new issue.
    (tmp_path / "chart.png").write_bytes(_png(1))
    text = issue.read_text(encoding="utf-8").replace("---\nsubject", "---\nimages: cid\nsubject", 1)
    issue.write_text(text + "\n![图](chart.png)\n", encoding="utf-8")
    with_image = await send_issue(store, config, issue, "bulletin", SendOptions(), settings)
    assert with_image.campaign_id != first.campaign_id and len(smtp_server.received) == 8
    (tmp_path / "chart.png").write_bytes(_png(2))
    new_image = await send_issue(store, config, issue, "bulletin", SendOptions(), settings)
    assert new_image.campaign_id not in (first.campaign_id, with_image.campaign_id)


def _png(seed: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x00" + bytes([seed, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_a_campaign_with_only_deferred_recipients_does_not_hold_back_new_content(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add(store, "bulletin", PEOPLE[:3])
    smtp_server.set_rule("b@example.com", Rule(stage="rcpt", code=451, text="4.7.1 greylisted"))
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    november = write_issue(tmp_path / "nov" / "issue.md", "十一月")
    assert run_cli("send", str(november), "--list", "bulletin", "--yes", "--max-wait", "0", env=env).returncode == 0
    december = write_issue(tmp_path / "dec" / "issue.md", "十二月")

    result = run_cli("send", str(december), "--list", "bulletin", "--yes", "--max-wait", "0", env=env)

    assert result.returncode == 0, result.stderr
    assert [c["counts"] for c in campaigns(run_cli)] == [{"sent": 2, "deferred": 1}, {"sent": 2, "deferred": 1}]


async def test_a_top_up_sends_exactly_to_who_joined_or_started_matching_since(
    store: Store, config: Config, smtp_server: CaptureServer, settings, tmp_path: Path
) -> None:
    add(store, "bulletin", PEOPLE[:2])
    issue = write_issue(tmp_path / "issue.md", "第1期")
    where = '地区 in ("北京", "重庆", "上海")'
    first = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, where=where)
    assert first.counts == {"sent": 2}
    add(store, "bulletin", [PEOPLE[2], PEOPLE[3], ("f@example.org", "己", {"地区": "北京"})])  # c, f match; d does not
    add(store, "bulletin", [("a@example.org", "甲", {"单位": "x", "地区": "重庆"})])  # reached already: never again
    store.subscribers.unsubscribe(
        store.subscribers.get(store.lists.get("bulletin").id, "f@example.org").id, UnsubscribeSource.OPS
    )
    add(store, "bulletin", [("g@example.org", "庚", {"地区": "上海"})])
    store.suppressions.suppress_address("g@example.org", SuppressionReason.BOUNCED, "t")
    add(store, "bulletin", [("h@example.org", "辛", {"地区": "广州"})])
    add(store, "bulletin", [("h@example.org", "辛", {"地区": "北京"})])  # started matching since

    told = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, where=where)
    assert len(smtp_server.received) == 2
    assert "2 subscriber(s) joined or started matching since" in " ".join(told.warnings)

    topped = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, where=where, include_new=True)

    assert topped.campaign_id == first.campaign_id
    assert received_by(smtp_server) == Counter(
        dict.fromkeys(["a@example.org", "b@example.com", "c@example.net", "h@example.org"], 1)
    )
    assert topped.counts == {"sent": 4}
    assert store.campaigns.get(first.campaign_id).finished


def test_an_approval_counts_for_the_exact_content_and_an_edit_voids_it(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add(store, "bulletin", PEOPLE[:2])
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    assert run_cli("lists", "update", "bulletin", "--require-approval", "1").returncode == 0
    issue = write_issue(tmp_path / "issue.md", "第1期")

    refused = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)
    assert refused.returncode == 1
    assert_one_error_line(refused.stderr)
    assert "requires 1 approval(s)" in refused.stderr and "it has 0" in refused.stderr
    approved = run_cli("approve", str(issue), "--list", "bulletin", "--by", "李四", "--note", "已审校")
    assert approved.returncode == 0, approved.stderr
    assert "1 approval(s) of 1 the list requires" in approved.stdout
    write_issue(issue, "第1期", body="正文（改）。")  # edited after the approval

    edited = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)

    assert edited.returncode == 1 and not smtp_server.received
    assert_one_error_line(edited.stderr)
    assert "李四 approved an earlier version" in edited.stderr and "changed since: issue.md" in edited.stderr
    assert run_cli("approve", str(issue), "--list", "bulletin", "--by", "李四").returncode == 0
    sent = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)
    assert sent.returncode == 0, sent.stderr
    assert len(smtp_server.received) == 2
    (row,) = campaigns(run_cli)
    shown = run_cli("campaigns", "show", str(row["id"]))
    assert "approvals for list bulletin (requires 1): 1" in shown.stdout and "李四 at" in shown.stdout
    as_json = json.loads(run_cli("campaigns", "show", str(row["id"]), "--json").stdout)
    assert as_json[0]["approvals"][0]["by"] == "李四" and as_json[0]["lists"] == ["bulletin"]


def test_lists_update_and_delete(store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli) -> None:
    add(store, "bulletin", PEOPLE[:2])
    updated = run_cli(
        "lists",
        "update",
        "bulletin",
        "--title",
        "新简报",
        "--from",
        "新 <new@example.org>",
        "--lang",
        "en",
        "--tz",
        "Asia/Shanghai",
    )
    assert updated.returncode == 0, updated.stderr
    found = store.lists.get("bulletin")
    assert (found.title, found.from_addr, found.lang, found.tz, found.reply_to) == (
        "新简报",
        "新 <new@example.org>",
        "en",
        "Asia/Shanghai",
        "editor@example.org",
    )
    bad = run_cli("lists", "update", "bulletin", "--tz", "Mars/Olympus")
    assert bad.returncode == 2 and "unknown timezone" in bad.stderr
    issue = write_issue(tmp_path / "issue.md", "第1期")
    assert (
        run_cli(
            "send", str(issue), "--list", "bulletin", "--yes", env={"MAILER_SMTP_PORT": str(smtp_server.port)}
        ).returncode
        == 0
    )

    refused = run_cli("lists", "delete", "bulletin")
    assert refused.returncode == 1 and "has 1 campaign(s)" in refused.stderr and "--force" in refused.stderr
    assert store.lists.get("bulletin")
    forced = run_cli("lists", "delete", "bulletin", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "2 subscriber(s), 1 campaign(s)" in forced.stdout
    with pytest.raises(MailerError):
        store.lists.get("bulletin")
    assert campaigns(run_cli) == []


def test_saved_segments_and_a_bad_expression(store: Store, tmp_path: Path, run_cli) -> None:
    add(store, "bulletin", PEOPLE)
    created = run_cli("segments", "create", "north", "--list", "bulletin", "--where", '地区 in ("北京")')
    assert created.returncode == 0, created.stderr
    listed = json.loads(run_cli("segments", "ls", "--json").stdout)
    assert [(s["name"], s["matching"]) for s in listed] == [("north", 1)]
    issue = write_issue(tmp_path / "issue.md", "第1期")
    dry = run_cli("send", str(issue), "--list", "bulletin", "--segment", "north", "--dry-run")
    assert dry.returncode == 0 and "would send to 1 recipients" in dry.stdout and "b@example.com" in dry.stdout
    bad = run_cli("send", str(issue), "--list", "bulletin", "--where", '地区 = "北京" and', "--dry-run")
    assert bad.returncode == 2
    assert_one_error_line(bad.stderr)
    assert "column 14" in bad.stderr and "单位, 地区" in bad.stderr
    rendered = run_cli("render", str(issue), "--list", "bulletin", "--where", '地区 = "上海"', "-o", "out")
    assert rendered.returncode == 0, rendered.stderr
    assert "c@example.net" in (tmp_path / "out" / "issue.eml").read_text(encoding="utf-8")


async def test_a_campaign_from_before_schema_12_is_still_found_by_its_rendered_output(
    store: Store, config: Config, smtp_server: CaptureServer, settings, tmp_path: Path
) -> None:
    add(store, "bulletin", PEOPLE[:2])
    issue = write_issue(tmp_path / "issue.md", "第1期")
    first = await send_issue(store, config, issue, "bulletin", SendOptions(), settings)
    with store.transaction():  # what schema 12's migration leaves of a campaign made before it
        store.conn.execute("UPDATE campaigns SET content_hash = 'rendered:' || look_hash")

    again = await send_issue(store, config, issue, "bulletin", SendOptions(), settings)

    assert again.campaign_id == first.campaign_id and len(smtp_server.received) == 2
    assert "already complete" in " ".join(again.warnings)


async def test_the_issue_may_name_its_saved_segment(
    store: Store, config: Config, smtp_server: CaptureServer, settings, tmp_path: Path
) -> None:
    from mailer.targeting import create_segment

    add(store, "bulletin", PEOPLE)
    create_segment(store, "chongqing", "bulletin", '地区 = "重庆"')
    issue = tmp_path / "issue.md"
    issue.write_text("---\nsubject: 第1期\nsegment: chongqing\n---\n\n正文。\n", encoding="utf-8")

    dry = await send_issue(store, config, issue, "bulletin", SendOptions(dry_run=True), settings, where='地区 = "北京"')
    assert dry.sample == ("b@example.com",)  # the command line wins over the issue's segment, and says so
    assert "--where '地区 = \"北京\"' on the command line replaces the issue's segment: chongqing" in dry.warnings
    summary = await send_issue(store, config, issue, "bulletin", SendOptions(), settings)

    assert summary.counts == {"sent": 1} and not summary.warnings
    assert [c.rcpt_tos[0] for c in smtp_server.received] == ["a@example.org"]


def test_an_approval_is_of_the_attachments_too(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add(store, "bulletin", PEOPLE[:1])
    assert run_cli("lists", "update", "bulletin", "--require-approval", "1").returncode == 0
    (tmp_path / "简报第10期.pdf").write_bytes(b"%PDF-1.4\n% first\n%%EOF\n")
    issue = tmp_path / "issue.md"
    issue.write_text("---\nsubject: 第10期\nattachments: [简报第10期.pdf]\n---\n\n正文。\n", encoding="utf-8")
    assert run_cli("approve", str(issue), "--list", "bulletin", "--by", "李四").returncode == 0
    (tmp_path / "简报第10期.pdf").write_bytes(b"%PDF-1.4\n% second\n%%EOF\n")  # the PDF replaced, the text not
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}

    refused = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)

    assert refused.returncode == 1 and not smtp_server.received
    assert_one_error_line(refused.stderr)
    changed = refused.stderr.split("changed since: ", 1)[1].split(";", 1)[0]
    assert changed == "简报第10期.pdf"


def test_the_trial_case_a_new_accent_in_mailer_toml_does_not_mail_the_list_again(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add(store, "bulletin", PEOPLE)
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    issue = write_issue(tmp_path / "issue.md", "第1期")
    assert run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env).returncode == 0
    (tmp_path / "mailer.toml").write_text('[theme]\naccent = "#7a1f5c"\n', encoding="utf-8")
    assert run_cli("lists", "update", "bulletin", "--title", "另一个名称").returncode == 0

    again = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)

    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stderr and "the look (layout, theme or list settings) changed" in again.stderr
    assert len(smtp_server.received) == 4
    assert [c["counts"] for c in campaigns(run_cli)] == [{"sent": 4}]


def test_an_empty_where_or_segment_is_a_usage_error_not_the_whole_list(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    """`--where "$SEG"` with SEG unset: the trial's script mailed everyone. Leaving the option out says that."""
    add(store, "bulletin", PEOPLE)
    issue = write_issue(tmp_path / "issue.md", "第1期")
    blank_segment = tmp_path / "blank.md"
    blank_segment.write_text("---\nsubject: 第1期\nsegment:\n---\n\n正文。\n", encoding="utf-8")
    port = ("--smtp-port", str(smtp_server.port))
    for args, says in [
        (("send", str(issue), "--list", "bulletin", "--where", "", "--yes", *port), "--where is empty"),
        (("send", str(issue), "--list", "bulletin", "--where", "  ", "--yes", *port), "--where is empty"),
        (("send", str(issue), "--list", "bulletin", "--segment", "", "--yes", *port), "--segment is empty"),
        (("send", str(issue), "--list", "bulletin", "--where", "", "--dry-run"), "--where is empty"),
        (("send", str(blank_segment), "--list", "bulletin", "--yes", *port), "front matter 'segment' is empty"),
        (("render", str(issue), "--list", "bulletin", "--where", "", "-o", "out"), "--where is empty"),
        (("segments", "create", "all", "--list", "bulletin", "--where", " "), "--where is empty"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert_one_error_line(result.stderr)
        assert says in result.stderr, result.stderr
    assert not smtp_server.received and not campaigns_of(store)
    assert not (tmp_path / "out").exists()


def test_the_trials_deep_expressions_and_far_dates_are_one_error_line(store: Store, tmp_path: Path, run_cli) -> None:
    """What gave a RecursionError or OverflowError traceback (over a thousand lines) on the real CLI."""
    add(store, "bulletin", PEOPLE)
    issue = write_issue(tmp_path / "issue.md", "第1期")
    send = ("send", str(issue), "--list", "bulletin")
    for args in [
        (*send, "--where", "(" * 1000 + 'email = "a"' + ")" * 1000, "--dry-run"),
        (*send, "--where", "not " * 400 + 'email = "a"', "--dry-run"),
        ("segments", "create", "deep", "--list", "bulletin", "--where", "not " * 330 + 'email = "a"'),
        (*send, "--at", "9999-12-31 23:59", "--tz", "America/New_York", "--yes"),
        (*send, "--at", "2026-12-05T09:00+25:00", "--yes"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2, (args[-3:], result.stderr[-300:])
        assert_one_error_line(result.stderr)
        assert "Recursion" not in result.stderr and "timedelta" not in result.stderr and len(result.stderr) < 300
    assert not campaigns_of(store) and not store.audiences.segments()
