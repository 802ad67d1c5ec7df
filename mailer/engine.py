"""The delivery engine: one campaign's queued recipients over `concurrency` reused SMTP sessions, at most `rate`
messages a second, each committed `sending` before its message leaves and its outcome recorded after; deferrals
waited for up to `max_wait`, a relay that went away waited for up to `relay_grace`.

It is given what it works on, as listmonk's manager is given a data source and a messenger: a DeliveryLog (the
campaign's rows; delivery_log.CampaignLog over the store in production) and a Transport (a factory of SMTP
sessions; smtp.Session in production), and the clocks it reads. Must not print, exit, install signal handlers or
choose processes (workers.py and the CLI do); raises MailerError for a campaign that cannot go on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from mailer.clock import parse_stamp, stamp, utcnow
from mailer.config import Config
from mailer.delivery_log import DeliveryLog
from mailer.errors import MailerError
from mailer.message import BuiltMessage, MessageTemplate
from mailer.models import Campaign, CampaignState, DeliveryStatus, Recipient
from mailer.pacing import Hold, RateLimiter, RelayGrace, wait_until
from mailer.policy import RefusalRun, RetryPolicy, in_doubt, mailbox_unknown
from mailer.smtp import RelayUnreachable, Reply, Session, SessionRefused, SMTPSettings, Stage
from mailer.store import Outcome, Partition, StoreBusy, StoreWriteError
from mailer.store.leases import LeaseLost, taken_over

SESSION_MESSAGE_CAP = 100  # messages per SMTP session before a fresh one, as Postfix's smtp_connection_reuse_count
LEASE_SECONDS = 60.0
STATE_POLL = 0.5  # seconds between two reads of the campaign's state (an operator's pause acts within a second)


@dataclass
class SendOptions:
    dry_run: bool = False
    test_email: str | None = None
    concurrency: int = 4
    rate: float | None = None  # messages per second across all sessions
    session_cap: int = SESSION_MESSAGE_CAP
    max_wait: float = 0.0  # how long a run waits for deferred recipients' retry times (the CLI: 300 s)
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy())
    workers: int = 1  # processes; each takes the deliveries whose id % workers == k, with its share of sessions
    relay_grace: float = 60.0  # seconds a relay that worked may stay unreachable before the campaign stops
    pause_after: int = 10  # identical permanent refusals in a row that pause the campaign (0: never)
    lease_seconds: float = LEASE_SECONDS
    stop_grace: float = 30.0  # seconds workers have to finish their messages in flight after a stop, then SIGKILL
    state_poll: float = STATE_POLL

    @classmethod
    def for_config(cls, config: Config, **values: Any) -> SendOptions:
        """Options with the configured retry policy, relay grace, pause threshold, lease and stop grace."""
        return cls(
            retry=RetryPolicy.from_config(config),
            relay_grace=config.relay_grace,
            pause_after=config.pause_after,
            lease_seconds=config.lease_seconds,
            stop_grace=config.stop_grace,
            **values,
        )


class ProgressSink(Protocol):
    def start(self, total: int, done: int) -> None: ...

    def advance(self, status: DeliveryStatus, email: str) -> None: ...

    def note(self, text: str) -> None:
        """Why nothing moves for a while (waiting for retry times, for a relay to come back)."""


class NoProgress:
    def start(self, total: int, done: int) -> None:
        return None

    def advance(self, status: DeliveryStatus, email: str) -> None:
        return None

    def note(self, text: str) -> None:
        return None


class SMTPSession(Protocol):
    """One reusable SMTP session, as smtp.Session is."""

    sent_on_session: int

    @property
    def connected(self) -> bool: ...

    async def open(self) -> None: ...

    async def send(self, message: BuiltMessage) -> Reply: ...

    async def close(self) -> None: ...


Transport = Callable[[SMTPSettings], SMTPSession]


@dataclass(frozen=True)
class Lease:
    """What lets an engine send: its campaign's lease held by `owner` and, in a worker process, its parent (the
    holder) alive. Checked in the transaction that marks each message `sending`, so a sender that lost either
    stops before its next message."""

    owner: str
    parent_pid: int | None = None  # a worker's parent; a worker whose parent is gone must not send

    def orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid


Unrecorded = list[tuple[Outcome, str | None]]  # outcomes a session knows but has not committed, with retry times


class Engine:
    """Runs one campaign's queued deliveries over `concurrency` reused SMTP sessions spread over the relays."""

    def __init__(
        self,
        log: DeliveryLog,
        template: MessageTemplate,
        campaign: Campaign,
        relays: Sequence[SMTPSettings],
        options: SendOptions,
        progress: ProgressSink | None = None,
        stop: asyncio.Event | None = None,
        clock: Callable[[], datetime] = utcnow,
        part: Partition = (0, 1),
        *,
        lease: Lease,
        limiter: RateLimiter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        transport: Transport = Session,
    ) -> None:
        self.part = part
        self.log = log
        self.template = template
        self.campaign = campaign
        self.relays = list(relays)
        self.options = options
        self.progress = progress or NoProgress()
        self.stop = stop or asyncio.Event()
        self.clock = clock
        self.monotonic = monotonic
        self.limiter = limiter or RateLimiter(options.rate)
        self.lease = lease
        self.transport = transport
        self.fatal: MailerError | None = None
        self.refusals = RefusalRun(options.pause_after)
        self.marks = 0  # messages marked `sending` by this run: the order in which they left
        self.relay_grace = RelayGrace(options.relay_grace, monotonic, self.progress.note)
        self.hold = Hold(log, self.stop, options.state_poll)
        self.interrupt = self.hold.interrupt  # ends every wait of the run (rate slot, retry time, relay backoff)

    async def run(self) -> None:
        """Deliver the queue, then wait (up to max_wait) for deferred recipients' retry times and go again. While
        the campaign is paused, wait for it to be resumed and go on where it stopped; a cancelled one ends."""
        watcher = asyncio.create_task(self.hold.watch())
        try:
            while True:
                await self._deliver_all()
                if self.hold.state is not CampaignState.PAUSED or self.stop.is_set() or self.fatal:
                    return
                self.progress.note(
                    f"campaign {self.campaign.id} paused: waiting for 'mailer campaigns resume "
                    f"{self.campaign.id}' (Ctrl-C leaves it paused)"
                )
                if not await self.hold.resumed():
                    return
                self.progress.note(f"campaign {self.campaign.id} resumed")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _halted(self) -> bool:
        return self.stop.is_set() or self.fatal is not None or self.hold.state is not None

    async def _deliver_all(self) -> None:
        await self._drain_queue()
        deadline = self.monotonic() + self.options.max_wait
        while not self._halted():
            earliest = self.log.next_retry(self.part)
            if earliest is None:
                return
            wait = (parse_stamp(earliest) - self.clock()).total_seconds()
            if self.monotonic() + max(wait, 0) > deadline:
                return  # left deferred, with next_attempt set, for `mailer retry`
            if wait > 0:
                self.progress.note(
                    f"waiting {wait:.0f}s for the retry time of {self.log.deferred()} deferred "
                    f"recipient(s) (--max-wait); Ctrl-C stops, and 'mailer retry {self.campaign.id}' "
                    "sends them later"
                )
                # Rows of this part queued meanwhile (the console's "Retry deferred now" or "Requeue failed", while
                # this run holds the campaign and `mailer retry` cannot) end the wait: they are sent now.
                queued = lambda: next(self.log.queued(self.part), None) is not None  # noqa: E731
                if await wait_until(wait, self.interrupt, self.options.state_poll, queued):
                    return
            self.log.requeue_due(stamp(self.clock()), self.part)
            await self._drain_queue()

    async def _drain_queue(self) -> None:
        # The sessions share one iterator, each taking the next recipient when it is free: reading it never awaits
        # (SQLite hands out CHUNK rows at a time), so no producer task and queue hand-over per recipient is needed.
        recipients = self.log.queued(self.part)
        # A TaskGroup: should one session fail unexpectedly, the others are cancelled rather than left sending.
        try:
            async with asyncio.TaskGroup() as sessions:
                for i in range(max(1, self.options.concurrency)):
                    sessions.create_task(self._session(recipients, self.relays[i % len(self.relays)]))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from failed  # as the session raised it (the CLI maps MailerError to a line)
        if self.refusals.paused is not None:
            with self.log.transaction():  # as every write of a sender: only while it holds the campaign
                if self._lease_problem() is None:
                    self.log.requeue_refused(self.refusals.requeue, len(self.refusals.delivery_ids))
        if self.fatal:
            raise self.fatal

    async def _session(self, recipients: Iterator[Recipient], relay: SMTPSettings) -> None:
        session = self.transport(relay)
        unrecorded: Unrecorded = []
        try:
            # Stopping: what was not started stays queued for the next run.
            while not self._halted() and (recipient := next(recipients, None)) is not None:
                await self._deliver(session, recipient, unrecorded)
        finally:
            if unrecorded:
                self._commit(unrecorded)
            await session.close()

    def _commit(self, unrecorded: Unrecorded, sending: tuple[int, str] | None = None) -> int | None:
        """One transaction: the outcomes this session has learnt since its last commit and, when it is about to
        send, the next recipient marked `sending`. That saves a commit per message (~35 µs) without widening the
        crash bound: `sending` is still committed before the message leaves, and a session never has more than one
        row in `sending` (the previous message's outcome is in the same commit).

        Each outcome is written only onto the attempt this run made (Deliveries.record), so a run that took the
        recipient over keeps its word; what this run learnt of a row nobody touched since is still true and is kept
        (a takeover's requeue then leaves it alone rather than sending it again). Every commit checks, in the same
        transaction, that this sender holds the campaign's lease (and, in a worker, that its parent lives): one
        that lost it, or a row, stopped past its lease or orphaned, marks nothing and never sends again. Returns
        the attempt number when the message may leave."""
        attempt: int | None = None
        try:
            with self.log.transaction():
                problem = self._lease_problem()
                if problem:
                    self.fatal = self.fatal or problem
                for outcome, next_attempt in unrecorded:
                    if not self.log.record(outcome, next_attempt):
                        self.fatal = self.fatal or taken_over(self.campaign.id, outcome.delivery_id)
                # Paused or cancelled (self.hold.state): the next recipient stays queued.
                if sending is not None and not self.fatal and self.hold.state is None:
                    attempt = self.log.mark_sending(*sending)  # None: recorded or cancelled since it was read
                    self.marks += attempt is not None
        except (StoreWriteError, StoreBusy) as exc:
            # Rolled back: the outcomes stay unknown to the database (their rows in `sending`, in doubt, sent
            # again on resume) and the next message is not marked, so it does not leave.
            self.fatal = self.fatal or exc
            attempt = None
        unrecorded.clear()
        return attempt

    def _lease_problem(self) -> MailerError | None:
        if self.lease.orphaned():
            return LeaseLost(f"the parent process {self.lease.parent_pid} of this worker is gone")
        holder, state = self.log.standing()
        if holder != self.lease.owner:
            return self.log.lost()
        self.hold.note(state)
        return None

    async def _deliver(self, session: SMTPSession, recipient: Recipient, unrecorded: Unrecorded) -> None:
        if not self.campaign.is_test and not self.log.is_mailable(recipient.subscriber_id):
            unrecorded.append(
                (Outcome(recipient.delivery_id, DeliveryStatus.SKIPPED, None, "unsubscribed or suppressed"), None)
            )
            self.progress.advance(DeliveryStatus.SKIPPED, recipient.email)
            return
        try:
            message = self.template.build(recipient, self.clock())
        except MailerError as exc:
            unrecorded.append((Outcome(recipient.delivery_id, DeliveryStatus.FAILED, None, str(exc)), None))
            self.progress.advance(DeliveryStatus.FAILED, recipient.email)
            return
        if self.limiter.interval:
            if unrecorded:
                self._commit(unrecorded)  # the rate limit may make us wait: record what is known first
            if not await self.limiter.acquire(self.interrupt):
                return  # stopped while waiting for the rate limit: still queued
        while not self.fatal:
            if session.sent_on_session >= self.options.session_cap:
                await session.close()
            if not session.connected:
                if unrecorded:
                    self._commit(unrecorded)  # opening may wait for the relay: record what is known first
                if not await self._connect(session):
                    return  # still queued
            attempt = self._commit(unrecorded, (recipient.delivery_id, message.message_id))
            if attempt is None:
                return
            order = self.marks
            try:
                reply = await session.send(message)
            except RelayUnreachable as exc:
                # The session had closed and the relay did not take us back: nothing left. Back in the queue,
                # then wait for the relay in _connect.
                unrecorded.append(
                    (Outcome(recipient.delivery_id, DeliveryStatus.QUEUED, None, str(exc), attempt=attempt), None)
                )
                continue
            except SessionRefused as exc:
                if exc.in_doubt:  # the relay may have the message: deferred, retried with the same Message-ID
                    doubt = Reply(DeliveryStatus.DEFERRED, None, f"{exc} (delivery in doubt)", Stage.DATA, True)
                    unrecorded.append(self._outcome(recipient, message, doubt, attempt, order))
                else:
                    unrecorded.append(
                        (Outcome(recipient.delivery_id, DeliveryStatus.QUEUED, None, str(exc), attempt=attempt), None)
                    )
                self.fatal = self.fatal or exc
                return
            except MailerError as exc:
                # The settings cannot work (a refused login, a certificate): put this one back in the queue and
                # stop the campaign, marking nobody failed.
                unrecorded.append(
                    (Outcome(recipient.delivery_id, DeliveryStatus.QUEUED, None, str(exc), attempt=attempt), None)
                )
                self.fatal = self.fatal or exc
                return
            self.relay_grace.since = None
            unrecorded.append(self._outcome(recipient, message, reply, attempt, order))
            return

    async def _connect(self, session: SMTPSession) -> bool:
        """Open the session, waiting out a relay that restarts (RelayGrace); False when it stopped (or was
        stopped)."""
        problem = await self.relay_grace.open(session, self._halted, self.interrupt)
        self.fatal = self.fatal or problem
        return problem is None and session.connected

    def _outcome(
        self, recipient: Recipient, message: BuiltMessage, reply: Reply, attempt: int, order: int | None = None
    ) -> tuple[Outcome, str | None]:
        """What to record for one SMTP reply, and the retry time of a deferral."""
        status, text, next_attempt = reply.status, reply.text, None
        if status == DeliveryStatus.FAILED and reply.stage not in ("end-of-data",):
            text = f"{reply.stage}: {reply.text}"
        if status == DeliveryStatus.DEFERRED:
            attempts, first = self.log.attempt_info(recipient.delivery_id)
            doubts = self.log.in_doubt_attempts(recipient.delivery_id) if in_doubt(reply) else 0
            status, text, retry_at = self.options.retry.settle(
                reply, attempts, parse_stamp(first) if first else None, self.clock(), doubts
            )
            next_attempt = stamp(retry_at) if retry_at else None
        again = status == DeliveryStatus.FAILED and self.log.requeued_by_pause(recipient.delivery_id)
        paused = self.refusals.add(recipient.delivery_id, reply, again, order)
        if paused is not None:
            self.fatal = paused
        self.progress.advance(status, recipient.email)
        suppress = status == DeliveryStatus.FAILED and mailbox_unknown(reply)
        outcome = Outcome(recipient.delivery_id, status, reply.code, text, message.message_id, suppress, attempt)
        return outcome, next_attempt
