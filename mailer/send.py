"""The delivery engine: campaign snapshot, SMTP workers, rate limit, per-recipient status, resume.

Service functions only: they take a Store and settings, report progress through a callback and return a
SendSummary or raise MailerError. They never print or exit; cli.py owns the event loop and signals."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import os
import random
import re
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mailer.clock import parse_stamp, stamp, utcnow
from mailer.config import Config
from mailer.errors import MailerError, SMTPUnavailable, TemplateError, UsageError
from mailer.exit_codes import ExitCode
from mailer.message import BuiltMessage, MessageSigner, MessageTemplate, Sender, parse_from
from mailer.models import Campaign, DeliveryStatus, MailingList, Recipient, SendSummary, Subscriber, SubscriberStatus
from mailer.render import NO_LIST_TITLE, InlineImage, ListContext, RenderedIssue, render_issue
from mailer.smtp import RelayUnreachable, Reply, Session, SessionRefused, SMTPSettings, Stage, probe
from mailer.store import Outcome, Partition, Store, StoreWriteError
from mailer.store.leases import LeaseLost

T = TypeVar("T")
GMAIL_CLIP_BYTES = 102 * 1024  # Gmail shows "[Message clipped]" past ~102 KB of HTML
SESSION_MESSAGE_CAP = 100  # messages per SMTP session before a fresh one, as Postfix's smtp_connection_reuse_count
LEASE_SECONDS = 60.0
RELAY_BACKOFF_MAX = 5.0  # seconds between two tries of an unreachable relay, at most
FALLBACK_NAMES = {"zh": "读者", "en": "reader"}


class ProgressSink(Protocol):
    def start(self, total: int, done: int) -> None: ...

    def advance(self, status: DeliveryStatus, email: str) -> None: ...

    def note(self, text: str) -> None:
        """Why nothing moves for a while (waiting for retry times, for a relay to come back)."""


class _NoProgress:
    def start(self, total: int, done: int) -> None:
        return None

    def advance(self, status: DeliveryStatus, email: str) -> None:
        return None

    def note(self, text: str) -> None:
        return None


class CampaignPaused(SMTPUnavailable):
    """Recipient after recipient refused with the same reply: the relay refusing the campaign, not them."""


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

    @classmethod
    def for_config(cls, config: Config, **values: Any) -> SendOptions:
        """Options with the configured retry policy, relay grace, pause threshold and lease."""
        return cls(retry=RetryPolicy.from_config(config), relay_grace=config.relay_grace,
                   pause_after=config.pause_after, lease_seconds=config.lease_seconds, **values)


@dataclass
class PreparedIssue:
    """An issue rendered for one list, with its message skeleton's inputs."""

    mailing_list: MailingList
    issue: RenderedIssue
    sender: Sender
    issue_path: Path
    warnings: list[str] = field(default_factory=list)


async def pause(seconds: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep `seconds`, less if `stop` is set meanwhile (Ctrl-C acts at once); True when stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


class RateLimiter:
    """At most `rate` acquisitions per second, spread evenly (a token bucket of depth one)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float, asyncio.Event | None], Awaitable[bool]] = pause) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self.sleep = sleep
        self.next_slot = 0.0
        self.lock = asyncio.Lock()

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for the next slot; False when `stop` was set meanwhile: at --rate 0.2 four sessions hold slots
        up to 20 s ahead, and a Ctrl-C must not wait for them."""
        if not self.interval:
            return True
        async with self.lock:
            now = self.clock()
            slot = max(self.next_slot, now)
            self.next_slot = slot + self.interval
        if slot > now:
            return not await self.sleep(slot - now, stop)
        return not (stop is not None and stop.is_set())


def smtp_settings(config: Config, host: str | None = None, port: int | None = None) -> list[SMTPSettings]:
    """One SMTPSettings per relay: MAILER_SMTP_HOST (or --smtp-host) may list several as `host[:port],...`."""
    relays = []
    for item in filter(None, (part.strip() for part in (host or config.smtp_host).split(","))):
        # host:port; an IPv6 literal (more than one colon) takes the default port
        name, relay_port = item.split(":") if item.count(":") == 1 else (item, "")
        if relay_port and not relay_port.isdigit():
            raise UsageError(f"SMTP relay {item!r}: the port must be a number")
        relays.append(SMTPSettings(
            host=name,
            port=port or (int(relay_port) if relay_port else config.smtp_port),
            tls=config.smtp_tls,
            user=config.smtp_user,
            password=config.smtp_password,
            timeout=config.smtp_timeout,
            ca_file=config.smtp_ca,
        ))
    if not relays:
        raise UsageError("no SMTP host configured")
    for relay in relays:
        if not 0 < relay.port < 65536:
            raise UsageError(f"SMTP port {relay.port} of {relay.host} is not a TCP port (1 to 65535)")
    return relays


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for 4xx replies, and when to give up (Postfix-like defaults)."""

    base: float = 60.0
    maximum: float = 4 * 3600.0
    expiry: float = 3 * 86400.0
    jitter: float = 0.2

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        return cls(config.retry_base, config.retry_max, config.retry_expiry)

    def delay(self, attempt: int) -> float:
        raw = min(self.base * 2 ** max(0, attempt - 1), self.maximum)
        return raw * random.uniform(1 - self.jitter, 1 + self.jitter)


def sender_for(mailing_list: MailingList, issue: RenderedIssue, base_url: str) -> Sender:
    from_value = issue.from_addr or mailing_list.from_addr
    if not from_value:
        raise UsageError(f"list {mailing_list.name!r} has no From address; set it with: "
                         f"mailer lists create {mailing_list.name} --from \"Name <addr>\" (or 'from:' in the issue)")
    name, addr = parse_from(from_value)
    return Sender(
        from_name=name,
        from_addr=addr,
        reply_to=mailing_list.reply_to,
        list_name=mailing_list.name,
        list_title=mailing_list.title or mailing_list.name,
        base_url=base_url,
    )


def prepare_issue(store: Store, config: Config, issue_path: Path, list_name: str) -> PreparedIssue:
    """Read and render the issue for the list: every template error surfaces here, before any SMTP."""
    mailing_list = store.lists.get(list_name)
    source = read_issue_file(issue_path)
    ctx = ListContext(name=mailing_list.name, title=mailing_list.title, lang=mailing_list.lang)
    issue = render_issue(source, origin=str(issue_path), list_ctx=ctx, read_file=issue_file_reader(issue_path),
                         templates_dir=config.templates, theme=config.theme_for(mailing_list.name))
    warnings = [*issue.warnings, *check_attributes(store, mailing_list, issue, issue_path)]
    from mailer.preview import image_source_warnings  # preview imports this module: imported when used

    warnings += image_source_warnings(issue.html)  # a relative path goes out broken (preview's own check)
    sender = sender_for(mailing_list, issue, config.base_url)
    size = len(issue.html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        warnings.append(f"the HTML part is {size / 1024:.0f} KB: Gmail clips messages over 102 KB, hiding the rest "
                        "and the unsubscribe link (see: mailer preview)")
    if config.dkim_domain:
        from mailer.dkim import alignment

        if alignment(sender.mail_domain, config.dkim_domain) is None:
            warnings.append(f"From domain {sender.mail_domain} is not aligned with DKIM d={config.dkim_domain}: "
                            "DMARC fails and Gmail or Yahoo may reject or spam-folder the issue (see: mailer doctor)")
    return PreparedIssue(mailing_list, issue, sender, issue_path, warnings)


def check_attributes(store: Store, mailing_list: MailingList, issue: RenderedIssue, issue_path: Path) -> list[str]:
    """`{{ subscriber.cty }}` renders (attributes are per person, any name goes), but if no active subscriber of
    the list has it, it is a misspelling: stop before the first message rather than mail everyone a blank."""
    if not issue.attr_keys:
        return []
    have = store.subscribers.attribute_counts(mailing_list.id, issue.attr_keys)
    active = store.subscribers.count_recipients(mailing_list.id)
    if not active:
        return []
    unknown = [key for key in issue.attr_keys if not have.get(key)]
    if unknown:
        known = store.subscribers.attribute_counts(mailing_list.id, None)
        hint = f" (its subscribers have: {', '.join(sorted(known))})" if known else " (its subscribers have none)"
        raise TemplateError(
            f"{issue_path}: {', '.join('{{ subscriber.' + k + ' }}' for k in unknown)} is not an attribute of any "
            f"subscriber of list {mailing_list.name!r}{hint}")
    return [f"{active - have[key]} of {active} subscribers have no '{key}'; it will be blank for them"
            for key in issue.attr_keys if have[key] < active]


def read_issue_file(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MailerError(f"issue file {path} does not exist") from None
    except UnicodeDecodeError:
        raise MailerError(f"issue file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise MailerError(f"cannot read issue file {path}: {exc.strerror}") from None


def issue_file_reader(issue_path: Path) -> Callable[[str], bytes]:
    """Reads files the issue names (its `images: cid` images), relative to its folder and never outside it."""
    folder = Path(issue_path).resolve().parent

    def read(name: str) -> bytes:
        path = (folder / name).resolve()
        if not path.is_relative_to(folder):
            raise TemplateError(f"{issue_path}: {name} is outside the issue's folder {folder}")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise TemplateError(f"{issue_path}: {name} does not exist (looked for {path})") from None
        except OSError as exc:
            raise TemplateError(f"{issue_path}: cannot read {name}: {exc.strerror}") from None

    return read


def issue_to_json(issue: RenderedIssue) -> dict[str, Any]:
    return {
        "slug": issue.slug, "subject": issue.subject, "preheader": issue.preheader, "lang": issue.lang,
        "html": issue.html, "text": issue.text, "meta": issue.meta, "attr_keys": list(issue.attr_keys),
        "content_hash": issue.content_hash, "from_addr": issue.from_addr, "sections": list(issue.sections),
        "images": [{"cid": i.cid, "filename": i.filename, "content_type": i.content_type,
                    "data": base64.b64encode(i.data).decode("ascii")} for i in issue.images],
    }


def issue_from_json(data: dict[str, Any]) -> RenderedIssue:
    images = tuple(InlineImage(**{**i, "data": base64.b64decode(i["data"])}) for i in data.get("images", ()))
    return RenderedIssue(**{**data, "attr_keys": tuple(data["attr_keys"]), "sections": tuple(data["sections"]),
                            "images": images})


def build_template(
    prepared: PreparedIssue, campaign_id: int, salt: str, secret: bytes, *,
    signer: MessageSigner | None = None, test: bool = False,
) -> MessageTemplate:
    if not secret:
        raise MailerError("no signing secret: run 'mailer init' (or set MAILER_SECRET)")
    return MessageTemplate(
        prepared.issue, prepared.sender, secret=secret, campaign_id=campaign_id,
        list_id=prepared.mailing_list.id, salt=salt,
        fallback_name=FALLBACK_NAMES.get(prepared.issue.lang, ""), signer=signer, test=test,
    )


def dkim_signer(config: Config) -> MessageSigner | None:
    """The DKIM signer of MAILER_DKIM_* (key read and parsed once), or None when DKIM is not configured."""
    if not (config.dkim_key or config.dkim_selector or config.dkim_domain):
        return None
    from mailer.dkim import load_signer  # cryptography is imported only when DKIM is configured

    return load_signer(config)


def sample_subscriber(store: Store, list_id: int) -> Subscriber:
    for sub in store.subscribers.of_list(list_id, SubscriberStatus.ACTIVE):
        return sub
    return Subscriber(email="reader@example.org", name="")


def count_recipients(store: Store, list_id: int) -> int:
    return store.subscribers.count_recipients(list_id)


def open_campaign(
    store: Store, prepared: PreparedIssue, options: SendOptions, secret: bytes, signer: MessageSigner | None = None,
) -> tuple[Campaign, MessageTemplate]:
    """Find the campaign of this issue and list (resume) or create it with its recipient snapshot."""
    issue = prepared.issue
    if options.test_email:
        sample = sample_subscriber(store, prepared.mailing_list.id)
        recipient = Subscriber(id=0, email=options.test_email, name=sample.name, attrs=sample.attrs)
        campaign = store.campaigns.create(
            prepared.mailing_list.id, issue.slug, issue.subject, str(prepared.issue_path), issue.content_hash,
            issue_to_json(issue), secrets.token_hex(8), is_test=True, test_recipient=recipient,
        )
        _, salt = store.campaigns.rendered(campaign.id)
        return campaign, build_template(prepared, campaign.id, salt, secret, signer=signer, test=True)
    # An existing campaign is found without the write lock, which a stopped sender may hold (acquire_lease names it).
    campaign = store.campaigns.find(prepared.mailing_list.id, issue.content_hash) or store.campaigns.create(
        prepared.mailing_list.id, issue.slug, issue.subject, str(prepared.issue_path), issue.content_hash,
        issue_to_json(issue), secrets.token_hex(8),
    )
    _, salt = store.campaigns.rendered(campaign.id)
    return campaign, build_template(prepared, campaign.id, salt, secret, signer=signer)


@dataclass(frozen=True)
class Lease:
    """What lets an engine send: its campaign's lease held by `owner` and, in a worker process, its parent (the
    holder) alive. Checked in the transaction that marks each message `sending`, so a sender that lost either
    stops before its next message."""

    owner: str
    parent_pid: int | None = None  # a worker's parent; a worker whose parent is gone must not send

    def orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid


class Engine:
    """Runs one campaign's queued deliveries over `concurrency` reused SMTP sessions spread over the relays."""

    def __init__(
        self, store: Store, template: MessageTemplate, campaign: Campaign, relays: Sequence[SMTPSettings],
        options: SendOptions, progress: ProgressSink | None = None, stop: asyncio.Event | None = None,
        clock: Callable[[], datetime] = utcnow, part: Partition = (0, 1), *, lease: Lease,
        limiter: RateLimiter | None = None, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.part = part
        self.store = store
        self.template = template
        self.campaign = campaign
        self.relays = list(relays)
        self.options = options
        self.progress = progress or _NoProgress()
        self.stop = stop or asyncio.Event()
        self.clock = clock
        self.monotonic = monotonic
        self.limiter = limiter or RateLimiter(options.rate)
        self.lease = lease
        self.fatal: MailerError | None = None
        self.refusals: tuple[tuple[int, str] | None, list[int]] = (None, [])  # the current run of equal refusals
        self.unreachable_since: float | None = None

    async def run(self) -> None:
        """Deliver the queue, then wait (up to max_wait) for deferred recipients' retry times and go again."""
        await self._drain_queue()
        deadline = self.monotonic() + self.options.max_wait
        while not (self.stop.is_set() or self.fatal):
            earliest = self.store.deliveries.next_retry(self.campaign.id, self.part)
            if earliest is None:
                return
            wait = (parse_stamp(earliest) - self.clock()).total_seconds()
            if self.monotonic() + max(wait, 0) > deadline:
                return  # left deferred, with next_attempt set, for `mailer retry`
            if wait > 0:
                deferred = self.store.deliveries.counts(self.campaign.id).get(DeliveryStatus.DEFERRED, 0)
                self.progress.note(f"waiting {wait:.0f}s for the retry time of {deferred} deferred recipient(s) "
                                   f"(--max-wait); Ctrl-C stops, and 'mailer retry {self.campaign.id}' sends them "
                                   "later")
                if await pause(wait, self.stop):
                    return
            self.store.deliveries.requeue_due(self.campaign.id, stamp(self.clock()), self.part)
            await self._drain_queue()

    async def _drain_queue(self) -> None:
        # The sessions share one iterator, each taking the next recipient when it is free: reading it never awaits
        # (SQLite hands out CHUNK rows at a time), so no producer task and queue hand-over per recipient is needed.
        recipients = self.store.deliveries.queued(self.campaign.id, self.part)
        # A TaskGroup: should one session fail unexpectedly, the others are cancelled rather than left sending.
        try:
            async with asyncio.TaskGroup() as sessions:
                for i in range(max(1, self.options.concurrency)):
                    sessions.create_task(self._worker(recipients, self.relays[i % len(self.relays)]))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from failed  # as the session raised it (cli.py maps MailerError to one line)
        if isinstance(self.fatal, CampaignPaused):
            _, delivery_ids = self.refusals
            self.store.deliveries.requeue_refused(
                delivery_ids, f"queued again: campaign paused after {len(delivery_ids)} equal refusals in a row")
        if self.fatal:
            raise self.fatal

    async def _worker(self, recipients: Iterator[Recipient], relay: SMTPSettings) -> None:
        session = Session(relay)
        unrecorded: list[tuple[Outcome, str | None]] = []  # outcomes this session knows but has not committed
        try:
            # Stopping: what was not started stays queued for the next run.
            while not (self.stop.is_set() or self.fatal) and (recipient := next(recipients, None)) is not None:
                await self._deliver(session, recipient, unrecorded)
        finally:
            if unrecorded:
                self._commit(unrecorded)
            await session.close()

    def _commit(self, unrecorded: list[tuple[Outcome, str | None]], sending: tuple[int, str] | None = None) -> bool:
        """One transaction: the outcomes this session has learnt since its last commit and, when it is about to
        send, the next recipient marked `sending`. That saves a commit per message (~35 µs) without widening the
        crash bound: `sending` is still committed before the message leaves, and a session never has more than one
        row in `sending` (the previous message's outcome is in the same commit).

        The mark is made only while this sender holds the campaign's lease (and, in a worker, its parent lives),
        checked in that same transaction: a sender that lost it, stopped past its lease or orphaned, never sends
        again. Returns whether the message may leave."""
        may_send = sending is not None
        try:
            with self.store.transaction():
                for outcome, next_attempt in unrecorded:
                    self.store.deliveries.record(outcome, next_attempt)
                if sending is not None:
                    problem = self._lease_problem()
                    if problem:
                        self.fatal = self.fatal or problem
                        may_send = False
                    elif self.store.deliveries.mark_sending(*sending) is None:
                        may_send = False  # recorded or cancelled since it was read: not ours to send
        except StoreWriteError as exc:
            # Rolled back: the outcomes stay unknown to the database (their rows in `sending`, in doubt, sent
            # again on resume) and the next message is not marked, so it does not leave.
            self.fatal = self.fatal or exc
            may_send = False
        unrecorded.clear()
        return may_send

    def _lease_problem(self) -> MailerError | None:
        if self.lease.orphaned():
            return LeaseLost(f"the parent process {self.lease.parent_pid} of this worker is gone")
        if self.store.leases.holder(self.campaign.id) == self.lease.owner:
            return None
        return self.store.leases.lost(self.campaign.id)

    async def _deliver(
        self, session: Session, recipient: Recipient, unrecorded: list[tuple[Outcome, str | None]]
    ) -> None:
        if not self.campaign.is_test and not self.store.subscribers.is_mailable(recipient.subscriber_id):
            unrecorded.append((Outcome(recipient.delivery_id, DeliveryStatus.SKIPPED, None,
                                       "unsubscribed or suppressed"), None))
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
            if not await self.limiter.acquire(self.stop):
                return  # stopped while waiting for the rate limit: still queued
        while not self.fatal:
            if session.sent_on_session >= self.options.session_cap:
                await session.close()
            if not session.connected:
                if unrecorded:
                    self._commit(unrecorded)  # opening may wait for the relay: record what is known first
                if not await self._connect(session):
                    return  # still queued
            if not self._commit(unrecorded, (recipient.delivery_id, message.message_id)):
                return
            try:
                reply = await session.send(message)
            except RelayUnreachable as exc:
                # The session had closed and the relay did not take us back: nothing left. Back in the queue,
                # then wait for the relay in _connect.
                unrecorded.append((Outcome(recipient.delivery_id, DeliveryStatus.QUEUED, None, str(exc)), None))
                continue
            except SessionRefused as exc:
                if exc.in_doubt:  # the relay may have the message: deferred, retried with the same Message-ID
                    unrecorded.append(self._outcome(recipient, message, Reply(
                        DeliveryStatus.DEFERRED, None, f"{exc} (delivery in doubt)", Stage.DATA, True)))
                else:
                    unrecorded.append((Outcome(recipient.delivery_id, DeliveryStatus.QUEUED, None, str(exc)), None))
                self.fatal = self.fatal or exc
                return
            except MailerError as exc:
                # The settings cannot work (a refused login, a certificate): put this one back in the queue and
                # stop the campaign, marking nobody failed.
                unrecorded.append((Outcome(recipient.delivery_id, DeliveryStatus.QUEUED, None, str(exc)), None))
                self.fatal = self.fatal or exc
                return
            self.unreachable_since = None
            unrecorded.append(self._outcome(recipient, message, reply))
            return

    async def _connect(self, session: Session) -> bool:
        """Open the session. A relay that worked (the probe, earlier messages) and now cannot be reached is
        probably restarting: it is tried again with backoff for `relay_grace` seconds before the campaign stops.
        False when it stopped (or was stopped)."""
        delay = 0.5
        while not (self.fatal or self.stop.is_set()):
            try:
                await session.open()
                return True
            except RelayUnreachable as exc:
                now = self.monotonic()
                if self.unreachable_since is None:
                    self.unreachable_since = now
                    if self.options.relay_grace:
                        self.progress.note(f"{exc}; trying again for up to {self.options.relay_grace:.0f}s "
                                           "(MAILER_RELAY_GRACE)")
                left = self.unreachable_since + self.options.relay_grace - now
                if left <= 0:
                    grace = self.options.relay_grace
                    self.fatal = self.fatal or RelayUnreachable(
                        f"{exc}; still after {grace:.0f}s (MAILER_RELAY_GRACE)" if grace else str(exc))
                    return False
            except MailerError as exc:
                self.fatal = self.fatal or exc
                return False
            if await pause(min(delay, left), self.stop):
                return False
            delay = min(delay * 2, RELAY_BACKOFF_MAX)
        return False

    def _outcome(self, recipient: Recipient, message: BuiltMessage, reply: Reply) -> tuple[Outcome, str | None]:
        """What to record for one SMTP reply, and the retry time of a deferral."""
        status, text, next_attempt = reply.status, reply.text, None
        if status == DeliveryStatus.FAILED and reply.stage not in ("end-of-data",):
            text = f"{reply.stage}: {reply.text}"
        if status == DeliveryStatus.DEFERRED:
            attempts, first = self.store.deliveries.attempt_info(recipient.delivery_id)
            now = self.clock()
            retry = self.options.retry
            if first and (now - parse_stamp(first)).total_seconds() >= retry.expiry:
                status = DeliveryStatus.FAILED
                text = f"expired after {attempts} attempts; last reply: {reply.text}"
            else:
                next_attempt = stamp(now + timedelta(seconds=retry.delay(attempts)))
        self._watch_refusals(recipient.delivery_id, reply)
        self.progress.advance(status, recipient.email)
        suppress = status == DeliveryStatus.FAILED and mailbox_unknown(reply)
        return Outcome(recipient.delivery_id, status, reply.code, text, message.message_id, suppress), next_attempt

    def _watch_refusals(self, delivery_id: int, reply: Reply) -> None:
        """Count permanent refusals with the same reply in a row; `pause_after` of them pause the campaign: a relay
        that refuses the sender's domain, or blocks the campaign as spam, says so to every recipient alike, and
        marking them all failed would burn the list. Once paused, further equal refusals join the run (the
        sessions in flight finish), and the whole run goes back to the queue."""
        key, delivery_ids = self.refusals
        if reply.status == DeliveryStatus.FAILED and reply.code is not None:
            this = (reply.code, _refusal_text(reply.text))
            if this == key:
                delivery_ids.append(delivery_id)
            elif not isinstance(self.fatal, CampaignPaused):
                self.refusals = (this, [delivery_id])
        elif not isinstance(self.fatal, CampaignPaused):
            self.refusals = (None, [])
        key, delivery_ids = self.refusals
        limit = self.options.pause_after
        if limit and len(delivery_ids) >= limit and key and not isinstance(self.fatal, CampaignPaused):
            self.fatal = CampaignPaused(
                f"{len(delivery_ids)} recipients in a row were refused with the same reply (the last: {reply.code} "
                f"{reply.text}): "
                f"that is the relay refusing this campaign rather than them (MAILER_PAUSE_AFTER={limit}), so it is "
                "paused and they are queued again")


def mailbox_unknown(reply: Reply) -> bool:
    """A refusal at RCPT saying the mailbox does not exist (5.1.1 bad mailbox, 5.1.2 bad domain, 5.1.3 bad address
    syntax, 5.1.6 moved, 5.1.10 null MX, 5.2.1 disabled): the address is suppressed, as the same status in a DSN
    does. Policy refusals (5.7.x: spam, relaying denied, DMARC) say nothing about the mailbox and never do."""
    return (reply.stage == Stage.RCPT and reply.code is not None and 500 <= reply.code < 600
            and bool(_MAILBOX_UNKNOWN.match(reply.text)))


_MAILBOX_UNKNOWN = re.compile(r"\s*5\.(?:1\.(?:1|2|3|6|10)|2\.1)(?!\.?\d)")
_ADDRESS_IN_REPLY = re.compile(r"<[^<>]*>|\S+@\S+")


def _refusal_text(text: str) -> str:
    """A reply's text without the recipient's address, which relays put in it ("<x@y>: Relay access denied")."""
    return " ".join(_ADDRESS_IN_REPLY.sub("", text).split()).lower()


async def probe_relays(relays: Sequence[SMTPSettings]) -> None:
    """Every relay must answer (and accept our login) before any state changes: otherwise exit 4."""
    for relay in relays:
        await probe(relay)


async def send_issue(
    store: Store, config: Config, issue_path: Path, list_name: str, options: SendOptions,
    settings: Sequence[SMTPSettings], progress: ProgressSink | None = None, stop: asyncio.Event | None = None,
) -> SendSummary:
    """Render once, snapshot the campaign, then deliver; resumes the campaign of the same content and list."""
    started = time.monotonic()
    prepared = prepare_issue(store, config, issue_path, list_name)
    signer = dkim_signer(config)  # a bad key stops the send here, before any SMTP
    if options.dry_run:
        template = build_template(prepared, 0, "dry-run", config.secret, signer=signer)
        sample = sample_subscriber(store, prepared.mailing_list.id)
        template.build(Recipient(0, sample.id, sample.email, sample.name, sample.attrs), utcnow())
        total = count_recipients(store, prepared.mailing_list.id)
        return SendSummary(None, total, {"would send": total}, dry_run=True, warnings=prepared.warnings)
    if not options.test_email:  # what would be refused is refused before any SMTP
        issue = prepared.issue
        _refuse_cancelled(store.campaigns.find(prepared.mailing_list.id, issue.content_hash))
        store.campaigns.check_new_content(prepared.mailing_list.id, issue.slug, str(issue_path), issue.content_hash)
    await probe_relays(settings)  # refused / login refused: exit 4 before any state changes
    campaign, template = open_campaign(store, prepared, options, config.secret, signer)
    return await deliver_campaign(store, campaign, template, settings, options, progress, stop, started,
                                  prepared.warnings, resume=f"mailer send {issue_path} --list {list_name}")


def _refuse_cancelled(campaign: Campaign | None) -> None:
    if campaign is not None and campaign.cancelled:
        raise MailerError(f"campaign {campaign.id} of this content and list was cancelled at {campaign.cancelled}; "
                          "nothing was sent (changed content makes a new campaign)")


async def deliver_campaign(
    store: Store, campaign: Campaign, template: MessageTemplate, settings: Sequence[SMTPSettings],
    options: SendOptions, progress: ProgressSink | None = None, stop: asyncio.Event | None = None,
    started: float | None = None, warnings: list[str] | None = None, *, resume: str = "",
    requeue: Callable[[Store], list[str]] | None = None,
) -> SendSummary:
    """Hold the campaign's lease, put back what a crash left in `sending` (and what `requeue` puts back, under the
    lease), deliver, and sum up. A stop the run could not help (the relay gone past its grace, the sender refused,
    a full disk, the lease lost) is in the summary, with the counts and the command that resumes."""
    started = time.monotonic() if started is None else started
    _refuse_cancelled(campaign)
    owner = store.leases.acquire(campaign.id, options.lease_seconds)
    stop = stop or asyncio.Event()
    lost: list[MailerError] = []
    renew = asyncio.create_task(_keep_lease(store, campaign.id, owner, options.lease_seconds, stop, lost))
    notes = list(warnings or [])
    stopped: MailerError | None = None
    try:
        if requeue is not None:
            notes.extend(requeue(store))
        in_doubt = store.deliveries.requeue(campaign.id, [DeliveryStatus.SENDING])
        counts = store.deliveries.counts(campaign.id)
        already_done = not counts.get(DeliveryStatus.QUEUED) and not counts.get(DeliveryStatus.DEFERRED)
        total = sum(counts.values())
        sink = progress or _NoProgress()
        sink.start(total, total - counts.get(DeliveryStatus.QUEUED, 0))
        try:
            if options.workers > 1:
                await _run_workers(store, campaign, template, settings, options, sink, stop, owner)
            else:
                await Engine(store, template, campaign, settings, options, sink, stop, lease=Lease(owner)).run()
        except MailerError as exc:
            stopped = exc
    finally:
        renew.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renew
        with contextlib.suppress(StoreWriteError):  # a full disk: the summary says so, the lease expires
            store.leases.release(campaign.id, owner)
    stopped = stopped or (lost[0] if lost else None)
    counts = store.deliveries.counts(campaign.id)
    unfinished = counts.get(DeliveryStatus.QUEUED, 0) + counts.get(DeliveryStatus.DEFERRED, 0)
    if not unfinished and not stopped:
        store.campaigns.finish(campaign.id)
    if already_done and not campaign.is_test:
        notes.append(f"campaign {campaign.id} of this issue and list was already complete: nothing was sent now "
                     f"(the counts below are the campaign's; see: mailer log {campaign.id})")
    if in_doubt:
        notes.append(f"{in_doubt} recipient(s) left in 'sending' by an interrupted run were sent again")
    if counts.get(DeliveryStatus.DEFERRED) and not stopped:
        notes.append(f"{counts[DeliveryStatus.DEFERRED]} recipient(s) deferred; see: mailer log {campaign.id} "
                     f"--status deferred, and send again later with: mailer retry {campaign.id}")
    summary = SendSummary(campaign.id, sum(counts.values()), counts, test=campaign.is_test,
                          elapsed=time.monotonic() - started, interrupted=stop.is_set() and not stopped,
                          warnings=notes)
    if stopped is not None:
        summary.stopped, summary.stop_code = _stop_line(stopped, campaign.id, counts, resume), int(stopped.exit_code)
    return summary


def _stop_line(reason: MailerError, campaign_id: int, counts: dict[str, int], resume: str) -> str:
    """The one line that says why a campaign stopped, where it stands, and how it goes on."""
    waiting = sum(counts.get(s, 0) for s in (DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED))
    line = f"{reason}; campaign {campaign_id} stopped with {counts.get(DeliveryStatus.SENT, 0)} sent and {waiting} " \
           "waiting"
    if isinstance(reason, LeaseLost):
        return line  # whoever holds the campaign now carries on
    then = "free some disk space, then run" if isinstance(reason, StoreWriteError) else "run"
    return f"{line}; {then} the same command to resume" + (f": {resume}" if resume else "")


def template_for_campaign(
    store: Store, campaign: Campaign, base_url: str, secret: bytes, signer: MessageSigner | None = None,
) -> MessageTemplate:
    """The message skeleton of an existing campaign, from the issue as it was snapshotted."""
    rendered, salt = store.campaigns.rendered(campaign.id)
    issue = issue_from_json(rendered)
    mailing_list = store.lists.by_id(campaign.list_id)
    prepared = PreparedIssue(mailing_list, issue, sender_for(mailing_list, issue, base_url),
                             Path(campaign.issue_path))
    return build_template(prepared, campaign.id, salt, secret, signer=signer, test=campaign.is_test)


async def _run_workers(
    store: Store, campaign: Campaign, template: MessageTemplate, relays: Sequence[SMTPSettings],
    options: SendOptions, sink: ProgressSink, stop: asyncio.Event, owner: str,
) -> None:
    """Deliver with `options.workers` processes (one per core), each on its partition of the deliveries.

    Every process commits `sending` before each message, under this process's lease and only while this process
    lives, so the crash bound stays the total session count. Progress is read back from SQLite; a stop is passed
    on to the workers as SIGTERM; why a worker stopped comes back through a pipe."""
    n = options.workers
    shares = [max(1, options.concurrency // n + (1 if k < options.concurrency % n else 0)) for k in range(n)]
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(n)]  # (reader, writer): why worker k stopped, if it did
    procs = [
        context.Process(
            target=_worker_process,
            args=(os.getpid(), owner, pipes[k][1], store.path, campaign.id, (k, n), list(relays),
                  replace(options, concurrency=shares[k], workers=1, rate=options.rate / n if options.rate else None),
                  template.sender.base_url, template.secret, template.signer),
            daemon=False,
        )
        for k in range(n)
    ]
    for proc in procs:
        proc.start()
    for _, writer in pipes:
        writer.close()
    seen = store.deliveries.counts(campaign.id)
    loop = asyncio.get_running_loop()
    stopping = False
    while any(proc.is_alive() for proc in procs):
        if stop.is_set() and not stopping:
            stopping = True
            for proc in procs:
                if proc.pid and proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)
        await pause(0.25, None if stopping else stop)
        seen = _report_progress(store, campaign.id, seen, sink)
    await loop.run_in_executor(None, lambda: [proc.join() for proc in procs])
    _report_progress(store, campaign.id, seen, sink)
    stops: list[tuple[int, str]] = []
    for reader, _ in pipes:
        with contextlib.suppress(EOFError):  # closed without a word: the worker finished, or was killed
            if reader.poll():
                stops.append(reader.recv())
        reader.close()
    if stops:
        code, message = stops[0]
        error = MailerError(message)
        error.exit_code = ExitCode(code)
        raise error
    if any(proc.exitcode not in (0, ExitCode.INTERRUPTED) for proc in procs):
        raise MailerError(f"a worker process failed (exit codes {[proc.exitcode for proc in procs]})")


def _report_progress(store: Store, campaign_id: int, seen: dict[str, int], sink: ProgressSink) -> dict[str, int]:
    counts = store.deliveries.counts(campaign_id)
    for status in (DeliveryStatus.SENT, DeliveryStatus.DEFERRED, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED):
        for _ in range(max(0, counts.get(status, 0) - seen.get(status, 0))):
            sink.advance(status, "")
    return counts


def _worker_process(parent_pid: int, owner: str, reports: Any, db_path: Path, campaign_id: int, part: Partition,
                    relays: list[SMTPSettings], options: SendOptions, base_url: str, secret: bytes,
                    signer: MessageSigner | None = None) -> None:
    """Entry point of one worker process: its own event loop, SQLite connection and SMTP sessions, sending
    under its parent's lease (`owner`) only while `parent_pid` is its parent."""
    _die_with_parent(parent_pid)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        store = Store.open(db_path)
        try:
            campaign = store.campaigns.get(campaign_id)
            template = template_for_campaign(store, campaign, base_url, secret, signer)
            await Engine(store, template, campaign, relays, options, None, stop, part=part,
                         lease=Lease(owner, parent_pid)).run()
        finally:
            store.close()
        if stop.is_set():
            raise SystemExit(ExitCode.INTERRUPTED)

    try:
        run_event_loop(main())
    except MailerError as exc:
        reports.send((int(exc.exit_code), f"worker {part[0] + 1} of {part[1]}: {exc}"))
        raise SystemExit(exc.exit_code) from None


def _die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive its parent: after a kill -9 of `mailer send`, a resumed run takes the lease
    over, and an orphan still sending would mail the list twice. PR_SET_PDEATHSIG has Linux SIGKILL us when
    the parent dies from now on; one that died before, during this process's second or so of start-up, is seen
    by comparing with the pid the parent passed (os.getppid() read here would already be init's or a
    subreaper's). The engine checks the parent again before each message (Lease.orphaned)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(int(ExitCode.INTERRUPTED))


def run_event_loop(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed (about a third less CPU per message on this workload)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _keep_lease(store: Store, campaign_id: int, owner: str, seconds: float, stop: asyncio.Event,
                      lost: list[MailerError]) -> None:
    """Renew the lease every third of its length. A renewal that changes no row means the campaign is no longer
    ours: stop (the engine itself checks the lease before each message, this also ends a run that is waiting)."""
    while True:
        await asyncio.sleep(seconds / 3)
        try:
            held = store.leases.renew(campaign_id, owner, seconds)
        except StoreWriteError:
            continue  # the disk is full: the next `sending` commit fails as well and stops the campaign
        if not held:
            lost.append(store.leases.lost(campaign_id))
            stop.set()
            return


async def retry_campaign(
    store: Store, config: Config, campaign_ref: str, options: SendOptions, settings: Sequence[SMTPSettings],
    progress: ProgressSink | None = None, stop: asyncio.Event | None = None, *, due_only: bool = False,
    failed: bool = False,
) -> SendSummary:
    """Send again to deferred recipients (all of them, or with `due_only` those whose backoff has passed, without
    waiting for the others), and with `failed` to the failed ones too."""
    started = time.monotonic()
    campaign = store.campaigns.get(campaign_ref)
    _refuse_cancelled(campaign)
    template = template_for_campaign(store, campaign, config.base_url, config.secret, dkim_signer(config))
    if due_only:
        options = replace(options, max_wait=0.0)  # keep to the schedule: what is not due waits for its time
        if not failed and not store.deliveries.count_due(campaign.id, stamp()):
            counts = store.deliveries.counts(campaign.id)
            earliest = store.deliveries.next_retry(campaign.id)
            note = f"nothing is due yet; the next retry time is {earliest}" if earliest else "nothing is due"
            return SendSummary(campaign.id, sum(counts.values()), counts, test=campaign.is_test,
                               elapsed=time.monotonic() - started, warnings=[note])
    await probe_relays(settings)

    def requeue(store: Store) -> list[str]:
        notes = []
        if failed:
            requeued, left = store.deliveries.requeue_failed(campaign.id)
            notes.append(f"{requeued} failed recipient(s) queued again" + (
                f"; {left} left failed: unsubscribed or suppressed since" if left else ""))
        store.deliveries.requeue_due(campaign.id, stamp() if due_only else None)
        return notes

    return await deliver_campaign(store, campaign, template, settings, options, progress, stop, started,
                                  resume=f"mailer retry {campaign.id}", requeue=requeue)


def no_list(lang: str) -> MailingList:
    """The list a rendering without --list is shown for: a neutral stand-in, named as such in List-Id too."""
    return MailingList(id=0, name="newsletter", title=NO_LIST_TITLE.get(lang, NO_LIST_TITLE["en"]),
                       from_addr="Newsletter <newsletter@example.org>", reply_to="", lang=lang)


def prepare_sample(
    issue_path: Path, config: Config, store: Store | None = None, list_name: str | None = None,
) -> tuple[PreparedIssue, Subscriber]:
    """The issue rendered for a list and that list's first active subscriber, or, with no list, for a sample
    Chinese list and reader (what `mailer render` and `mailer preview` show)."""
    if list_name:
        if store is None:
            raise MailerError("--list needs a database; run: mailer init")
        prepared = prepare_issue(store, config, issue_path, list_name)
        return prepared, sample_subscriber(store, prepared.mailing_list.id)
    source = read_issue_file(issue_path)
    issue = render_issue(source, origin=str(issue_path), list_ctx=ListContext(lang="zh"),
                         read_file=issue_file_reader(issue_path), templates_dir=config.templates, theme=config.theme)
    neutral = no_list(issue.lang)
    prepared = PreparedIssue(neutral, issue, sender_for(neutral, issue, config.base_url), issue_path,
                             list(issue.warnings))
    return prepared, Subscriber(email="reader@example.org", name="")


def render_to_dir(
    issue_path: Path, out_dir: Path, config: Config, store: Store | None = None, list_name: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write <slug>.html, <slug>.txt and <slug>.eml (as for a sample recipient of the list) into out_dir;
    `warn` hears what mailer send would warn about."""
    prepared, sample = prepare_sample(issue_path, config, store, list_name)
    for warning in prepared.warnings:
        if warn:
            warn(warning)
    secret = config.secret or secrets.token_bytes(16)  # a preview needs some key; links in it are samples
    template = build_template(prepared, 0, "preview", secret, signer=dkim_signer(config))
    message = template.build(Recipient(0, sample.id, sample.email, sample.name, sample.attrs), utcnow())
    html, text = template.personal_bodies(Recipient(0, sample.id, sample.email, sample.name, sample.attrs),
                                          message.unsubscribe_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = prepared.issue.slug
    paths = [out_dir / f"{slug}.html", out_dir / f"{slug}.txt", out_dir / f"{slug}.eml"]
    paths[0].write_text(html, encoding="utf-8")
    paths[1].write_text(text, encoding="utf-8")
    paths[2].write_bytes(message.data)
    return paths


async def send_one(relays: Sequence[SMTPSettings], message: BuiltMessage) -> Reply:
    """One message outside any campaign (a sign-up confirmation): the first relay that answers takes it.

    Raises SMTPUnavailable when none can be used; any SMTP reply (sent, deferred, failed) is returned."""
    unavailable: SMTPUnavailable | None = None
    for relay in relays:
        session = Session(relay)
        try:
            return await session.send(message)
        except SMTPUnavailable as exc:
            unavailable = exc
        finally:
            await session.close()
    raise unavailable or SMTPUnavailable("no SMTP relay configured")
