"""`mailer run`: the long-running process. Each pass resumes the scheduled campaigns a stopped or killed runner was
sending, starts the scheduled ones whose time has come (with their approvals, snapshotting recipients then),
sends the retries whose backoff has passed, and (when given a mailbox) reads bounces every few minutes; one line
per event to a log callback. Also the time zone an `--at` is read in.

A service: the clock and the log are passed in, the loop ends when `stop` is set. Must not print or install signal
handlers (the CLI does); sending is send.py's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

from mailer.approvals import check_approvals
from mailer.campaign import dkim_signer, stored_audience, template_for_campaign
from mailer.clock import Clock, stamp, utcnow
from mailer.config import Config
from mailer.engine import NoProgress, SendOptions
from mailer.errors import CampaignBusy, MailerError
from mailer.models import Campaign, SendSummary
from mailer.schedule import timezone
from mailer.send import deliver_campaign, probe_relays, retry_campaign
from mailer.smtp import SMTPSettings
from mailer.store import Store
from mailer.store.leases import lease_owner

Log = Callable[[str], None]
BACKOFF = timedelta(minutes=1)  # a campaign whose run stopped (relay down, say) is tried again after this


def zone_for(store: Store | None, config: Config, list_name: str | None, tz: str | None) -> tzinfo:
    """Where an `--at` time is read: `--tz`, else the list's time zone, else mailer.toml's `timezone`, else UTC."""
    if tz:
        return timezone(tz)
    if store is not None and list_name:
        list_tz = store.lists.get(list_name).tz
        if list_tz:
            return timezone(list_tz)
    return timezone(config.timezone or "UTC")


@dataclass(frozen=True)
class RunnerOptions:
    poll: float = 5.0  # seconds between passes
    bounces: Path | None = None  # a mailbox (mbox, Maildir, folder of .eml) to read bounces from
    bounce_every: float = 300.0


class Runner:
    """One pass at a time over what is due (`tick`), or passes until stopped (`run`)."""

    def __init__(
        self,
        store: Store,
        config: Config,
        settings: Sequence[SMTPSettings],
        send_options: SendOptions,
        log: Log,
        options: RunnerOptions = RunnerOptions(),
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.config = config
        self.settings = settings
        self.send_options = send_options
        self.log = log
        self.options = options
        self.clock = clock
        self.held: dict[int, str] = {}  # campaign -> why it waits (logged once, again when the reason changes)
        self.busy: dict[int, str] = {}  # campaign -> the live sender that holds it (logged once, as `held`)
        self.not_before: dict[int, datetime] = {}
        self.next_bounce_scan: datetime | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self.log(f"mailer run: watching {self.config.db_path} every {self.options.poll:g}s")
        while not stop.is_set():
            await self.tick(stop)
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.poll)
        self.log("mailer run: stopped")

    async def tick(self, stop: asyncio.Event | None = None) -> int:
        """One pass; returns how many campaigns it sent to."""
        stop = stop or asyncio.Event()
        sent = 0
        for campaign in self.store.schedules.interrupted():
            if not stop.is_set() and self._may_try(campaign.id) and self._free(campaign.id):
                sent += await self._deliver(campaign, stop, "resumes (its run was interrupted)")
        for campaign in self.store.schedules.due(stamp(self.clock())):
            if not stop.is_set() and self._may_try(campaign.id) and self._approved(campaign):
                sent += await self._start(campaign, stop)
        for campaign in self.store.schedules.retries_due(stamp(self.clock())):
            if not stop.is_set() and self._may_try(campaign.id):
                sent += await self._retry(campaign, stop)
        if self.options.bounces is not None and not stop.is_set():
            self._scan_bounces()
        return sent

    def _may_try(self, campaign_id: int) -> bool:
        until = self.not_before.get(campaign_id)
        return until is None or self.clock() >= until

    def _free(self, campaign_id: int) -> bool:
        """Whether no other live sender holds the campaign. One that does is not interrupted but at work (another
        `mailer run`, a `mailer send`): it is left alone, and said so once, not on every pass."""
        try:
            self.store.leases.check_free(campaign_id, lease_owner())
        except CampaignBusy as exc:
            holder = str(exc).split(";")[0]
            if self.busy.get(campaign_id) != holder:
                self.busy[campaign_id] = holder
                self.log(f"{holder}; leaving it to that sender")
            return False
        self.busy.pop(campaign_id, None)
        return True

    def _approved(self, campaign: Campaign) -> bool:
        try:
            check_approvals(
                self.store,
                stored_audience(self.store, campaign),
                campaign.content_hash,
                campaign.issue_path,
                look={"output": campaign.look_hash},  # what it sends: the snapshot taken when it was scheduled
            )
        except MailerError as exc:
            if self.held.get(campaign.id) != str(exc):
                self.held[campaign.id] = str(exc)
                self.log(f"campaign {campaign.id} is due and waits: {exc}")
            return False
        self.held.pop(campaign.id, None)
        return True

    async def _start(self, campaign: Campaign, stop: asyncio.Event) -> int:
        try:
            await probe_relays(self.settings)  # a relay that is down: the campaign stays scheduled, nobody marked
        except MailerError as exc:
            return self._stopped(campaign, exc)
        audience = stored_audience(self.store, campaign)
        self.store.schedules.begin(campaign.id, audience)
        total = sum(self.store.deliveries.counts(campaign.id).values())
        self.log(f"campaign {campaign.id} ({campaign.slug}, {audience.describe()}) starts: {total} recipient(s)")
        return await self._deliver(self.store.campaigns.get(campaign.id), stop, "")

    async def _deliver(self, campaign: Campaign, stop: asyncio.Event, why: str) -> int:
        if why:
            self.log(f"campaign {campaign.id} {why}")
        try:
            template = template_for_campaign(
                self.store, campaign, self.config.base_url, self.config.secret, dkim_signer(self.config)
            )
            summary = await deliver_campaign(
                self.store,
                campaign,
                template,
                self.settings,
                self.send_options,
                _Notes(self.log, campaign.id),
                stop=stop,
                resume="mailer run",
            )
        except CampaignBusy:
            return 0  # another sender has it; it carries on
        except MailerError as exc:
            return self._stopped(campaign, exc)
        self._report(summary)
        return 1

    async def _retry(self, campaign: Campaign, stop: asyncio.Event) -> int:
        try:
            summary = await retry_campaign(
                self.store,
                self.config,
                str(campaign.id),
                self.send_options,
                self.settings,
                _Notes(self.log, campaign.id),
                stop=stop,
                due_only=True,
                now=self.clock(),
            )
        except CampaignBusy:
            return 0
        except MailerError as exc:
            return self._stopped(campaign, exc)
        self.log(f"campaign {campaign.id}: retries due")
        self._report(summary)
        return 1

    def _stopped(self, campaign: Campaign, exc: MailerError) -> int:
        self.not_before[campaign.id] = self.clock() + BACKOFF
        self.log(f"campaign {campaign.id}: error: {exc} (tried again in {BACKOFF.seconds // 60} min)")
        return 0

    def _report(self, summary: SendSummary) -> None:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "nobody"
        self.log(f"campaign {summary.campaign_id}: {counts}")
        for warning in summary.warnings:
            self.log(f"campaign {summary.campaign_id}: {warning}")
        if summary.stopped:
            self.not_before[summary.campaign_id or 0] = self.clock() + BACKOFF
            self.log(f"campaign {summary.campaign_id}: error: {summary.stopped}")

    def _scan_bounces(self) -> None:
        from mailer.inbox import scan

        now = self.clock()
        if self.next_bounce_scan is not None and now < self.next_bounce_scan:
            return
        self.next_bounce_scan = now + timedelta(seconds=self.options.bounce_every)
        assert self.options.bounces is not None
        try:
            rows = scan(self.store, self.config.secret, self.options.bounces, self.config.soft_bounce_limit)
        except MailerError as exc:
            self.log(f"bounces {self.options.bounces}: error: {exc}")
            return
        new = [r for r in rows if not r.result.startswith("duplicate")]
        if new:
            self.log(f"bounces {self.options.bounces}: {len(new)} new report(s), {sum(r.matched for r in new)} matched")


class _Notes(NoProgress):
    """What the engine says during a run (a pause it waits out, a relay it waits for), as the runner's log lines."""

    def __init__(self, log: Callable[[str], None], campaign_id: int) -> None:
        self.log, self.campaign_id = log, campaign_id

    def note(self, text: str) -> None:
        self.log(f"campaign {self.campaign_id}: {text}")


def runner_send_options(config: Config, concurrency: int | None, rate: float | None) -> SendOptions:
    """What the runner sends with: a retry pass keeps to the schedule (it never waits in the pass)."""
    return replace(
        SendOptions.for_config(config, concurrency=concurrency or config.concurrency, rate=rate), max_wait=0.0
    )
