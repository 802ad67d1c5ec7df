"""A scheduled campaign cancelled before it reached anyone may go out after all (scheduled or sent again with the
same content: the same campaign, un-cancelled), one that reached someone stays cancelled; `campaigns cancel
--under-sender` cancels under a live sender, as the console does (the real CLI, the capture server, real SQLite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from mailer.capture import CaptureServer
from mailer.models import Subscriber
from mailer.store import Store
from mailer.store.leases import lease_owner
from tests.test_send import assert_one_error_line, campaigns, write_issue


def _people(store: Store) -> None:
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email=f"u{i}@example.org") for i in (1, 2)], "test")


def test_a_campaign_cancelled_before_it_reached_anyone_goes_out_after_all(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any
) -> None:
    _people(store)
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    issue = write_issue(tmp_path / "issue.md", "第1期")
    at = ("--at", "2099-01-01T09:00+08:00")
    assert run_cli("send", str(issue), "--list", "bulletin", *at, "--yes").returncode == 0
    assert run_cli("campaigns", "cancel", "1").returncode == 0

    again = run_cli("send", str(issue), "--list", "bulletin", "--at", "2099-02-01T09:00+08:00", "--yes")

    assert again.returncode == 0, again.stderr
    assert "campaign 1 was cancelled before it reached anyone; it is scheduled again" in again.stdout + again.stderr
    (row,) = campaigns(run_cli)
    assert row["state"] == "scheduled" and row["send_at"] == "2099-02-01T01:00:00.000Z"
    assert run_cli("campaigns", "cancel", "1").returncode == 0

    now = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)

    assert now.returncode == 0, now.stderr
    assert "it goes out after all" in now.stdout + now.stderr
    assert sorted(c.rcpt_tos[0] for c in smtp_server.received) == ["u1@example.org", "u2@example.org"]
    (row,) = campaigns(run_cli)
    assert row["id"] == 1 and row["state"] == "finished"


def test_a_cancelled_campaign_that_reached_someone_stays_cancelled(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any
) -> None:
    _people(store)
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    issue = write_issue(tmp_path / "issue.md", "第1期")
    assert run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env).returncode == 0
    assert run_cli("campaigns", "cancel", "1").returncode == 0
    refused = run_cli("send", str(issue), "--list", "bulletin", "--yes", env=env)
    assert refused.returncode == 1 and "was cancelled at" in refused.stderr
    assert_one_error_line(refused.stderr)
    assert len(smtp_server.received) == 2


def test_cancel_under_a_live_sender(store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli: Any) -> None:
    _people(store)
    issue = write_issue(tmp_path / "issue.md", "第1期")
    assert run_cli("send", str(issue), "--list", "bulletin", "--yes", "--at", "2099-01-01T09:00+08:00").returncode == 0
    store.schedules.begin(1, store.campaigns.audience(store.lists.get("bulletin").id))
    sender = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with store.transaction():
            store.conn.execute(
                "UPDATE campaigns SET lease_owner = ?, lease_until = '2000-01-01' WHERE id = 1",
                (lease_owner(sender.pid),),
            )
        refused = run_cli("campaigns", "cancel", "1")
        assert refused.returncode != 0
        assert_one_error_line(refused.stderr)
        line = refused.stderr.strip()
        assert f"being sent by process {sender.pid}" in line
        assert line.endswith("or cancel it under that sender: mailer campaigns cancel 1 --under-sender")
        assert store.campaigns.state(1).value == "sending"

        cancelled = run_cli("campaigns", "cancel", "1", "--under-sender")

        assert cancelled.returncode == 0, cancelled.stderr
        assert "its sender stops within a second" in cancelled.stdout
        assert store.campaigns.state(1).value == "cancelled"
    finally:
        sender.kill()
        sender.wait()
