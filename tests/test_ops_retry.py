"""The console's "Retry deferred now" and "Requeue failed" while a `mailer send` holds the campaign and waits for
its deferred recipients' retry times (--max-wait): the waiting sender takes the rows at once, not at the retry time
(issue 14's trial, finding 3). A real `mailer send` process, the CaptureServer on 127.0.0.1, real SQLite."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from mailer.capture import CaptureServer, Rule
from mailer.operations import Action, act_on_campaign
from mailer.store import Store
from tests.test_delivery import SEND, deliveries, finish, readers, spawn
from tests.test_send import add_subscribers

LONG = {"MAILER_RETRY_BASE": "120"}  # a retry time (within --max-wait 600) the test never reaches


def _until(tmp_path: Path, email: str, status: str, proc: subprocess.Popen[str], seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = deliveries(tmp_path).get(email)
        if row and row["status"] == status:
            return row
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{email} not {status} after {seconds}s: {deliveries(tmp_path).get(email)}")


def test_retry_deferred_now_is_sent_at_once_by_the_waiting_sender(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(3)
    add_subscribers(store, emails)
    smtp_server.set_rule(emails[1], Rule(stage="rcpt", code=451, text="4.7.1 greylisted", times=1))
    proc = spawn(tmp_path, *SEND, "--smtp-port", str(smtp_server.port), "--max-wait", "600", env=LONG)
    row = _until(tmp_path, emails[1], "deferred", proc)
    said = act_on_campaign(store, "test", Action.RETRY_DEFERRED, row["campaign_id"])
    assert "1" in said
    code, out, err = finish(proc, timeout=30)  # before the fix: the sender slept until the retry time, 120 s
    assert code == 0, out + err
    assert {r["status"] for r in deliveries(tmp_path).values()} == {"sent"}


def test_requeue_failed_is_sent_at_once_while_the_sender_waits_for_a_deferral(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(3)
    add_subscribers(store, emails)
    smtp_server.set_rule(emails[0], Rule(stage="rcpt", code=451, text="4.7.1 greylisted"))
    smtp_server.set_rule(emails[2], Rule(stage="data", code=554, text="5.7.1 refused by policy", times=1))
    proc = spawn(tmp_path, *SEND, "--smtp-port", str(smtp_server.port), "--max-wait", "600", env=LONG, group=True)
    try:
        _until(tmp_path, emails[0], "deferred", proc)
        row = _until(tmp_path, emails[2], "failed", proc)
        act_on_campaign(store, "test", Action.REQUEUE_FAILED, row["campaign_id"])
        _until(tmp_path, emails[2], "sent", proc, seconds=15)  # before the fix: only after the 120 s wait
        assert deliveries(tmp_path)[emails[0]]["status"] == "deferred"  # still waiting for its own retry time
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        finish(proc, timeout=30)
