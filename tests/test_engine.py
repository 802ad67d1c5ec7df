"""The engine on its own: a real SQLite store as its delivery log, a fake transport that answers as it is told, and
a clock the test moves, so retries, expiry, refusals and the rate limit are checked without a relay or a wait.
(tests/test_delivery.py sends the same way through real SMTP servers.)"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest

from mailer.campaign import open_campaign, prepare_issue
from mailer.config import Config
from mailer.delivery_log import CampaignLog
from mailer.engine import Engine, Lease, SendOptions
from mailer.errors import SMTPUnavailable
from mailer.message import BuiltMessage
from mailer.models import Campaign, DeliveryStatus, Subscriber
from mailer.pacing import RateLimiter
from mailer.policy import CampaignPaused, RetryPolicy
from mailer.smtp import RelayUnreachable, Reply, SMTPSettings, Stage, classify
from mailer.store import Store
from mailer.store.leases import LeaseLost, lease_owner
from tests.conftest import SAMPLE_ISSUE

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class FakeSession:
    """One session of the fake relay: each message is answered by `answer(rcpt)`; the relay may be down."""

    def __init__(self, relay: FakeRelay) -> None:
        self.relay = relay
        self.connected = False
        self.sent_on_session = 0

    async def open(self) -> None:
        self.relay.opened += 1
        if self.relay.down:
            raise RelayUnreachable("cannot connect to SMTP server fake:25: connection refused")
        self.connected = True
        self.sent_on_session = 0

    async def send(self, message: BuiltMessage) -> Reply:
        self.relay.sent.append(message.rcpt_to)
        self.sent_on_session += 1
        held = self.relay.hold.get(message.rcpt_to)
        if held is not None:
            await held.wait()  # the relay takes its time over this one
        await asyncio.sleep(0)  # as a real session: the others go on meanwhile
        return self.relay.answer(message.rcpt_to)

    async def close(self) -> None:
        self.connected = False


class FakeRelay:
    def __init__(self, answer: Callable[[str], Reply] = lambda rcpt: classify(250, "2.0.0 Ok", Stage.END_OF_DATA)):
        self.answer = answer
        self.hold: dict[str, asyncio.Event] = {}  # recipients whose reply waits for the event
        self.down = False
        self.opened = 0
        self.sent: list[str] = []

    def transport(self, settings: SMTPSettings) -> FakeSession:
        return FakeSession(self)


async def run_engine(
    store: Store,
    config: Config,
    relay: FakeRelay,
    clock: FakeClock,
    **options: object,
) -> tuple[Campaign, Engine]:
    store.clock = clock  # the store stamps the rows (first attempt, updated) on the same clock as the engine
    campaign, template = open_campaign(store, prepare_issue(store, config, SAMPLE_ISSUE, "bulletin"), config.secret)
    engine = Engine(
        CampaignLog(store, campaign.id),
        template,
        campaign,
        [SMTPSettings()],
        SendOptions(**options),
        clock=clock,
        lease=Lease(store.leases.acquire(campaign.id)),
        transport=relay.transport,
    )
    await engine.run()
    return campaign, engine


def add(store: Store, *emails: str) -> None:
    store.subscribers.upsert(store.lists.get("bulletin").id, [Subscriber(email=e) for e in emails], "test")


def statuses(store: Store, campaign: Campaign) -> dict[str, str]:
    return {row.email: row.status for row in store.deliveries.log(campaign.id)}


async def test_every_recipient_is_sent_over_reused_sessions(store: Store, config: Config) -> None:
    add(store, *(f"r{i}@example.org" for i in range(10)))
    relay = FakeRelay()
    campaign, _ = await run_engine(store, config, relay, FakeClock(), concurrency=2, session_cap=3)
    assert set(statuses(store, campaign).values()) == {"sent"}
    assert sorted(relay.sent) == sorted(f"r{i}@example.org" for i in range(10))
    assert relay.opened == 4  # two sessions of at most three messages, reopened: 3 + 3 + 3 + 1


async def test_a_deferral_is_retried_after_its_backoff_on_the_engines_clock(store: Store, config: Config) -> None:
    add(store, "slow@example.org")
    clock = FakeClock()
    relay = FakeRelay(lambda rcpt: classify(451, "4.7.1 try later", Stage.RCPT))
    policy = RetryPolicy(base=60, maximum=3600, expiry=86400, jitter=0)
    campaign, _ = await run_engine(store, config, relay, clock, retry=policy, max_wait=0)
    [entry] = store.deliveries.log(campaign.id)
    assert entry.status == DeliveryStatus.DEFERRED
    assert entry.next_attempt == "2026-12-01T09:01:00.000Z"  # base 60 s after the attempt, on the fake clock

    clock.now = START + timedelta(minutes=2)  # the retry time has come
    store.deliveries.requeue_due(campaign.id, "2026-12-01T09:02:00.000Z")
    relay.answer = lambda rcpt: classify(451, "4.7.1 try later", Stage.RCPT)
    await run_engine(store, config, relay, clock, retry=policy, max_wait=0)
    [entry] = store.deliveries.log(campaign.id)
    assert entry.attempts == 2 and entry.next_attempt == "2026-12-01T09:04:00.000Z"  # doubled: 120 s


async def test_a_recipient_deferred_past_the_expiry_fails(store: Store, config: Config) -> None:
    add(store, "gone@example.org")
    clock = FakeClock()
    relay = FakeRelay(lambda rcpt: classify(450, "4.2.0 mailbox busy", Stage.RCPT))
    policy = RetryPolicy(base=60, maximum=3600, expiry=3600, jitter=0)
    campaign, _ = await run_engine(store, config, relay, clock, retry=policy)
    clock.now = START + timedelta(hours=2)  # past the expiry since the first attempt
    store.deliveries.requeue_due(campaign.id)
    await run_engine(store, config, relay, clock, retry=policy)
    [entry] = store.deliveries.log(campaign.id)
    assert entry.status == DeliveryStatus.FAILED
    assert entry.smtp_reply == "expired after 2 attempts; last reply: 4.2.0 mailbox busy"


async def test_equal_refusals_in_a_row_pause_the_campaign_and_queue_them_again(store: Store, config: Config) -> None:
    add(store, *(f"r{i}@example.org" for i in range(6)))
    relay = FakeRelay(lambda rcpt: classify(554, f"5.7.1 <{rcpt}>: Relay access denied", Stage.RCPT))
    with pytest.raises(Exception, match="4 recipients in a row were refused with the same reply") as stopped:
        await run_engine(store, config, relay, FakeClock(), concurrency=1, pause_after=4)
    assert type(stopped.value).__name__ == "CampaignPaused"
    campaign = store.campaigns.find(store.lists.get("bulletin").id, store.campaigns.get(1).content_hash)
    assert campaign is not None
    assert set(statuses(store, campaign).values()) == {"queued"}  # nobody burnt


async def test_messages_cut_off_after_data_in_a_row_stop_the_campaign(store: Store, config: Config) -> None:
    """A relay that takes every message and then hangs: each recipient is in doubt (it may have a copy), and a
    run that went on would give each a copy now and another on every retry."""
    add(store, *(f"r{i}@example.org" for i in range(8)))
    relay = FakeRelay(lambda rcpt: Reply(DeliveryStatus.DEFERRED, None, "timed out", Stage.DATA, True))
    with pytest.raises(SMTPUnavailable, match="3 messages in a row were cut off after DATA") as stopped:
        await run_engine(store, config, relay, FakeClock(), concurrency=1, pause_after=3)
    assert type(stopped.value).__name__ == "RelayTakesNoAnswer"
    assert len(relay.sent) == 3
    assert sorted(statuses(store, store.campaigns.get(1)).values()) == ["deferred"] * 3 + ["queued"] * 5


async def test_a_relay_that_stays_down_past_its_grace_stops_the_campaign(store: Store, config: Config) -> None:
    add(store, "a@example.org", "b@example.org")
    relay = FakeRelay()
    relay.down = True
    with pytest.raises(RelayUnreachable, match=r"still after 0s|connection refused"):
        await run_engine(store, config, relay, FakeClock(), relay_grace=0)
    assert relay.sent == []


async def test_the_rate_limit_gives_each_message_its_slot(store: Store, config: Config) -> None:
    add(store, *(f"r{i}@example.org" for i in range(5)))
    wakes: list[float] = []

    async def sleep(seconds: float, stop: asyncio.Event | None) -> bool:
        wakes.append(seconds)
        return False

    campaign, template = open_campaign(store, prepare_issue(store, config, SAMPLE_ISSUE, "bulletin"), config.secret)
    relay = FakeRelay()
    limiter = RateLimiter(10, clock=lambda: 0.0, sleep=sleep)
    await Engine(
        CampaignLog(store, campaign.id),
        template,
        campaign,
        [SMTPSettings()],
        SendOptions(concurrency=2, rate=10),
        clock=FakeClock(),
        limiter=limiter,
        lease=Lease(store.leases.acquire(campaign.id)),
        transport=relay.transport,
    ).run()
    assert len(relay.sent) == 5
    assert wakes == pytest.approx([0.1, 0.2, 0.3, 0.4])  # the first at once, then one every 1/rate seconds


def take_over(store: Store, email: str, new_owner: str | None) -> None:
    """What a second sender does while this one waits on a relay: it takes the lease (unless `new_owner` is None),
    puts the row in `sending` back in the queue and sends it (attempt + 1), all from its own connection."""
    with closing(sqlite3.connect(store.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        if new_owner is not None:
            other.execute("UPDATE campaigns SET lease_owner = ?", (new_owner,))
        other.execute(
            "UPDATE deliveries SET status = 'sent', attempts = attempts + 1, smtp_code = 250, smtp_reply = 'by B' "
            "WHERE email = ?",
            (email,),
        )
        other.execute(
            "INSERT INTO delivery_events (delivery_id, status, attempt, smtp_code, at) SELECT id, 'sent', attempts, "
            "250, '2026-12-01T09:00:00.000Z' FROM deliveries WHERE email = ?",
            (email,),
        )
        other.execute("COMMIT")


@pytest.mark.parametrize("new_owner", ["relay-b.example:4242:77", None])
async def test_an_outcome_learnt_after_another_sender_took_the_row_over_is_not_written_and_the_run_stops(
    store: Store, config: Config, new_owner: str | None
) -> None:
    emails = [f"r{i}@example.org" for i in range(6)]
    add(store, *emails)

    def answer(rcpt: str) -> Reply:
        if rcpt == emails[2]:  # this sender times out after DATA while B sends the same recipient
            take_over(store, rcpt, new_owner)
            return classify(451, "4.4.2 timed out after DATA (delivery in doubt)", Stage.DATA)
        return classify(250, "2.0.0 Ok", Stage.END_OF_DATA)

    relay = FakeRelay(answer)
    with pytest.raises(LeaseLost, match=r"no longer holds campaign 1|taken over by another run"):
        await run_engine(store, config, relay, FakeClock(), concurrency=1)
    [taken] = [row for row in store.deliveries.log(1) if row.email == emails[2]]
    assert (taken.status, taken.attempts, taken.smtp_reply) == ("sent", 2, "by B")  # B's outcome stands
    history = [
        e["status"] for e in store.db.query("SELECT status FROM delivery_events WHERE delivery_id = ?", [taken.id])
    ]
    assert history == ["sending", "sent"]  # nothing of this sender's after B's
    assert relay.sent == emails[:3]  # and it stopped before its next message


async def test_refusals_that_differ_only_by_a_per_message_id_still_pause_the_campaign(
    store: Store, config: Config
) -> None:
    add(store, *(f"r{i}@example.org" for i in range(8)))
    ids = iter(range(10**6, 10**7, 7919))
    relay = FakeRelay(
        lambda rcpt: classify(
            550, f"5.7.1 Unusual rate of unsolicited mail. {next(ids):x}ab12cd.{next(ids) % 97} - gsmtp", Stage.RCPT
        )
    )
    with pytest.raises(CampaignPaused, match="4 recipients in a row"):
        await run_engine(store, config, relay, FakeClock(), concurrency=1, pause_after=4)
    assert set(statuses(store, store.campaigns.get(1)).values()) == {"queued"}


def dead_mailboxes(dead: set[str]) -> Callable[[str], Reply]:
    def answer(rcpt: str) -> Reply:
        if rcpt in dead:
            return classify(550, f"5.1.1 <{rcpt}>: Recipient address rejected: User unknown", Stage.RCPT)
        return classify(250, "2.0.0 Ok", Stage.END_OF_DATA)

    return answer


async def test_a_real_run_of_dead_mailboxes_longer_than_the_pause_limit_pauses_once_then_finishes(
    store: Store, config: Config
) -> None:
    emails = [f"r{i:02d}@example.org" for i in range(30)]
    dead = set(emails[5:17])  # twelve gone mailboxes in a row, the limit is ten
    add(store, *emails)
    relay = FakeRelay(dead_mailboxes(dead))
    with pytest.raises(CampaignPaused):
        await run_engine(store, config, relay, FakeClock(), concurrency=1, pause_after=10)
    assert len(store.suppressions.all()) == 0  # what the paused run suppressed is taken back

    await run_engine(store, config, relay, FakeClock(), concurrency=1, pause_after=10)  # the resume finishes

    final = statuses(store, store.campaigns.get(1))
    assert {e for e, s in final.items() if s == "failed"} == dead
    assert {e for e, s in final.items() if s == "sent"} == set(emails) - dead
    assert len(store.suppressions.all()) == 12  # and now they are suppressed, as gone mailboxes are


async def test_a_relay_that_says_no_such_mailbox_to_everyone_never_suppresses_the_list(
    store: Store, config: Config
) -> None:
    emails = [f"r{i:02d}@example.org" for i in range(30)]
    add(store, *emails)
    relay = FakeRelay(dead_mailboxes(set(emails)))
    for _ in range(3):  # the operator resumes, again and again
        with pytest.raises(CampaignPaused):
            await run_engine(store, config, relay, FakeClock(), concurrency=1, pause_after=10)
    assert len(store.suppressions.all()) == 0
    assert set(statuses(store, store.campaigns.get(1)).values()) == {"queued"}


# ---- an operator's pause and cancel (the campaign's state) --------------------------------------------------------


class Notes:
    """A progress sink that remembers the engine's notes and calls `on_note` with each."""

    def __init__(self, on_note: Callable[[str], None] = lambda text: None) -> None:
        self.notes: list[str] = []
        self.on_note = on_note

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, status: DeliveryStatus, email: str) -> None:
        pass

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.on_note(text)


async def engine_with(
    store: Store, config: Config, relay: FakeRelay, progress: Notes, stop: asyncio.Event | None = None
) -> tuple[Campaign, Engine]:
    campaign, template = open_campaign(store, prepare_issue(store, config, SAMPLE_ISSUE, "bulletin"), config.secret)
    store.campaigns.start(campaign.id)
    # The sender holds the lease as another live process (this one's parent) would, as the console sees a sender.
    owner = lease_owner(os.getppid())
    store.conn.execute("UPDATE campaigns SET lease_owner = ? WHERE id = ?", (owner, campaign.id))
    engine = Engine(
        CampaignLog(store, campaign.id),
        template,
        campaign,
        [SMTPSettings()],
        SendOptions(concurrency=1, state_poll=0.01),
        progress,
        stop,
        clock=FakeClock(),
        lease=Lease(owner),
        transport=relay.transport,
    )
    return campaign, engine


async def test_a_pause_stops_the_next_message_and_a_resume_goes_on_where_it_stopped(
    store: Store, config: Config
) -> None:
    add(store, *(f"r{i}@example.org" for i in range(8)))
    sent_at_resume: list[int] = []

    def answer(rcpt: str) -> Reply:
        if rcpt == "r2@example.org":  # an operator pauses while the third message is on the wire
            store.campaigns.pause(1)
        return classify(250, "2.0.0 Ok", Stage.END_OF_DATA)

    def on_note(text: str) -> None:
        if "paused: waiting" in text:
            sent_at_resume.append(len(relay.sent))
            store.campaigns.resume(1)

    relay = FakeRelay(answer)
    progress = Notes(on_note)
    campaign, engine = await engine_with(store, config, relay, progress)
    await engine.run()

    assert sent_at_resume == [3]  # the message in flight ended; none left while paused
    assert sorted(relay.sent) == sorted(f"r{i}@example.org" for i in range(8))  # each once, the rest after resuming
    assert set(statuses(store, campaign).values()) == {"sent"}
    assert progress.notes[-1] == "campaign 1 resumed"


async def test_a_paused_run_stopped_by_ctrl_c_leaves_the_rest_queued_and_the_campaign_paused(
    store: Store, config: Config
) -> None:
    add(store, *(f"r{i}@example.org" for i in range(4)))
    stop = asyncio.Event()

    def answer(rcpt: str) -> Reply:
        store.campaigns.pause(1)
        return classify(250, "2.0.0 Ok", Stage.END_OF_DATA)

    relay = FakeRelay(answer)
    campaign, engine = await engine_with(store, config, relay, Notes(lambda text: stop.set()), stop)
    await engine.run()

    assert relay.sent == ["r0@example.org"]
    assert sorted(statuses(store, campaign).values()) == ["queued", "queued", "queued", "sent"]
    assert store.campaigns.state(campaign.id) == "paused"


async def test_a_cancel_under_the_sender_stops_it_before_its_next_message(store: Store, config: Config) -> None:
    add(store, *(f"r{i}@example.org" for i in range(5)))

    def answer(rcpt: str) -> Reply:
        if rcpt == "r1@example.org":
            assert store.campaigns.cancel(1, under_sender=True) is None  # as the console: the sender holds it
        return classify(250, "2.0.0 Ok", Stage.END_OF_DATA)

    relay = FakeRelay(answer)
    campaign, engine = await engine_with(store, config, relay, Notes())
    await engine.run()
    assert relay.sent == ["r0@example.org", "r1@example.org"]

    assert store.campaigns.skip_rest(campaign.id) == 3  # what the sender does on its way out (send.py)
    assert sorted(statuses(store, campaign).values()) == ["sent", "sent", "skipped", "skipped", "skipped"]
    assert store.campaigns.state(campaign.id) == "cancelled"


async def test_a_message_accepted_late_does_not_end_a_run_of_refusals_that_began_after_it_left(
    store: Store, config: Config
) -> None:
    """Four sessions; the relay begins refusing everyone at r06 while r05 is still in flight. r05's 250 arrives
    after the first refusals: it must not reset the run (before, those first refusals stood and were suppressed)."""
    emails = [f"r{i:02d}@example.org" for i in range(40)]
    add(store, *emails)
    refused: list[str] = []
    late = asyncio.Event()

    def answer(rcpt: str) -> Reply:
        if rcpt <= emails[5]:
            return classify(250, "2.0.0 Ok", Stage.END_OF_DATA)
        refused.append(rcpt)
        if len(refused) == 3:
            late.set()  # r05's reply comes now, in the middle of the refusals
        return classify(550, f"5.1.1 <{rcpt}>: Recipient address rejected: User unknown", Stage.RCPT)

    relay = FakeRelay(answer)
    relay.hold[emails[5]] = late
    with pytest.raises(CampaignPaused):
        await run_engine(store, config, relay, FakeClock(), concurrency=4, pause_after=10)
    final = statuses(store, store.campaigns.get(1))
    assert "failed" not in final.values()  # every refusal went back to the queue with the pause
    assert store.suppressions.all() == []
    assert final[emails[5]] == "sent"
