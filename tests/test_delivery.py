"""Delivery semantics under failure: kill -9, SIGTERM, 4xx/5xx, dropped and hung sessions, expiry, two senders,
rate, several relays, TLS (STARTTLS and implicit, verified against MAILER_SMTP_CA). Real `python -m mailer`
processes, a real aiosmtpd server on 127.0.0.1, real SQLite files."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import resource
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from contextlib import closing
from datetime import datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailer.campaign import open_campaign, prepare_issue
from mailer.capture import Captured, CaptureServer, Rule, free_port
from mailer.config import Config
from mailer.delivery_log import CampaignLog
from mailer.engine import Engine, Lease, SendOptions
from mailer.pacing import RateLimiter
from mailer.smtp import relays
from mailer.store import Store, holder_state, lease_owner
from tests.conftest import SAMPLE_ISSUE
from tests.test_send import add_subscribers, assert_one_error_line

SEND = ("send", str(SAMPLE_ISSUE), "--list", "bulletin", "--yes")
FAST_RETRY = {"MAILER_RETRY_BASE": "0.2"}


def cli_env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update({"MAILER_DB": str(tmp_path / "mailer.db"), "NO_COLOR": "1", "COLUMNS": "200"})
    env.update(extra or {})
    return env


def spawn(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m mailer ARGS` started in tmp_path, not waited for."""
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path, env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"mailer still running after {timeout}s\n{stdout}\n{stderr}") from None
    return proc.returncode, stdout, stderr


def run_send(
    tmp_path: Path, port: int | None, *extra: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str, float]:
    """One `mailer send` of the sample issue to `bulletin`; (exit code, stdout, stderr, seconds it took)."""
    port_args = ("--smtp-port", str(port)) if port else ()
    started = time.monotonic()
    code, out, err = finish(spawn(tmp_path, *SEND, *port_args, *extra, env=env), timeout)
    return code, out, err, time.monotonic() - started


def header_message_id(data: bytes) -> str:
    return str(BytesHeaderParser().parsebytes(data)["Message-ID"]).strip()


def copies_by_recipient(received: list[Captured]) -> dict[str, list[str]]:
    """Recipient -> the Message-ID of each copy the server accepted, in arrival order."""
    copies: dict[str, list[str]] = defaultdict(list)
    for captured in received:
        assert len(captured.rcpt_tos) == 1
        copies[captured.rcpt_tos[0]].append(header_message_id(captured.data))
    return copies


def record_data_attempts(server: CaptureServer) -> list[tuple[str, str]]:
    """(recipient, Message-ID) of every DATA the server reads, also those a rule then refuses or hangs on.

    aiosmtpd reads the handler's hooks when a session opens, so call this before the first connection."""
    attempts: list[tuple[str, str]] = []
    handler = server.controller.handler
    accept = handler.handle_DATA

    async def handle_DATA(smtp: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content or b""
        attempts.append((envelope.rcpt_tos[0], header_message_id(data)))
        return str(await accept(smtp, session, envelope))

    handler.handle_DATA = handle_DATA
    return attempts


def deliveries(tmp_path: Path) -> dict[str, dict[str, Any]]:
    with closing(sqlite3.connect(tmp_path / "mailer.db")) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT id, campaign_id, subscriber_id, email, status, attempts, smtp_code, smtp_reply, message_id, "
            "next_attempt FROM deliveries WHERE campaign_id IN (SELECT id FROM campaigns WHERE is_test = 0)"
        ).fetchall()
    return {row["email"]: dict(row) for row in rows}


def events(tmp_path: Path, delivery_id: int) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(tmp_path / "mailer.db")) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT status, attempt, smtp_code, smtp_reply, at FROM delivery_events WHERE delivery_id = ? ORDER BY id",
            (delivery_id,),
        ).fetchall()
    return [dict(row) for row in rows]


def outcomes(tmp_path: Path, delivery_id: int) -> list[dict[str, Any]]:
    """The events that ended an attempt, without the 'sending' marks between them."""
    return [e for e in events(tmp_path, delivery_id) if e["status"] != "sending"]


def by_status(rows: dict[str, dict[str, Any]]) -> Counter[str]:
    return Counter(row["status"] for row in rows.values())


def readers(n: int) -> list[str]:
    return [f"reader{i:03d}@example.org" for i in range(n)]


def when(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


# ---- crash safety and interruption ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", ["100", "unlimited"])
def test_kill_9_mid_run_then_resume_repeats_at_most_concurrency_messages(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, rate: str
) -> None:
    emails = readers(400)
    add_subscribers(store, emails)
    # Unlimited, a session commits each outcome together with its next `sending` mark; rate-limited, apart.
    rate_args = ("--rate", rate) if rate != "unlimited" else ()
    command = (*SEND, "--smtp-port", str(smtp_server.port), *rate_args, "--concurrency", "4")
    killed_during: list[str] = []

    def kill_before_the_250(captured: Captured) -> None:
        # The worst moment (~1 s in): the server has the whole message, the sender has not heard "250" yet.
        if len(smtp_server.received) >= 100 and not killed_during:
            killed_during.append(captured.rcpt_tos[0])
            os.kill(proc.pid, signal.SIGKILL)

    smtp_server.state.on_message = kill_before_the_250
    proc = spawn(tmp_path, *command)
    finish(proc, timeout=30)
    smtp_server.state.on_message = None
    assert proc.returncode == -signal.SIGKILL, "the send finished before it could be killed"
    time.sleep(0.2)  # let the server finish reading what was on the wire
    before_resume = len(smtp_server.received)
    assert before_resume < 400

    with closing(sqlite3.connect(tmp_path / "mailer.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = deliveries(tmp_path)
    in_sending = by_status(rows)["sending"]
    assert 1 <= in_sending <= 4
    assert rows[killed_during[0]]["status"] == "sending"
    recorded_sent = {email for email, row in rows.items() if row["status"] == "sent"}
    assert recorded_sent <= {c.rcpt_tos[0] for c in smtp_server.received}

    code, out, err = finish(spawn(tmp_path, *command))

    assert code == 0, out + err
    copies = copies_by_recipient(smtp_server.received)
    assert set(copies) == set(emails)
    duplicates = sum(len(ids) - 1 for ids in copies.values())
    print(
        f"\nkill -9 after {before_resume} messages: {in_sending} row(s) left in 'sending', "
        f"{duplicates} duplicate message(s) after resume"
    )
    assert 1 <= duplicates <= 4
    assert len(copies[killed_during[0]]) == 2  # in doubt, so sent again
    for email, ids in copies.items():
        assert len(set(ids)) == 1, f"{email} got copies with different Message-IDs: {ids}"
    assert all(len(copies[email]) == 1 for email in recorded_sent)  # nobody recorded sent was sent again
    rows = deliveries(tmp_path)
    assert by_status(rows) == {"sent": 400}
    for email, row in rows.items():
        assert row["message_id"] in copies[email]


def test_at_every_moment_each_session_has_at_most_one_row_in_sending_and_sent_rows_were_received(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(300)
    add_subscribers(store, emails)
    seen: list[tuple[int, str, bool]] = []

    def look_at_the_database(captured: Captured) -> None:
        # Called by the server with the message in hand and its 250 not yet sent; the server waits meanwhile.
        received = {c.rcpt_tos[0] for c in smtp_server.received}
        with closing(sqlite3.connect(tmp_path / "mailer.db")) as conn:
            statuses = dict(conn.execute("SELECT email, status FROM deliveries"))
        sent = {email for email, status in statuses.items() if status == "sent"}
        in_sending = sum(status == "sending" for status in statuses.values())
        seen.append((in_sending, statuses[captured.rcpt_tos[0]], sent <= received))

    smtp_server.state.on_message = look_at_the_database
    code, out, err, _ = run_send(tmp_path, smtp_server.port, "--concurrency", "4")

    assert code == 0, out + err
    assert len(seen) == 300
    assert max(in_sending for in_sending, _, _ in seen) <= 4
    assert {status for _, status, _ in seen} == {"sending"}  # committed before the message left
    assert all(ok for _, _, ok in seen)  # nothing recorded sent that the server had not taken
    assert by_status(deliveries(tmp_path)) == {"sent": 300}


def test_sigterm_finishes_in_flight_exits_130_and_the_rerun_sends_the_rest_once(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(400)
    add_subscribers(store, emails)
    command = (*SEND, "--smtp-port", str(smtp_server.port), "--rate", "100", "--concurrency", "4")
    stopped: list[bool] = []

    def stop_at_100(_: Captured) -> None:
        if len(smtp_server.received) >= 100 and not stopped:
            stopped.append(True)
            os.kill(proc.pid, signal.SIGTERM)

    smtp_server.state.on_message = stop_at_100
    proc = spawn(tmp_path, *command)
    code, out, err = finish(proc, timeout=30)
    smtp_server.state.on_message = None

    assert stopped, "the send finished before it could be stopped"
    assert code == 130, out + err
    assert "Traceback" not in err
    rows = deliveries(tmp_path)
    statuses = by_status(rows)
    assert statuses["sending"] == 0
    assert statuses["queued"] > 0
    # In-flight messages were finished and recorded: the rows marked sent are exactly what the server took.
    assert {e for e, row in rows.items() if row["status"] == "sent"} == {c.rcpt_tos[0] for c in smtp_server.received}

    code, out, err = finish(spawn(tmp_path, *command))

    assert code == 0, out + err
    assert Counter(c.rcpt_tos[0] for c in smtp_server.received) == Counter(emails)
    assert by_status(deliveries(tmp_path)) == {"sent": 400}


# ---- SMTP replies and retries in the same run -----------------------------------------------------------------


def test_451_once_is_retried_in_the_same_run_with_the_same_message_id(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(3)
    add_subscribers(store, emails)
    greylisted = emails[1]
    smtp_server.set_rule(greylisted, Rule(stage="data", code=451, text="4.7.1 greylisted, try later", times=1))
    data_attempts = record_data_attempts(smtp_server)

    code, out, err, _ = run_send(tmp_path, smtp_server.port, env=FAST_RETRY)

    assert code == 0, out + err
    rows = deliveries(tmp_path)
    assert by_status(rows) == {"sent": 3}
    row = rows[greylisted]
    assert (row["attempts"], row["smtp_code"]) == (2, 250)
    assert [mid for rcpt, mid in data_attempts if rcpt == greylisted] == [row["message_id"]] * 2
    assert copies_by_recipient(smtp_server.received)[greylisted] == [row["message_id"]]
    history = [(e["status"], e["attempt"], e["smtp_code"]) for e in outcomes(tmp_path, row["id"])]
    assert history == [("deferred", 1, 451), ("sent", 2, 250)]
    assert all(rows[e]["attempts"] == 1 for e in emails if e != greylisted)


def test_5xx_is_failed_once_and_never_retried(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    emails = readers(3)
    add_subscribers(store, emails)
    unknown = emails[0]
    # Only the first RCPT is refused: a second attempt, in this run or by `mailer retry`, would be delivered.
    smtp_server.set_rule(unknown, Rule(stage="rcpt", code=550, text="5.1.1 no such mailbox", times=1))

    code, out, err, _ = run_send(tmp_path, smtp_server.port, env=FAST_RETRY)

    assert code == 3, out + err
    row = deliveries(tmp_path)[unknown]
    assert (row["status"], row["attempts"], row["smtp_code"]) == ("failed", 1, 550)

    retried = run_cli("retry", str(row["campaign_id"]), env={"MAILER_SMTP_PORT": str(smtp_server.port), **FAST_RETRY})

    assert retried.returncode == 3, retried.stdout + retried.stderr
    assert unknown not in {c.rcpt_tos[0] for c in smtp_server.received}
    row = deliveries(tmp_path)[unknown]
    assert (row["status"], row["attempts"], row["smtp_code"]) == ("failed", 1, 550)
    assert [e["status"] for e in outcomes(tmp_path, row["id"])] == ["failed"]


def test_421_and_a_dropped_connection_reconnect_and_carry_on(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(10)
    add_subscribers(store, emails)
    dropped = emails[2]
    smtp_server.set_rule(dropped, Rule(stage="rcpt", code=421, text="4.4.2 closing", drop=True, times=1))

    code, out, err, _ = run_send(tmp_path, smtp_server.port, "--concurrency", "1", env=FAST_RETRY)

    assert code == 0, out + err
    assert Counter(c.rcpt_tos[0] for c in smtp_server.received) == Counter(emails)
    rows = deliveries(tmp_path)
    assert by_status(rows) == {"sent": 10}
    assert rows[dropped]["attempts"] == 2
    assert [e["status"] for e in outcomes(tmp_path, rows[dropped]["id"])] == ["deferred", "sent"]
    assert smtp_server.connections > 1  # the one session was dropped, the engine opened another


def test_timeout_after_data_is_deferred_in_doubt_then_sent_with_the_same_message_id(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(3)
    add_subscribers(store, emails)
    slow = emails[1]
    smtp_server.set_rule(slow, Rule(stage="data", hang=3, times=1))
    data_attempts = record_data_attempts(smtp_server)

    code, out, err, _ = run_send(tmp_path, smtp_server.port, env={"MAILER_SMTP_TIMEOUT": "1", **FAST_RETRY})

    assert code == 0, out + err
    rows = deliveries(tmp_path)
    assert by_status(rows) == {"sent": 3}
    row = rows[slow]
    assert row["attempts"] == 2
    history = outcomes(tmp_path, row["id"])
    assert [e["status"] for e in history] == ["deferred", "sent"]
    assert "in doubt" in history[0]["smtp_reply"]
    assert [mid for rcpt, mid in data_attempts if rcpt == slow] == [row["message_id"]] * 2
    assert set(copies_by_recipient(smtp_server.received)[slow]) == {row["message_id"]}


def test_a_recipient_deferred_past_the_expiry_fails_as_expired(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(3)
    add_subscribers(store, emails)
    stuck = emails[2]
    smtp_server.set_rule(stuck, Rule(stage="rcpt", code=451, text="4.3.0 try again later"))

    code, out, err, _ = run_send(
        tmp_path, smtp_server.port, "--max-wait", "5", env={**FAST_RETRY, "MAILER_RETRY_EXPIRY": "1"}, timeout=30
    )

    assert code == 3, out + err
    row = deliveries(tmp_path)[stuck]
    assert row["status"] == "failed"
    assert "expired" in row["smtp_reply"]
    assert row["attempts"] >= 2  # retried in the run before it expired
    history = [e["status"] for e in outcomes(tmp_path, row["id"])]
    assert history[-1] == "failed"
    assert set(history[:-1]) == {"deferred"}


def test_deferred_beyond_max_wait_is_left_for_mailer_retry(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    emails = readers(3)
    add_subscribers(store, emails)
    stuck = emails[0]
    smtp_server.set_rule(stuck, Rule(stage="rcpt", code=451, text="4.7.1 greylisted"))

    code, out, err, _ = run_send(
        tmp_path, smtp_server.port, "--max-wait", "0", env={"MAILER_RETRY_BASE": "30"}, timeout=30
    )

    assert code == 0, out + err
    assert "for the retry time" not in err  # it did not wait 30 s for the retry time (the engine says when it does)
    rows = deliveries(tmp_path)
    assert by_status(rows) == {"sent": 2, "deferred": 1}
    row = rows[stuck]
    assert (row["status"], row["attempts"], row["smtp_code"]) == ("deferred", 1, 451)
    assert row["next_attempt"]
    deferred_at = when(outcomes(tmp_path, row["id"])[-1]["at"])
    backoff = (when(row["next_attempt"]) - deferred_at).total_seconds()
    assert 24 <= backoff <= 36  # MAILER_RETRY_BASE ± 20 % jitter

    shown = run_cli("log", str(row["campaign_id"]), "--status", "deferred", "--json")
    assert shown.returncode == 0, shown.stderr
    (logged,) = json.loads(shown.stdout)
    assert (logged["email"], logged["status"], logged["smtp_code"]) == (stuck, "deferred", 451)


# ---- refusals of the session, not of a recipient ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "says"),
    [
        (530, "5.7.0 Authentication required", "asks for authentication"),
        (553, "5.7.1 <bounces@example.org>: Sender address rejected: not owned by user", "refused the sender"),
    ],
)
def test_a_refused_sender_or_session_stops_with_exit_4_and_leaves_everyone_queued(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, code: int, text: str, says: str
) -> None:
    emails = readers(20)
    add_subscribers(store, emails)
    smtp_server.set_rule("*", Rule(stage="mail", code=code, text=text))

    status, out, err, _ = run_send(tmp_path, smtp_server.port)

    assert status == 4, out + err
    assert_one_error_line(err)
    assert says in err and str(code) in err and "run the same command to resume" in err
    assert smtp_server.received == []
    assert by_status(deliveries(tmp_path)) == {"queued": 20}  # nobody burnt
    smtp_server.set_rule("*", Rule(stage="mail"))  # the relay fixed (MAILER_SMTP_USER set, sender allowed)
    status, out, err, _ = run_send(tmp_path, smtp_server.port)
    assert status == 0, out + err
    assert Counter(c.rcpt_tos[0] for c in smtp_server.received) == Counter(emails)


def test_a_reply_that_is_not_smtp_stops_the_campaign_and_marks_nobody_failed(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    add_subscribers(store, readers(20))
    smtp_server.set_rule("*", Rule(stage="rcpt", raw="hello, this is not SMTP"))

    status, out, err, _ = run_send(tmp_path, smtp_server.port, "--concurrency", "2")

    assert status == 4, out + err
    assert_one_error_line(err)
    assert "not an SMTP reply" in err and "hello, this is not SMTP" in err
    assert by_status(deliveries(tmp_path)) == {"queued": 20}


def test_a_reply_that_is_not_smtp_after_data_is_in_doubt_and_resent_with_the_same_message_id(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(5)
    add_subscribers(store, emails)
    garbled = emails[0]
    smtp_server.set_rule(garbled, Rule(stage="data", raw="OK!!", times=1))
    data_attempts = record_data_attempts(smtp_server)

    status, out, err, _ = run_send(tmp_path, smtp_server.port, "--concurrency", "1", env=FAST_RETRY)

    assert status == 4, out + err
    row = deliveries(tmp_path)[garbled]
    assert row["status"] == "deferred" and "in doubt" in row["smtp_reply"]
    status, out, err, _ = run_send(tmp_path, smtp_server.port, env=FAST_RETRY)
    assert status == 0, out + err
    assert by_status(deliveries(tmp_path)) == {"sent": 5}
    assert [mid for rcpt, mid in data_attempts if rcpt == garbled] == [row["message_id"]] * 2


def test_the_same_permanent_refusal_for_many_recipients_in_a_row_pauses_the_campaign(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    emails = readers(30)
    add_subscribers(store, emails)
    for email in emails:  # as Postfix words it: the address in the reply, the rest the same for everyone
        smtp_server.set_rule(
            email,
            Rule(
                stage="rcpt",
                code=550,
                text=f"5.1.1 <{email}>: Recipient address rejected: User unknown in virtual mailbox table",
            ),
        )

    status, out, err, _ = run_send(tmp_path, smtp_server.port, "--concurrency", "1", env={"MAILER_PAUSE_AFTER": "5"})

    assert status == 4, out + err
    assert_one_error_line(err)
    assert "5 recipients in a row were refused with the same reply (the last: 550 5.1.1 <" in err
    assert "paused" in err
    assert by_status(deliveries(tmp_path)) == {"queued": 30}  # the five are queued again
    shown = run_cli("suppressions", "ls", "--json")
    assert json.loads(shown.stdout) == []  # and the 5.1.1 suppressions taken back with them
    for email in emails:
        smtp_server.set_rule(email, Rule())
    status, out, err, _ = run_send(tmp_path, smtp_server.port)
    assert status == 0, out + err
    assert Counter(c.rcpt_tos[0] for c in smtp_server.received) == Counter(emails)


@pytest.mark.parametrize(
    ("text", "suppressed"),
    [
        ("5.1.1 <{}>: Recipient address rejected: User unknown", True),
        ("5.2.1 mailbox disabled, not accepting messages", True),
        ("5.7.1 <{}>: Relay access denied", False),  # policy, not the mailbox: never suppresses
        ("5.7.606 Access denied, banned sending IP", False),
    ],
)
def test_a_mailbox_unknown_at_rcpt_suppresses_the_address_as_a_dsn_would(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli, text: str, suppressed: bool
) -> None:
    emails = readers(3)
    add_subscribers(store, emails)
    gone = emails[1]
    smtp_server.set_rule(gone, Rule(stage="rcpt", code=550, text=text.format(gone)))

    status, out, err, _ = run_send(tmp_path, smtp_server.port)

    assert status == 3, out + err
    assert deliveries(tmp_path)[gone]["status"] == "failed"
    rows = json.loads(run_cli("suppressions", "ls", "--json").stdout)
    assert [r["email"] for r in rows] == ([gone] if suppressed else [])
    subs = json.loads(run_cli("subs", "ls", "--list", "bulletin", "--json").stdout)
    assert {s["email"]: s["status"] for s in subs}[gone] == ("bounced" if suppressed else "active")


# ---- a relay that goes away and comes back ---------------------------------------------------------------------


def stop_relay_at(server: CaptureServer, count: int, down_for: float | None) -> list[bool]:
    """Stop the relay once `count` messages have arrived, and start it again `down_for` seconds later (never,
    with None). From a thread: the hook runs in the server's own loop, which cannot stop itself."""
    done: list[bool] = []

    def bounce() -> None:
        server.stop()
        if down_for is not None:
            time.sleep(down_for)
            server.start()

    def hook(_: Captured) -> None:
        if len(server.received) >= count and not done:
            done.append(True)
            threading.Thread(target=bounce).start()

    server.state.on_message = hook
    return done


def test_a_relay_restarting_mid_send_is_waited_for_and_the_run_finishes(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(200)
    add_subscribers(store, emails)
    restarted = stop_relay_at(smtp_server, 50, down_for=3)

    status, out, err, _ = run_send(
        tmp_path,
        smtp_server.port,
        "--rate",
        "100",
        "--concurrency",
        "2",
        env={**FAST_RETRY, "MAILER_RELAY_GRACE": "60"},
    )

    assert restarted
    assert status == 0, out + err
    assert "trying again for up to 60s" in err
    copies = copies_by_recipient(smtp_server.received)
    assert set(copies) == set(emails)
    assert sum(len(ids) - 1 for ids in copies.values()) <= 2  # in doubt when the relay went: sent again
    assert by_status(deliveries(tmp_path)) == {"sent": 200}


def test_a_relay_that_stays_away_past_the_grace_stops_the_run_with_counts_and_the_resume_command(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(200)
    add_subscribers(store, emails)
    stop_relay_at(smtp_server, 50, down_for=None)

    # FAST_RETRY: a message in flight when the relay went is deferred in doubt; the resume waits for its retry time
    status, out, err, _ = run_send(
        tmp_path, smtp_server.port, "--rate", "100", "--concurrency", "2", env={**FAST_RETRY, "MAILER_RELAY_GRACE": "1"}
    )

    assert status == 4, out + err
    counts = by_status(deliveries(tmp_path))
    waiting = counts["queued"] + counts["deferred"]
    assert counts["sent"] + waiting == 200 and counts["sent"] >= 50
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot connect to SMTP server 127.0.0.1:{smtp_server.port}")
    assert last.endswith(
        f"campaign 1 stopped with {counts['sent']} sent and {waiting} waiting; run the same "
        f"command to resume: mailer send {SAMPLE_ISSUE} --list bulletin"
    )
    assert f"{waiting} queued" in out or f"{counts['queued']} queued" in out  # the summary line too
    smtp_server.state.on_message = None
    smtp_server.start()
    status, out, err, _ = run_send(tmp_path, smtp_server.port, env=FAST_RETRY)
    assert status == 0, out + err
    assert set(copies_by_recipient(smtp_server.received)) == set(emails)


# ---- the database's disk, the relay's words ----------------------------------------------------------------


def test_a_full_disk_during_a_send_is_one_error_line_and_the_send_resumes(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(200)
    add_subscribers(store, emails)
    open_campaign(store, prepare_issue(store, config, SAMPLE_ISSUE, "bulletin"), config.secret)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    # A file size limit is a full disk to SQLite (and needs no root): the WAL can grow by some 40 pages from here.
    limit = (tmp_path / "mailer.db").stat().st_size + 160_000
    command = [sys.executable, "-m", "mailer", *SEND, "--smtp-port", str(smtp_server.port), "--concurrency", "2"]

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run(
        command,
        cwd=tmp_path,
        env=cli_env(tmp_path),
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        preexec_fn=small_disk,
    )

    assert full.returncode == 1, full.stdout + full.stderr
    assert "Traceback" not in full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write to database") and "free some disk space" in last
    rows = deliveries(tmp_path)
    assert 0 < by_status(rows)["sent"] < 200
    received = {c.rcpt_tos[0] for c in smtp_server.received}
    assert {e for e, r in rows.items() if r["status"] == "sent"} <= received  # nothing recorded sent wrongly
    code, out, err = finish(spawn(tmp_path, *SEND, "--smtp-port", str(smtp_server.port), "--concurrency", "2"))
    assert code == 0, out + err
    copies = copies_by_recipient(smtp_server.received)
    assert set(copies) == set(emails)
    assert sum(len(ids) - 1 for ids in copies.values()) <= 2


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_relay_that_echoes_the_auth_argument_never_gets_the_credentials_printed(store: Store, tmp_path: Path) -> None:
    add_subscribers(store, readers(3))
    password = "wrong-pw-Xk9"
    sent = [base64.b64encode(raw).decode() for raw in (f"\0u\0{password}".encode(), password.encode())]
    with CaptureServer(tmp_path / "auth-outbox", users={"u": "right-pw-Zq7"}, echo_auth=True) as server:
        status, out, err, _ = run_send(
            tmp_path, server.port, env={"MAILER_SMTP_USER": "u", "MAILER_SMTP_PASSWORD": password}
        )

    assert status == 4, out + err
    assert_one_error_line(err)
    assert "535" in err and "[redacted]" in err
    for secret in (password, *sent):
        assert secret not in out + err


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (("--smtp-port", "70000"), {}, 2, "--smtp-port"),
        ((), {"MAILER_SMTP_HOST": "127.0.0.1:0"}, 2, "not a TCP port"),
        ((), {"MAILER_SMTP_PORT": "70000"}, 1, "must be from 1 to 65535"),  # a setting: a configuration error
    ],
)
def test_a_port_out_of_range_is_one_error_line_not_connection_refused(
    store: Store, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], code: int, says: str
) -> None:
    add_subscribers(store, readers(1))
    status, out, err, _ = run_send(tmp_path, None, *args, env=env)
    assert status == code, out + err
    assert says in assert_one_error_line_text(err)
    assert deliveries(tmp_path) == {}


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_an_smtp_timeout_that_is_not_a_number_of_seconds_is_one_config_error(
    store: Store, tmp_path: Path, value: str
) -> None:
    status, out, err, _ = run_send(tmp_path, None, env={"MAILER_SMTP_TIMEOUT": value})
    assert status == 1, out + err
    assert f"MAILER_SMTP_TIMEOUT = '{value}' must be a number of seconds" in assert_one_error_line_text(err)


def assert_one_error_line_text(stderr: str) -> str:
    assert_one_error_line(stderr)
    return stderr.strip()


# ---- one sender per campaign, rate, relays --------------------------------------------------------------------


def test_two_senders_on_one_campaign_one_refuses_and_nobody_gets_two(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(200)
    add_subscribers(store, emails)
    command = (*SEND, "--smtp-port", str(smtp_server.port), "--rate", "100")

    procs = [spawn(tmp_path, *command), spawn(tmp_path, *command)]
    results = [finish(p) for p in procs]

    assert sorted(code for code, _, _ in results) == [0, 1], results
    winner = 0 if results[0][0] == 0 else 1
    loser_err = results[1 - winner][2]
    assert_one_error_line(loser_err)
    assert "campaign" in loser_err.lower()
    assert str(procs[winner].pid) in loser_err  # names the process that holds the lease
    assert Counter(c.rcpt_tos[0] for c in smtp_server.received) == Counter(emails)
    assert by_status(deliveries(tmp_path)) == {"sent": 200}


class VirtualTime:
    """A clock the test moves, and a sleep that only notes when it would wake: rate-limit tests that load on the
    machine cannot fail (a wall-clock window of 1.8-2.2 s did, 3 of 11 runs)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.wakes: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float, stop: asyncio.Event | None) -> bool:
        self.wakes.append(self.now + seconds)
        return False


async def test_the_rate_limit_hands_out_evenly_spaced_slots_and_no_burst_after_a_pause() -> None:
    time_ = VirtualTime(100.0)
    limiter = RateLimiter(40, clock=time_.clock, sleep=time_.sleep)

    granted = await asyncio.gather(*(limiter.acquire() for _ in range(81)))  # 81 sessions asking at once

    assert all(granted)
    assert time_.wakes == pytest.approx([100 + k / 40 for k in range(1, 81)])  # the first goes at once
    time_.now, time_.wakes = 200.0, []  # quiet for a while: unused slots are not saved up
    assert await limiter.acquire() and await limiter.acquire()
    assert time_.wakes == [pytest.approx(200.025)]


async def test_the_engine_takes_one_rate_slot_per_message_across_its_sessions(
    store: Store, config: Config, smtp_server: CaptureServer
) -> None:
    add_subscribers(store, readers(81))
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    options = SendOptions(concurrency=4, rate=40)
    campaign, template = open_campaign(store, prepare_issue(store, config, SAMPLE_ISSUE, "bulletin"), config.secret)
    time_ = VirtualTime()
    limiter = RateLimiter(40, clock=time_.clock, sleep=time_.sleep)

    await Engine(
        CampaignLog(store, campaign.id),
        template,
        campaign,
        settings,
        options,
        lease=Lease(store.leases.acquire(campaign.id)),
        limiter=limiter,
    ).run()

    assert len(smtp_server.received) == 81
    assert time_.wakes == pytest.approx([k / 40 for k in range(1, 81)])


async def test_a_stop_while_waiting_for_a_far_rate_slot_acts_at_once() -> None:
    limiter = RateLimiter(0.001, clock=lambda: 0.0)  # a slot every 1000 s, and the real (stoppable) sleep
    stop = asyncio.Event()
    assert await limiter.acquire(stop)  # the first slot is now
    waiting = asyncio.ensure_future(limiter.acquire(stop))
    await asyncio.sleep(0)  # now waiting for the slot 1000 s away

    stop.set()

    assert await asyncio.wait_for(waiting, timeout=30) is False


def test_ctrl_c_with_a_low_rate_is_acknowledged_and_sends_nothing_more(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    add_subscribers(store, readers(30))
    interrupted: list[int] = []

    def interrupt_at_first(_: Captured) -> None:
        if not interrupted:
            interrupted.append(len(smtp_server.received))
            os.kill(proc.pid, signal.SIGINT)

    smtp_server.state.on_message = interrupt_at_first
    proc = spawn(tmp_path, *SEND, "--smtp-port", str(smtp_server.port), "--rate", "2", "--concurrency", "4")
    code, out, err = finish(proc, timeout=30)

    assert code == 130, out + err
    assert "stopping: no new recipients" in err
    assert len(smtp_server.received) == interrupted[0]  # the sessions waiting for rate slots sent nothing more
    assert by_status(deliveries(tmp_path))["sending"] == 0


def test_sessions_are_spread_over_several_relays(store: Store, tmp_path: Path) -> None:
    emails = readers(100)
    add_subscribers(store, emails)
    with CaptureServer(tmp_path / "relay-a") as relay_a, CaptureServer(tmp_path / "relay-b") as relay_b:
        hosts = f"127.0.0.1:{relay_a.port},127.0.0.1:{relay_b.port}"

        code, out, err, _ = run_send(tmp_path, None, "--concurrency", "4", env={"MAILER_SMTP_HOST": hosts})

        a, b = relay_a.received, relay_b.received
    assert code == 0, out + err
    assert a and b, f"relay a got {len(a)}, relay b got {len(b)}"
    assert len(a) + len(b) == 100
    assert Counter(c.rcpt_tos[0] for c in a + b) == Counter(emails)
    assert by_status(deliveries(tmp_path)) == {"sent": 100}


# ---- several worker processes ----------------------------------------------------------------------------------


def test_workers_send_each_recipient_once_and_die_with_a_killed_parent(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(300)
    add_subscribers(store, emails)
    command = (*SEND, "--smtp-port", str(smtp_server.port), "--rate", "100", "--concurrency", "4", "--workers", "2")
    killed: list[int] = []

    def kill_parent_at_100(_: Captured) -> None:
        if len(smtp_server.received) >= 100 and not killed:
            killed.append(len(smtp_server.received))
            os.kill(proc.pid, signal.SIGKILL)

    smtp_server.state.on_message = kill_parent_at_100
    proc = spawn(tmp_path, *command)
    finish(proc, timeout=30)
    smtp_server.state.on_message = None
    assert proc.returncode == -signal.SIGKILL
    time.sleep(1.0)
    settled = len(smtp_server.received)
    time.sleep(1.0)
    assert len(smtp_server.received) == settled, "a worker outlived its killed parent and kept sending"
    assert settled < 300
    in_sending = by_status(deliveries(tmp_path))["sending"]
    assert in_sending <= 4

    code, out, err = finish(spawn(tmp_path, *command))

    assert code == 0, out + err
    copies = copies_by_recipient(smtp_server.received)
    assert set(copies) == set(emails)
    duplicates = sum(len(ids) - 1 for ids in copies.values())
    assert duplicates <= 4
    assert all(len(set(ids)) == 1 for ids in copies.values())
    assert by_status(deliveries(tmp_path)) == {"sent": 300}


def children(parent: int) -> list[int]:
    """The processes whose parent is `parent` now (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_parent_of_workers(proc: subprocess.Popen[str], workers: int, after: float) -> list[int]:
    """kill -9 `mailer send --workers N` `after` seconds after its workers appear; returns the workers' pids."""
    deadline = time.monotonic() + 30
    while len(pids := children(proc.pid)) < workers:
        assert proc.poll() is None, "the send ended before its workers started"
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.002)
    time.sleep(after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()  # not communicate(): orphans would hold its pipes open, and the test would wait for them
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return pids


def wait_until_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 15
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, "a worker outlived its killed parent"
        time.sleep(0.05)


def test_workers_whose_parent_is_killed_while_they_start_never_send(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(300)
    add_subscribers(store, emails)
    command = (*SEND, "--smtp-port", str(smtp_server.port), "--rate", "300", "--concurrency", "4", "--workers", "2")

    wait_until_gone(kill_parent_of_workers(spawn(tmp_path, *command), 2, after=0))  # they were importing mailer
    time.sleep(1.0)  # an orphan would be sending by now (before the fix: the whole list, and again on resume)

    assert len(smtp_server.received) == 0
    code, out, err = finish(spawn(tmp_path, *command))
    assert code == 0, out + err
    copies = copies_by_recipient(smtp_server.received)
    assert set(copies) == set(emails)
    assert sum(len(ids) - 1 for ids in copies.values()) == 0
    assert by_status(deliveries(tmp_path)) == {"sent": 300}


def test_workers_killed_with_their_parent_at_random_moments_repeat_at_most_the_session_count_each_time(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(400)
    add_subscribers(store, emails)
    command = (*SEND, "--smtp-port", str(smtp_server.port), "--rate", "100", "--concurrency", "4", "--workers", "2")
    rng = random.Random(11)
    moments = [0.0] + [round(rng.uniform(0.2, 2.5), 2) for _ in range(3)]
    workers: list[int] = []
    for after in moments:  # resumed at once, as README advises, and killed in turn: orphans would overlap it
        workers += kill_parent_of_workers(spawn(tmp_path, *command), 2, after)

    code, out, err = finish(spawn(tmp_path, *command))

    assert code == 0, out + err
    wait_until_gone(workers)
    copies = copies_by_recipient(smtp_server.received)
    assert set(copies) == set(emails)  # nobody lost
    duplicates = sum(len(ids) - 1 for ids in copies.values())
    print(f"\n{len(moments)} kills at {moments} s after the workers started: {duplicates} duplicate(s)")
    assert duplicates <= 4 * len(moments)  # the total session count, per kill
    assert all(len(set(ids)) == 1 for ids in copies.values())
    assert by_status(deliveries(tmp_path)) == {"sent": 400}


# ---- a stalled sender and its lease ----------------------------------------------------------------------------

LEASE_1S = {"MAILER_LEASE_SECONDS": "1"}


def stop_sender_at(server: CaptureServer, count: int) -> tuple[list[subprocess.Popen[str]], list[int]]:
    """An on_message hook that SIGSTOPs the sender in `procs[0]` once `count` messages have arrived; the
    second list gets the number received at that moment."""
    procs: list[subprocess.Popen[str]] = []
    at: list[int] = []

    def hook(_: Captured) -> None:
        if len(server.received) >= count and not at:
            at.append(len(server.received))
            os.kill(procs[0].pid, signal.SIGSTOP)

    server.state.on_message = hook
    return procs, at


def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_sender_stopped_past_its_lease_keeps_its_campaign_and_a_second_send_is_refused(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    emails = readers(200)
    add_subscribers(store, emails)
    command = (*SEND, "--smtp-port", str(smtp_server.port), "--rate", "50", "--concurrency", "1")
    procs, stopped_at = stop_sender_at(smtp_server, 40)
    procs.append(first := spawn(tmp_path, *command, env=LEASE_1S))
    wait_for(lambda: stopped_at, "the first sender to be stopped")
    smtp_server.state.on_message = None
    time.sleep(2.5)  # kill -STOP past its 1 s lease: nothing renews it (Ctrl-Z, a closed lid, a paused VM)

    code, out, err = finish(spawn(tmp_path, *command, env=LEASE_1S))

    assert code == 1, out + err
    assert_one_error_line(err)
    assert str(first.pid) in err and "stopped" in err and f"kill -CONT {first.pid}" in err
    assert len(smtp_server.received) == stopped_at[0]  # the second sender sent nothing
    os.kill(first.pid, signal.SIGCONT)
    code, out, err = finish(first)
    assert code == 0, out + err
    assert Counter(c.rcpt_tos[0] for c in smtp_server.received) == Counter(emails)  # everyone once
    assert by_status(deliveries(tmp_path)) == {"sent": 200}


def test_a_sender_whose_lease_was_taken_while_it_was_stopped_stops_before_its_next_message(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    add_subscribers(store, readers(200))
    command = (*SEND, "--smtp-port", str(smtp_server.port), "--rate", "50", "--concurrency", "1")
    procs, stopped_at = stop_sender_at(smtp_server, 40)
    procs.append(first := spawn(tmp_path, *command, env=LEASE_1S))
    wait_for(lambda: stopped_at, "the sender to be stopped")
    smtp_server.state.on_message = None
    time.sleep(1.5)
    # What a sender on another host does once the lease has expired (it cannot see whether this one lives).
    with closing(sqlite3.connect(tmp_path / "mailer.db", timeout=10)) as conn, conn:
        conn.execute(
            "UPDATE campaigns SET lease_owner = 'relay-b.example:4242:77', lease_until = ?",
            ("2999-01-01T00:00:00.000Z",),
        )

    os.kill(first.pid, signal.SIGCONT)
    code, out, err = finish(first)

    assert code == 1, out + err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no longer holds campaign" in last and "relay-b.example" in last
    assert len(smtp_server.received) - stopped_at[0] <= 1  # only the message already in flight
    rows = deliveries(tmp_path)
    assert by_status(rows)["sending"] == 0  # what it had in flight was recorded
    assert {e for e, r in rows.items() if r["status"] == "sent"} == {c.rcpt_tos[0] for c in smtp_server.received}


def test_a_holder_stopped_inside_a_transaction_is_named_at_once_not_after_waiting_for_the_lock(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    add_subscribers(store, readers(3))
    campaign, _ = open_campaign(store, prepare_issue(store, config, SAMPLE_ISSUE, "bulletin"), config.secret)
    store.leases.acquire(campaign.id)  # this test process holds the campaign...
    with closing(sqlite3.connect(tmp_path / "mailer.db", isolation_level=None)) as stalled:
        stalled.execute("BEGIN IMMEDIATE")  # ...and, as if stopped mid-commit, SQLite's write lock

        code, out, err, _ = run_send(tmp_path, smtp_server.port)

        stalled.execute("ROLLBACK")
    assert code == 1, out + err
    assert_one_error_line(err)
    assert f"campaign {campaign.id} is being sent by process {os.getpid()}" in err  # not "database is locked"
    assert smtp_server.received == []


def test_a_lease_holder_on_this_host_is_told_apart_by_pid_and_start_time() -> None:
    me = lease_owner()
    host, pid, start = me.split(":")
    assert (pid, holder_state(me)) == (str(os.getpid()), "running")
    assert holder_state(f"{host}:{pid}:{int(start) + 1}") == "dead"  # the pid, reused by another process
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        os.kill(sleeper.pid, signal.SIGSTOP)
        wait_for(lambda: holder_state(lease_owner(sleeper.pid)) == "stopped", "the process to stop", 10)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert holder_state(lease_owner(sleeper.pid)) == "dead"
    assert holder_state("relay-b.example:4242:77") == "remote"


# ---- TLS policy ------------------------------------------------------------------------------------------------


def test_starttls_required_but_not_offered_exits_4_and_marks_nobody(
    store: Store, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    add_subscribers(store, readers(3))

    code, out, err, _ = run_send(tmp_path, smtp_server.port, env={"MAILER_SMTP_TLS": "starttls"})

    assert code == 4, out + err
    assert_one_error_line(err)
    assert smtp_server.received == []
    assert "failed" not in by_status(deliveries(tmp_path))


def test_a_password_is_never_sent_in_plain_text_to_a_remote_host(store: Store, tmp_path: Path) -> None:
    add_subscribers(store, readers(3))
    # Refused by policy before any connection is attempted, so no traffic leaves this machine.
    env = {
        "MAILER_SMTP_HOST": "smtp.example.org",
        "MAILER_SMTP_USER": "u",
        "MAILER_SMTP_PASSWORD": "s3cret-pw",
        "MAILER_SMTP_TLS": "none",
    }

    code, out, err, _ = run_send(tmp_path, None, env=env)

    assert code == 1, out + err
    assert_one_error_line(err)
    assert "plain text" in err
    assert "s3cret-pw" not in out + err
    assert deliveries(tmp_path) == {}


# aiosmtpd warns about AUTH without TLS when the TLS is implicit (it only counts STARTTLS): a false alarm here.
IMPLICIT_TLS_AUTH = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def _server_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server-side context with a certificate for 127.0.0.1 and localhost, issued by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def relay_ca() -> trustme.CA:
    return trustme.CA()


@IMPLICIT_TLS_AUTH
@pytest.mark.parametrize("user", ["", "mailer"])
@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_tls_relay_verified_by_mailer_smtp_ca_gets_every_message(
    store: Store, tmp_path: Path, relay_ca: trustme.CA, mode: str, user: str
) -> None:
    emails = readers(5)
    add_subscribers(store, emails)
    relay_ca.cert_pem.write_to_path(str(tmp_path / "relay-ca.pem"))
    env = {"MAILER_SMTP_TLS": mode, "MAILER_SMTP_CA": str(tmp_path / "relay-ca.pem")}
    if user:
        env.update({"MAILER_SMTP_USER": user, "MAILER_SMTP_PASSWORD": "tls-pw-Hq3"})
    # STARTTLS mode: the server refuses MAIL (and AUTH) before STARTTLS; tls mode: TLS from the first byte.
    with CaptureServer(
        tmp_path / "tls-outbox",
        tls=_server_tls(relay_ca),
        implicit_tls=mode == "tls",
        users={user: "tls-pw-Hq3"} if user else None,
    ) as server:
        code, out, err, _ = run_send(tmp_path, server.port, "--concurrency", "2", env=env)
        received = server.received

    assert code == 0, out + err
    assert Counter(c.rcpt_tos[0] for c in received) == Counter(emails)
    assert by_status(deliveries(tmp_path)) == {"sent": 5}
    assert "tls-pw-Hq3" not in out + err


@IMPLICIT_TLS_AUTH
@pytest.mark.parametrize("trusted", ["another CA", "system CAs"])
@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_a_relay_certificate_the_configured_cas_did_not_sign_exits_4_and_marks_nobody(
    store: Store, tmp_path: Path, relay_ca: trustme.CA, mode: str, trusted: str
) -> None:
    add_subscribers(store, readers(3))
    env = {"MAILER_SMTP_TLS": mode, "MAILER_SMTP_USER": "mailer", "MAILER_SMTP_PASSWORD": "tls-pw-Hq3"}
    if trusted == "another CA":
        trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
        env["MAILER_SMTP_CA"] = str(tmp_path / "other-ca.pem")
    with CaptureServer(
        tmp_path / "tls-outbox", tls=_server_tls(relay_ca), implicit_tls=mode == "tls", users={"mailer": "tls-pw-Hq3"}
    ) as server:
        code, out, err, _ = run_send(tmp_path, server.port, env=env)
        received = server.received

    assert code == 4, out + err
    assert_one_error_line(err)
    assert "certificate" in err.lower()
    assert ("other-ca.pem" if trusted == "another CA" else "MAILER_SMTP_CA") in err  # says what to change
    assert "tls-pw-Hq3" not in out + err
    assert received == []
    assert "failed" not in by_status(deliveries(tmp_path))


def test_an_unreadable_mailer_smtp_ca_is_a_one_line_error(store: Store, tmp_path: Path) -> None:
    add_subscribers(store, readers(1))

    code, out, err, _ = run_send(
        tmp_path, free_port(), env={"MAILER_SMTP_TLS": "starttls", "MAILER_SMTP_CA": str(tmp_path / "missing.pem")}
    )

    assert code == 1, out + err
    assert_one_error_line(err)
    assert "MAILER_SMTP_CA" in err and "missing.pem" in err
