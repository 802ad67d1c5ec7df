"""Scheduled sends and `mailer run`: scheduling with an injected clock (the snapshot is taken at the start, approvals
are checked then), cancel and reschedule, and one real runner process that sends a campaign scheduled seconds ahead
and resumes one after kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailer.capture import CaptureServer
from mailer.config import Config
from mailer.engine import SendOptions
from mailer.errors import MailerError
from mailer.models import CampaignState, Subscriber, UnsubscribeSource
from mailer.runner import Runner
from mailer.send import send_issue
from mailer.smtp import relays
from mailer.store import Store
from tests.conftest import _cli_environment
from tests.test_send import assert_one_error_line, campaigns, write_issue

T0 = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)


def add(store: Store, emails: list[str]) -> None:
    list_id = store.lists.get("bulletin").id
    store.subscribers.upsert(list_id, [Subscriber(email=e) for e in emails], "test")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_scheduled_campaign_starts_when_due_with_who_is_subscribed_then(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    add(store, ["a@example.org", "b@example.org", "c@example.org"])
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    issue = write_issue(tmp_path / "issue.md", "第1期")

    scheduled = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, send_at=T0)

    campaign = store.campaigns.get(scheduled.campaign_id or 0)
    assert campaign.state is CampaignState.SCHEDULED and campaign.send_at == "2026-12-05T01:00:00.000Z"
    assert store.deliveries.counts(campaign.id) == {} and not smtp_server.received
    list_id = store.lists.get("bulletin").id
    store.subscribers.unsubscribe(store.subscribers.get(list_id, "b@example.org").id, UnsubscribeSource.PAGE)
    add(store, ["d@example.org"])
    lines: list[str] = []
    clock = Clock(T0 - timedelta(seconds=1))
    runner = Runner(store, config, settings, SendOptions(), lines.append, clock=clock)

    assert await runner.tick() == 0
    assert not smtp_server.received
    clock.now = T0
    assert await runner.tick() == 1

    assert Counter(c.rcpt_tos[0] for c in smtp_server.received) == Counter(
        {"a@example.org": 1, "c@example.org": 1, "d@example.org": 1}
    )
    assert store.campaigns.state(campaign.id) is CampaignState.FINISHED
    assert any(f"campaign {campaign.id} (issue, list bulletin) starts: 3 recipient(s)" in line for line in lines), lines
    assert await runner.tick() == 0 and len(smtp_server.received) == 3


async def test_a_due_campaign_waits_for_its_approvals_and_starts_once_approved(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    from mailer.approvals import approve
    from mailer.subscriptions import update_list

    add(store, ["a@example.org"])
    update_list(store, "bulletin", require_approval=1)
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    issue = write_issue(tmp_path / "issue.md", "第1期")
    scheduled = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, send_at=T0)
    assert any("will not start without its approvals" in w for w in scheduled.warnings)
    lines: list[str] = []
    runner = Runner(store, config, settings, SendOptions(), lines.append, clock=Clock(T0 + timedelta(hours=1)))

    assert await runner.tick() == 0 and await runner.tick() == 0
    waits = [line for line in lines if "is due and waits" in line]
    assert len(waits) == 1 and "requires 1 approval(s)" in waits[0]  # said once, not every pass
    approve(store, config, issue, "bulletin", "李四")
    assert await runner.tick() == 1
    assert [c.rcpt_tos[0] for c in smtp_server.received] == ["a@example.org"]


def test_scheduling_from_the_command_line_cancel_reschedule_and_a_past_time(
    store: Store, tmp_path: Path, run_cli
) -> None:
    add(store, ["a@example.org"])
    issue = write_issue(tmp_path / "issue.md", "第1期")
    later = (datetime.now(UTC) + timedelta(days=2)).astimezone(UTC).replace(tzinfo=None)
    at = later.strftime("%Y-%m-%d %H:%M")

    result = run_cli("send", str(issue), "--list", "bulletin", "--at", at, "--tz", "Asia/Shanghai", "--yes")

    assert result.returncode == 0, result.stderr
    assert "scheduled for " + at in result.stdout and "Asia/Shanghai" in result.stdout and "mailer run" in result.stdout
    (row,) = campaigns(run_cli)
    assert row["state"] == "scheduled" and row["send_at"] and row["counts"] == {}
    table = run_cli("campaigns", "ls").stdout
    assert "scheduled for" in table
    past = run_cli("send", str(issue), "--list", "bulletin", "--at", "2020-01-01 09:00", "--yes")
    assert past.returncode == 2
    assert_one_error_line(past.stderr)
    assert "in the past" in past.stderr
    moved = run_cli("campaigns", "reschedule", str(row["id"]), "--at", "2099-01-01T09:00+08:00")
    assert moved.returncode == 0, moved.stderr
    assert campaigns(run_cli)[0]["send_at"] == "2099-01-01T01:00:00.000Z"
    cancelled = run_cli("campaigns", "cancel", str(row["id"]))
    assert cancelled.returncode == 0, cancelled.stderr
    assert campaigns(run_cli)[0]["state"] == "cancelled"
    again = run_cli("campaigns", "reschedule", str(row["id"]), "--at", "2099-01-02 09:00")  # it reached nobody
    assert again.returncode == 0, again.stderr
    assert campaigns(run_cli)[0]["state"] == "scheduled"


def _runner(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", "run", "--poll", "0.2", *extra],
        cwd=tmp_path,
        env=_cli_environment(tmp_path, env),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_mailer_run_sends_a_campaign_scheduled_seconds_ahead_and_resumes_one_after_kill_9(
    store: Store, smtp_server: CaptureServer, tmp_path: Path, run_cli
) -> None:
    add(store, [f"r{i:03d}@example.org" for i in range(60)])
    env = {"MAILER_SMTP_PORT": str(smtp_server.port)}
    first = write_issue(tmp_path / "one" / "issue.md", "第1期")
    soon = (datetime.now(UTC) + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert run_cli("send", str(first), "--list", "bulletin", "--at", soon, "--yes").returncode == 0
    runner = _runner(tmp_path, env)
    try:
        assert not smtp_server.received
        _wait_for(lambda: len(smtp_server.received) == 60)
    finally:
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=30)
    assert runner.returncode == 0, err
    assert "starts: 60 recipient(s)" in err and "mailer run: stopped" in err and "Traceback" not in err
    assert len(smtp_server.received) == 60

    # A slow runner killed with -9 mid-campaign; the next one resumes it.
    second = write_issue(tmp_path / "two" / "issue.md", "第2期")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert run_cli("send", str(second), "--list", "bulletin", "--at", now, "--yes").returncode == 0
    killed = _runner(tmp_path, env, "--rate", "20", "--concurrency", "2")
    try:
        _wait_for(lambda: len(smtp_server.received) >= 70)
    finally:
        os.kill(killed.pid, signal.SIGKILL)
        killed.communicate(timeout=30)
    before = len(smtp_server.received) - 60
    assert before < 60
    (_, interrupted) = campaigns(run_cli)
    assert interrupted["state"] == "sending"
    resumed = _runner(tmp_path, env)
    try:
        _wait_for(
            lambda: not campaigns(run_cli)[1]["counts"].get("queued") and campaigns(run_cli)[1]["state"] == "finished"
        )
    finally:
        resumed.send_signal(signal.SIGTERM)
        _, err = resumed.communicate(timeout=30)
    assert resumed.returncode == 0, err
    assert "resumes (its run was interrupted)" in err
    second_round = Counter(c.rcpt_tos[0] for c in smtp_server.received[60:])
    assert set(second_round) == {f"r{i:03d}@example.org" for i in range(60)}  # nobody lost
    assert sum(second_round.values()) - 60 <= 2  # at most --concurrency repeated
    assert campaigns(run_cli)[1]["counts"] == {"sent": 60}


def test_sigterm_stops_an_idle_runner_at_once(store: Store, tmp_path: Path) -> None:
    runner = _runner(tmp_path, {})
    assert runner.stderr is not None
    assert "watching" in runner.stderr.readline()  # its signal handlers are in place before its first line
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=10)
    assert runner.returncode == 0, err
    assert "stopped" in err


async def test_the_runner_sends_due_retries_on_its_clock_and_reads_the_bounce_mailbox_every_few_minutes(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    from mailer.capture import Rule
    from mailer.runner import RunnerOptions
    from tests.test_bounces import fill, sent_messages

    add(store, ["a@example.org", "b@example.org"])
    smtp_server.set_rule("b@example.org", Rule(stage="rcpt", code=451, text="4.7.1 greylisted", times=1))
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    issue = write_issue(tmp_path / "issue.md", "第1期")
    first = await send_issue(store, config, issue, "bulletin", SendOptions(), settings)
    assert first.counts == {"sent": 1, "deferred": 1}
    (tmp_path / "bounces").mkdir()
    (tmp_path / "bounces" / "one.eml").write_bytes(fill("gmail.eml", sent_messages(smtp_server)["a@example.org"]))
    lines: list[str] = []
    now = datetime.now(UTC)
    clock = Clock(now)
    options = RunnerOptions(bounces=tmp_path / "bounces", bounce_every=300)
    runner = Runner(store, config, settings, SendOptions(), lines.append, options, clock=clock)

    assert await runner.tick() == 0  # b's backoff (60 s and jitter) has not passed on the runner's clock
    assert len(smtp_server.received) == 1
    assert any("1 new report(s), 1 matched" in line for line in lines), lines
    assert store.suppressions.get("a@example.org") is not None
    clock.now = now + timedelta(minutes=2)
    assert await runner.tick() == 1

    assert [c.rcpt_tos[0] for c in smtp_server.received] == ["a@example.org", "b@example.org"]
    assert store.deliveries.counts(first.campaign_id or 0) == {"bounced": 1, "sent": 1}
    scans = len([line for line in lines if "bounces" in line])
    clock.now = now + timedelta(minutes=10)
    await runner.tick()  # scanned again, but the report was read already: nothing new to say
    assert len([line for line in lines if "bounces" in line]) == scans


async def test_scheduling_again_moves_it_and_a_plain_send_starts_it_now(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    add(store, ["a@example.org"])
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    issue = write_issue(tmp_path / "issue.md", "第1期")
    first = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, send_at=T0)
    moved = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, send_at=T0 + timedelta(days=1))
    assert moved.campaign_id == first.campaign_id
    assert store.campaigns.get(first.campaign_id or 0).send_at == "2026-12-06T01:00:00.000Z"
    other = write_issue(tmp_path / "issue.md", "第1期", body="另一版。")
    with pytest.raises(MailerError, match="is scheduled for"):
        await send_issue(store, config, other, "bulletin", SendOptions(), settings, send_at=T0)
    write_issue(tmp_path / "issue.md", "第1期")

    now = await send_issue(store, config, issue, "bulletin", SendOptions(), settings)

    assert now.campaign_id == first.campaign_id and now.counts == {"sent": 1}
    assert any("it starts now" in w for w in now.warnings)
    assert len(smtp_server.received) == 1


async def test_the_runner_logs_a_pause_it_waits_out_and_goes_on_when_resumed(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    add(store, [f"r{i}@example.org" for i in range(5)])
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    issue = write_issue(tmp_path / "issue.md", "第1期")
    scheduled = await send_issue(store, config, issue, "bulletin", SendOptions(), settings, send_at=T0)
    campaign_id = scheduled.campaign_id or 0
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "paused: waiting" in line:
            store.campaigns.resume(campaign_id)

    async def pause_after_the_first_message() -> None:
        while not smtp_server.received:
            await asyncio.sleep(0.005)
        store.campaigns.pause(campaign_id)

    runner = Runner(store, config, settings, SendOptions(concurrency=1, rate=20, state_poll=0.01), log, clock=Clock(T0))
    pauser = asyncio.create_task(pause_after_the_first_message())
    assert await runner.tick() == 1
    await pauser

    assert f"campaign {campaign_id}: campaign {campaign_id} resumed" in lines, lines
    assert any(f"campaign {campaign_id}: campaign {campaign_id} paused: waiting" in line for line in lines), lines
    assert sorted(c.rcpt_tos[0] for c in smtp_server.received) == [f"r{i}@example.org" for i in range(5)]
    assert store.campaigns.state(campaign_id) is CampaignState.FINISHED


async def test_a_campaign_another_live_sender_holds_is_left_to_it_and_said_once(
    store: Store, config: Config, smtp_server: CaptureServer, tmp_path: Path
) -> None:
    from mailer.store.leases import lease_owner

    add(store, ["a@example.org", "b@example.org"])
    settings = relays(config.with_overrides(smtp_port=smtp_server.port))
    scheduled = await send_issue(
        store, config, write_issue(tmp_path / "issue.md", "第1期"), "bulletin", SendOptions(), settings, send_at=T0
    )
    campaign_id = scheduled.campaign_id or 0
    store.schedules.begin(campaign_id, store.campaigns.audience(store.lists.get("bulletin").id))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the other sender, alive
    try:
        with store.transaction():
            store.conn.execute(
                "UPDATE campaigns SET lease_owner = ?, lease_until = '2000-01-01' WHERE id = ?",
                (lease_owner(other.pid), campaign_id),
            )
        lines: list[str] = []
        runner = Runner(store, config, settings, SendOptions(), lines.append, clock=Clock(T0 + timedelta(minutes=1)))
        for _ in range(3):
            assert await runner.tick() == 0
    finally:
        other.kill()
        other.wait()
    assert not smtp_server.received
    assert not any("resumes" in line for line in lines), lines
    assert lines == [
        f"campaign {campaign_id} is being sent by process {other.pid} on this host; leaving it to that sender"
    ]
