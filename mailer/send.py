"""`mailer send` and `mailer retry` as services: render and check before any SMTP (the audience, approvals),
schedule, probe the relays, snapshot, resume or top up the campaign, hold its lease while one process (engine.py)
or several (workers.py) deliver, and sum the run up in a SendSummary, with the one line that says why a campaign
stopped and how it goes on.

Take a Store, settings and a progress sink; return a SendSummary or raise MailerError. Must not print, exit or
install signal handlers: the CLI does, through workers.run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from mailer.approvals import check_prepared
from mailer.audience import Audience
from mailer.campaign import (
    PreparedIssue,
    dkim_signer,
    open_campaign,
    prepare_issue,
    refuse_cancelled,
    revivable,
    revive,
    sample_message,
    template_for_campaign,
)
from mailer.clock import stamp
from mailer.config import Config
from mailer.delivery_log import CampaignLog
from mailer.engine import Engine, Lease, NoProgress, ProgressSink, SendOptions
from mailer.errors import MailerError, SMTPUnavailable
from mailer.exit_codes import ExitCode
from mailer.message import MessageSigner, MessageTemplate
from mailer.models import Campaign, CampaignState, DeliveryStatus, SendSummary
from mailer.smtp import SMTPSettings, probe
from mailer.store import Store, StoreBusy, StoreWriteError
from mailer.store.leases import LeaseLost
from mailer.targeting import front_matter_segment, refuse_blank, resolve_audience
from mailer.workers import run_workers

DRY_RUN_SAMPLE = 5  # addresses a dry run shows of those it would send to


async def probe_relays(relays: Sequence[SMTPSettings], sizes: bool = False) -> list[tuple[SMTPSettings, int]]:
    """Every relay must answer (and accept our login) before any state changes: otherwise exit 4. With `sizes`,
    returns the relays that name the largest message they take, with that size."""
    limits = []
    for relay in relays:
        size = await probe(relay, sizes)
        if size is not None:
            limits.append((relay, size))
    return limits


def refuse_oversize(message_bytes: int, limits: Sequence[tuple[SMTPSettings, int]]) -> None:
    """A message a relay would refuse for its size (552 at MAIL or DATA) would be refused for every recipient: an
    issue with attachments too large for the relay is stopped before its campaign exists."""
    margin = 4096  # names and addresses make one message a little longer than another
    for relay, size in limits:
        if message_bytes + margin > size:
            raise MailerError(
                f"each message is {message_bytes / 2**20:.1f} MB with its attachments (base64 adds a third) and "
                f"{relay.host}:{relay.port} takes at most {size / 2**20:.1f} MB (its EHLO SIZE); nothing was sent: "
                "attach less, or link to the files"
            )


async def send_issue(
    store: Store,
    config: Config,
    issue_path: Path,
    lists: str | Sequence[str],
    options: SendOptions,
    settings: Sequence[SMTPSettings],
    progress: ProgressSink | None = None,
    stop: asyncio.Event | None = None,
    *,
    where: str | None = None,
    segment: str | None = None,
    include_new: bool = False,
    send_at: datetime | None = None,
    resume: str | None = None,
) -> SendSummary:
    """Render once, snapshot the campaign, then deliver; resumes the campaign of the same content and audience
    (with `include_new`, a finished one is topped up with who joined or started matching since). With `send_at`,
    the campaign is only scheduled (`mailer run` starts it) and nothing is sent now.
    `resume`: the command that goes on after a stop (the CLI gives it with the options of this run)."""
    started = time.monotonic()
    names = [lists] if isinstance(lists, str) else list(lists)
    refuse_blank(where, segment)
    prepared = prepare_issue(store, config, issue_path, names[0] if names else "")
    written = front_matter_segment(prepared.issue.meta, str(issue_path))
    if not (where or segment):
        segment = written
    elif written:  # what the command line says wins over the issue's `segment:`, and says so
        given = f"--where '{where}'" if where else f"--segment {segment}"
        prepared.warnings.append(f"{given} on the command line replaces the issue's segment: {written}")
    audience = resolve_audience(store, names, where, segment)
    signer = dkim_signer(config)  # a bad key stops the send here, before any SMTP
    if options.dry_run:
        return _dry_run(store, config, prepared, audience, signer)
    notes = list(prepared.warnings)
    requeue = None
    revived: Campaign | None = None  # this content's campaign, cancelled before it reached anyone: it goes out now
    if not options.test_email:  # what would be refused is refused before any SMTP
        issue = prepared.issue
        existing = store.campaigns.find(audience, prepared.identity, issue.content_hash)
        revived = revivable(store, existing)
        store.schedules.check_new_content(audience, issue.slug, str(issue_path), prepared.identity)
        if send_at is not None:
            return schedule_issue(store, config, prepared, audience, existing, send_at, notes)
        check_prepared(store, config, audience, prepared, existing)
        if existing is not None and revived is None:
            notes += _existing_notes(store, existing, audience, issue.content_hash, include_new)
            if include_new:

                def requeue(store: Store) -> list[str]:
                    return [
                        f"{store.schedules.top_up(existing.id, audience)} subscriber(s) who joined or started "
                        f"matching since campaign {existing.id} was sent are queued for it now"
                    ]

    # refused / login refused: exit 4 before any state changes; with attachments, what size each relay takes
    limits = await probe_relays(settings, sizes=bool(prepared.issue.attachments))
    if prepared.issue.attachments:
        refuse_oversize(len(sample_message(store, prepared, config.secret, signer, audience).data), limits)
    revive(store, revived, notes)
    campaign, template = open_campaign(
        store, prepared, config.secret, signer, audience=audience, test_email=options.test_email
    )
    if campaign.state is CampaignState.SCHEDULED:  # sent now, before its time: its recipients are snapshotted now
        store.schedules.begin(campaign.id, audience)
        notes.append(f"campaign {campaign.id} was scheduled for {campaign.send_at}; it starts now")
    return await deliver_campaign(
        store,
        campaign,
        template,
        settings,
        options,
        progress,
        stop,
        started,
        notes,
        resume=resume or f"mailer send {issue_path} {audience.options()}",
        requeue=requeue,
    )


def _dry_run(
    store: Store, config: Config, prepared: PreparedIssue, audience: Audience, signer: MessageSigner | None
) -> SendSummary:
    """Build one message as a send would (so a template or key error shows now) and count who it would reach."""
    sample_message(store, prepared, config.secret, signer, audience)
    total = store.audiences.count(audience)
    addresses = tuple(s.email for s in store.audiences.sample(audience, DRY_RUN_SAMPLE))
    notes = list(prepared.warnings)
    existing = store.campaigns.find(audience, prepared.identity, prepared.issue.content_hash)
    if existing is not None:
        notes += _existing_notes(store, existing, audience, prepared.issue.content_hash, include_new=False)
    return SendSummary(
        None, total, {"would send": total}, dry_run=True, warnings=notes, sample=addresses, audience=audience.describe()
    )


def _existing_notes(
    store: Store, campaign: Campaign, audience: Audience, look_hash: str, include_new: bool
) -> list[str]:
    """What an editor should know when the issue is a campaign already: its look changed since, and (finished)
    who joined or started matching since."""
    notes = []
    if campaign.look_hash and campaign.look_hash != look_hash:
        notes.append(
            f"the look (layout, theme or list settings) changed since campaign {campaign.id} was snapshotted; it "
            "goes on as it was snapshotted (the content of the issue is the same)"
        )
    if campaign.state is CampaignState.FINISHED and not include_new:
        new = store.audiences.count(audience, campaign.id)
        if new:
            notes.append(
                f"{new} subscriber(s) joined or started matching since campaign {campaign.id} was sent; send it to "
                "exactly them with --include-new"
            )
    return notes


def schedule_issue(
    store: Store,
    config: Config,
    prepared: PreparedIssue,
    audience: Audience,
    existing: Campaign | None,
    send_at: datetime,
    notes: list[str],
) -> SendSummary:
    """Record a scheduled campaign (or move the one of this content and audience to the new time); its
    recipients are snapshotted when `mailer run` starts it. Approvals may come until then."""
    at = stamp(send_at)
    existing = revive(store, existing, notes, at)
    if existing is not None and existing.state is not CampaignState.SCHEDULED:
        raise MailerError(
            f"campaign {existing.id} of this issue and audience is {existing.state} already; nothing was scheduled "
            f"(see: mailer campaigns show {existing.id})"
        )
    if existing is not None:
        store.schedules.reschedule(existing.id, at)
        campaign = store.campaigns.get(existing.id)
    else:
        campaign, _ = open_campaign(store, prepared, config.secret, audience=audience, send_at=at)
    try:
        check_prepared(store, config, audience, prepared, campaign if existing is not None else None)
    except MailerError as exc:
        notes.append(f"it will not start without its approvals: {exc}")
    total = store.audiences.count(audience)
    return SendSummary(campaign.id, total, {}, warnings=notes, scheduled=at)


async def deliver_campaign(
    store: Store,
    campaign: Campaign,
    template: MessageTemplate,
    settings: Sequence[SMTPSettings],
    options: SendOptions,
    progress: ProgressSink | None = None,
    stop: asyncio.Event | None = None,
    started: float | None = None,
    warnings: list[str] | None = None,
    *,
    resume: str = "",
    requeue: Callable[[Store], list[str]] | None = None,
) -> SendSummary:
    """Hold the campaign's lease, put back what a crash left in `sending` (and what `requeue` puts back, under the
    lease), deliver, and sum up. A stop the run could not help (the relay gone past its grace, the sender refused,
    a full disk, the lease lost) is in the summary, with the counts and the command that resumes."""
    started = time.monotonic() if started is None else started
    refuse_cancelled(campaign)
    owner = store.leases.acquire(campaign.id, options.lease_seconds)
    try:
        store.campaigns.start(campaign.id)  # a paused campaign is refused: only `resume` lifts an operator's pause
    except MailerError:
        store.leases.release(campaign.id, owner)
        raise
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
        before, tried_before = counts, store.deliveries.tried(campaign.id)[0]
        already_done = not counts.get(DeliveryStatus.QUEUED) and not counts.get(DeliveryStatus.DEFERRED)
        total = sum(counts.values())
        sink = progress or NoProgress()
        sink.start(total, total - counts.get(DeliveryStatus.QUEUED, 0))
        try:
            if options.workers > 1:
                await run_workers(store, campaign, template, settings, options, sink, stop, owner)
            else:
                await Engine(
                    CampaignLog(store, campaign.id),
                    template,
                    campaign,
                    settings,
                    options,
                    sink,
                    stop,
                    lease=Lease(owner),
                ).run()
        except MailerError as exc:
            stopped = exc
    finally:
        renew.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renew
        with contextlib.suppress(StoreWriteError, StoreBusy):  # the summary says why; the lease expires
            store.leases.release(campaign.id, owner)
    stopped = stopped or (lost[0] if lost else None)
    state = store.campaigns.state(campaign.id)
    if state is CampaignState.CANCELLED:  # cancelled under this sender (the ops console): the rest is skipped
        notes.append(
            f"campaign {campaign.id} was cancelled while it was sent; {store.campaigns.skip_rest(campaign.id)} "
            "recipient(s) left unsent were skipped"
        )
    elif state is CampaignState.PAUSED:
        notes.append(
            f"campaign {campaign.id} is paused; once resumed ('mailer campaigns resume {campaign.id}') "
            f"send the rest with: mailer retry {campaign.id}"
        )
    counts = store.deliveries.counts(campaign.id)
    if stopped is None and not stop.is_set() and state is not CampaignState.PAUSED:
        stopped = _nothing_taken(store, campaign.id, before, counts, tried_before)
    unfinished = counts.get(DeliveryStatus.QUEUED, 0) + counts.get(DeliveryStatus.DEFERRED, 0)
    if not unfinished and not stopped:
        store.campaigns.finish(campaign.id)
    if already_done and not campaign.is_test:
        notes.append(
            f"campaign {campaign.id} of this issue and list was already complete: nothing was sent now "
            f"(the counts below are the campaign's; see: mailer log {campaign.id})"
        )
    if in_doubt:
        notes.append(f"{in_doubt} recipient(s) left in 'sending' by an interrupted run were sent again")
    if counts.get(DeliveryStatus.DEFERRED) and not stopped:
        notes.append(
            f"{counts[DeliveryStatus.DEFERRED]} recipient(s) deferred; see: mailer log {campaign.id} "
            f"--status deferred, and send again later with: mailer retry {campaign.id}"
        )
    summary = SendSummary(
        campaign.id,
        sum(counts.values()),
        counts,
        test=campaign.is_test,
        elapsed=time.monotonic() - started,
        interrupted=stop.is_set() and not stopped,
        warnings=notes,
    )
    if summary.interrupted and state is not CampaignState.PAUSED:  # what is left, and the command that sends it
        stopped = MailerError("interrupted")
        stopped.exit_code = ExitCode.INTERRUPTED
    if stopped is not None:
        summary.stopped, summary.stop_code = _stop_line(stopped, campaign.id, counts, resume), int(stopped.exit_code)
    return summary


def _nothing_taken(
    store: Store, campaign_id: int, before: dict[str, int], after: dict[str, int], tried_before: int
) -> MailerError | None:
    """Why a run that ended on its own is not done: the relay took nothing (every message tried was deferred by a
    lost connection or a 421: exit 4, as for a relay that cannot be reached), or recipients are still queued
    (they must never be left without a word)."""
    settled = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED)
    tried, dropped, reply = store.deliveries.tried(campaign_id)
    if (
        tried > tried_before
        and dropped
        and dropped == after.get(DeliveryStatus.DEFERRED, 0)
        and all(after.get(s, 0) == before.get(s, 0) for s in settled)
    ):
        return SMTPUnavailable(
            f"the relay took no message in this run: all {dropped} recipient(s) tried were deferred after a lost "
            f"connection or a 421 (last: {reply})"
        )
    queued = after.get(DeliveryStatus.QUEUED, 0)
    return MailerError(f"the run ended with {queued} recipient(s) still queued") if queued else None


def _stop_line(reason: MailerError, campaign_id: int, counts: dict[str, int], resume: str) -> str:
    """The one line that says why a campaign stopped, where it stands, and how it goes on."""
    waiting = sum(counts.get(s, 0) for s in (DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED))
    line = (
        f"{reason}; campaign {campaign_id} stopped with {counts.get(DeliveryStatus.SENT, 0)} sent and {waiting} waiting"
    )
    if isinstance(reason, LeaseLost):
        return line  # whoever holds the campaign now carries on
    then = "run"
    if isinstance(reason, StoreWriteError):
        then = "free some disk space, then run"
    elif isinstance(reason, StoreBusy):
        then = "once the other process lets go of the database, run"
    return f"{line}; {then} the same command to resume" + (f": {resume}" if resume else "")


async def _keep_lease(
    store: Store, campaign_id: int, owner: str, seconds: float, stop: asyncio.Event, lost: list[MailerError]
) -> None:
    """Renew the lease every third of its length. A renewal that changes no row means the campaign is no longer
    ours: stop (the engine itself checks the lease before each message, this also ends a run that is waiting).
    A renewal that cannot write (the database locked by another process past the busy timeout, a full disk) is
    tried again at the next tick: that is not a lost lease. Should another sender take the campaign meanwhile (a
    lease expired while the database was locked), the next renewal changes no row, and every `sending` mark checks
    the holder anyway; should the database stay unwritable, the engine's own commits stop the run."""
    while True:
        await asyncio.sleep(seconds / 3)
        try:
            held = store.leases.renew(campaign_id, owner, seconds)
        except (StoreWriteError, StoreBusy):
            continue
        if not held:
            lost.append(store.leases.lost(campaign_id))
            stop.set()
            return


async def retry_campaign(
    store: Store,
    config: Config,
    campaign_ref: str,
    options: SendOptions,
    settings: Sequence[SMTPSettings],
    progress: ProgressSink | None = None,
    stop: asyncio.Event | None = None,
    *,
    due_only: bool = False,
    failed: bool = False,
    resume: str | None = None,
    now: datetime | None = None,
) -> SendSummary:
    """Send again to deferred recipients (all of them, or with `due_only` those whose backoff has passed, without
    waiting for the others), and with `failed` to the failed ones too. `now` is when "due" is judged (the
    runner's clock)."""
    started = time.monotonic()
    campaign = store.campaigns.get(campaign_ref)
    refuse_cancelled(campaign)
    template = template_for_campaign(store, campaign, config.base_url, config.secret, dkim_signer(config))
    if due_only:
        options = replace(options, max_wait=0.0)  # keep to the schedule: what is not due waits for its time
        if not failed and not store.deliveries.count_due(campaign.id, stamp(now)):
            counts = store.deliveries.counts(campaign.id)
            earliest = store.deliveries.next_retry(campaign.id)
            note = f"nothing is due yet; the next retry time is {earliest}" if earliest else "nothing is due"
            return SendSummary(
                campaign.id,
                sum(counts.values()),
                counts,
                test=campaign.is_test,
                elapsed=time.monotonic() - started,
                warnings=[note],
            )
    await probe_relays(settings)

    def requeue(store: Store) -> list[str]:
        notes = []
        if failed:
            requeued, left = store.deliveries.requeue_failed(campaign.id)
            notes.append(
                f"{requeued} failed recipient(s) queued again"
                + (f"; {left} left failed: unsubscribed or suppressed since" if left else "")
            )
        store.deliveries.requeue_due(campaign.id, stamp(now) if due_only else None)
        return notes

    return await deliver_campaign(
        store,
        campaign,
        template,
        settings,
        options,
        progress,
        stop,
        started,
        resume=resume or f"mailer retry {campaign.id}",
        requeue=requeue,
    )
