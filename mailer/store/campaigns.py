"""Campaigns: an issue rendered for an audience (lists, a segment), written with the snapshot of its recipients
(active, not suppressed, matching) before the first message leaves (or, scheduled, when it starts: schedules.py);
found again by audience and content to resume; cancelled for good.

Must not send or render; the content arrives rendered (campaign.py) and deliveries.py moves each recipient."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailer.audience import Audience
from mailer.errors import CampaignBusy, CampaignHeld, MailerError, NotFoundError, UsageError
from mailer.models import Campaign, CampaignState, DeliveryStatus, Subscriber
from mailer.store.archive import on_list
from mailer.store.connection import Repository
from mailer.store.leases import check_holder, lease_owner

_COLUMNS = (
    "id, list_id, slug, subject, issue_path, content_hash, created, is_test, finished, cancelled, state, audience, "
    "audience_key, look_hash, send_at, archive_slug"
)
_LIVE = "('queued', 'sending')"  # recipients a campaign is in the middle of (deferred ones wait for retries)


def _campaign(row: dict[str, Any]) -> Campaign:
    return Campaign(**{**row, "is_test": bool(row["is_test"]), "state": CampaignState(row["state"])})


def _free_archive_slug(conn: sqlite3.Connection, list_ids: Sequence[int], slug: str) -> str:
    """The issue's slug, or `slug-2`, `slug-3`, ... when the archive of one of its lists has that name already (a
    campaign for several lists is in each one's archive)."""
    taken: set[str] = set()
    for list_id in list_ids:
        taken |= {
            name
            for (name,) in conn.execute(
                f"SELECT archive_slug FROM campaigns c WHERE {on_list('c')} "
                "AND (archive_slug = ?2 OR archive_slug LIKE ?3)",
                (list_id, slug, f"{slug}-%"),
            )
        }
    n, candidate = 1, slug
    while candidate in taken:
        n += 1
        candidate = f"{slug}-{n}"
    return candidate


@dataclass(frozen=True)
class CampaignSummary:
    """A campaign as `mailer campaigns ls` shows it."""

    id: int
    issue: str
    list: str
    subject: str
    created: str
    finished: str | None
    test: bool
    issue_path: str
    cancelled: str | None
    state: CampaignState
    counts: dict[str, int]
    send_at: str | None = None
    audience: str = ""


class Campaigns(Repository):
    def audience(self, target: Audience | int) -> Audience:
        """An audience, or the whole of one list given by its id."""
        if isinstance(target, Audience):
            return target
        return Audience((target,), (self.store.lists.by_id(target).name,))

    def find(self, target: Audience | int, content_hash: str, look_hash: str = "") -> Campaign | None:
        """The campaign that sends this content to this audience: what is sent and to whom name a campaign, not
        the issue's file name, nor its look (the latest one, should a database from before schema 5 hold two). A
        campaign from before schema 12 is known by the rendered output it was made from (`look_hash`)."""
        return self._first(
            "audience_key = ? AND content_hash IN (?, ?) AND is_test = 0 ORDER BY id DESC LIMIT 1",
            (self.audience(target).key, content_hash, f"rendered:{look_hash}"),
        )

    def _first(self, condition: str, args: tuple[Any, ...]) -> Campaign | None:
        for row in self.store.db.query(f"SELECT {_COLUMNS} FROM campaigns WHERE {condition}", args):
            return _campaign(row)
        return None

    def get(self, ref: str | int) -> Campaign:
        """A campaign by id, or by the issue's slug when that names one campaign."""
        found = None
        if str(ref).isascii() and str(ref).isdigit() and int(ref) < 2**63:  # '²' is a digit; SQLite ids are 64-bit
            found = self._first("id = ?", (int(ref),))
        if found is None:
            rows = list(
                self.store.db.query(f"SELECT {_COLUMNS} FROM campaigns WHERE slug = ? AND is_test = 0", (str(ref),))
            )
            if len(rows) > 1:
                raise UsageError(f"{ref!r} names {len(rows)} campaigns; use the id from: mailer campaigns ls")
            found = _campaign(rows[0]) if rows else None
        if found is None:
            raise NotFoundError(f"no campaign {ref!r} (see: mailer campaigns ls)")
        return found

    def rendered(self, campaign_id: int) -> tuple[dict[str, Any], str]:
        """The rendered issue as it was snapshotted (RenderedIssue JSON) and the campaign's Message-ID salt."""
        rendered, salt = self.conn.execute(
            "SELECT rendered, salt FROM campaigns WHERE id = ?", (campaign_id,)
        ).fetchone()
        return json.loads(rendered), salt

    def create(
        self,
        target: Audience | int,
        slug: str,
        subject: str,
        issue_path: str,
        content_hash: str,
        rendered: dict[str, Any],
        salt: str,
        *,
        look_hash: str = "",
        send_at: str | None = None,
        is_test: bool = False,
        test_recipient: Subscriber | None = None,
        web_edition: str | None = None,
    ) -> Campaign:
        """Write the campaign and its recipient snapshot (active, not suppressed, matching) in one transaction; a
        scheduled one (`send_at`) gets its snapshot when it starts (begin).

        For a real send, the campaign of this content and audience is returned if it exists (another process may
        have created it first: the check and the insert share one write transaction, so two senders never make
        two); see check_new_content for what is refused. `web_edition`: the issue rendered for a neutral reader,
        archived under the issue's slug (`slug-2`, ... when the list's archive has that name already)."""
        now = self.store.now()
        audience = self.audience(target)
        with self.store.transaction():
            if not is_test:
                existing = self.find(audience, content_hash, look_hash)
                if existing is not None:
                    return existing
                self.store.schedules.check_new_content(audience, slug, issue_path, content_hash)
            state = CampaignState.SCHEDULED if send_at else CampaignState.SENDING
            cur = self.conn.execute(
                "INSERT INTO campaigns (list_id, slug, subject, issue_path, content_hash, rendered, salt, is_test, "
                "created, audience, audience_key, look_hash, send_at, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    audience.list_ids[0],
                    slug,
                    subject,
                    issue_path,
                    content_hash,
                    json.dumps(rendered, ensure_ascii=False),
                    salt,
                    int(is_test),
                    now,
                    audience.to_json(),
                    audience.key if not is_test else "",
                    look_hash,
                    send_at,
                    state,
                ),
            )
            campaign_id = int(cur.lastrowid or 0)
            if web_edition is not None and not is_test:
                self.conn.execute(
                    "UPDATE campaigns SET web_edition = ?, archive_slug = ? WHERE id = ?",
                    (web_edition, _free_archive_slug(self.conn, audience.list_ids, slug), campaign_id),
                )
            if test_recipient is not None:
                self.conn.execute(
                    "INSERT INTO deliveries (campaign_id, subscriber_id, email, name, attrs, status, queued, updated) "
                    "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (
                        campaign_id,
                        test_recipient.id,
                        test_recipient.email,
                        test_recipient.name,
                        json.dumps(test_recipient.attrs, ensure_ascii=False),
                        now,
                        now,
                    ),
                )
            elif not send_at:
                self.store.audiences.snapshot(campaign_id, audience)
        return self.get(campaign_id)

    def with_counts(self, include_tests: bool = False) -> list[CampaignSummary]:
        where = "" if include_tests else "WHERE c.is_test = 0"
        rows = self.store.db.query(
            "SELECT c.id, c.slug AS issue, l.name AS list, c.subject, c.created, c.finished, c.is_test AS test, "
            "c.issue_path, c.cancelled, c.state, c.send_at, c.audience "
            f"FROM campaigns c JOIN lists l ON l.id = c.list_id {where} ORDER BY c.id"
        )
        return [
            CampaignSummary(
                **{
                    **row,
                    "test": bool(row["test"]),
                    "state": CampaignState(row["state"]),
                    "counts": self.store.deliveries.counts(row["id"]),
                }
            )
            for row in list(rows)
        ]

    def finish(self, campaign_id: int) -> None:
        """Nobody is left queued or deferred (a pause that came too late to hold anyone back ends with it)."""
        with self.store.transaction():
            self.conn.execute(
                "UPDATE campaigns SET finished = ?, state = ? WHERE id = ? AND state <> ?",
                (self.store.now(), CampaignState.FINISHED, campaign_id, CampaignState.CANCELLED),
            )

    def state(self, campaign_id: int) -> CampaignState:
        row = self.conn.execute("SELECT state FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no campaign {campaign_id} (see: mailer campaigns ls)")
        return CampaignState(row[0])

    def start(self, campaign_id: int) -> None:
        """A sender takes the campaign up (a finished one sent again by retry is sending again). A paused one is
        refused: the pause is an operator's, and only `resume` lifts it."""
        with self.store.transaction():
            state = self.state(campaign_id)
            if state is CampaignState.PAUSED:
                raise CampaignHeld(
                    f"campaign {campaign_id} is paused: resume it with 'mailer campaigns resume {campaign_id}' "
                    "first (nothing was sent now)"
                )
            if state is CampaignState.CANCELLED:
                raise MailerError(f"campaign {campaign_id} was cancelled; nothing was sent")
            if state is CampaignState.SCHEDULED:
                raise MailerError(
                    f"campaign {campaign_id} is scheduled and has not started: 'mailer run' starts it at its time "
                    f"(or move it: mailer campaigns reschedule {campaign_id} --at now); nothing was sent"
                )
            self.conn.execute("UPDATE campaigns SET state = ? WHERE id = ?", (CampaignState.SENDING, campaign_id))

    def pause(self, campaign_id: int) -> None:
        """Hold a campaign: its sender (if one runs) stops taking recipients within about a second, lets the
        messages in flight end and waits; nobody sends it until it is resumed, across restarts."""
        self._move_state(campaign_id, CampaignState.SENDING, CampaignState.PAUSED, "only one being sent can be paused")

    def resume(self, campaign_id: int) -> None:
        """Lift a pause: a waiting sender goes on where it stopped; otherwise send it with `mailer retry ID`."""
        self._move_state(campaign_id, CampaignState.PAUSED, CampaignState.SENDING, "only a paused one can be resumed")

    def _move_state(self, campaign_id: int, before: CampaignState, after: CampaignState, only: str) -> None:
        with self.store.transaction():
            state = self.state(campaign_id)
            if state is not before:
                raise MailerError(f"campaign {campaign_id} is {state}: {only}")
            self.conn.execute("UPDATE campaigns SET state = ? WHERE id = ?", (after, campaign_id))

    def cancel(self, campaign_id: int, *, under_sender: bool = False) -> int | None:
        """Stop a campaign for good: its recipients still to send become `skipped`; returns how many.

        Refused while a sender holds the campaign (CampaignBusy): that run would go on with its in-flight
        messages, and it is the one that knows how they ended. With `under_sender` (the ops console) the campaign
        is marked cancelled instead and returns None: its sender stops within about a second, records what it had
        in flight and skips the rest on its way out (skip_rest)."""
        now = self.store.now()
        owner = lease_owner()
        with self.store.transaction():
            row = self.conn.execute(
                "SELECT lease_owner, lease_until, cancelled FROM campaigns WHERE id = ?", (campaign_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no campaign {campaign_id} (see: mailer campaigns ls)")
            holder, until, cancelled = row
            if cancelled:
                raise MailerError(f"campaign {campaign_id} was already cancelled at {cancelled}")
            try:
                check_holder(campaign_id, holder, until, owner, now)
            except CampaignBusy:
                if not under_sender:
                    raise
                self.conn.execute(
                    "UPDATE campaigns SET cancelled = ?, state = ? WHERE id = ?",
                    (now, CampaignState.CANCELLED, campaign_id),
                )
                return None
            self.conn.execute(
                "UPDATE campaigns SET cancelled = ?, state = ?, finished = COALESCE(finished, ?), lease_owner = NULL, "
                "lease_until = NULL WHERE id = ?",
                (now, CampaignState.CANCELLED, now, campaign_id),
            )
            return self._skip_rest(campaign_id, now)

    def skip_rest(self, campaign_id: int) -> int:
        """What a cancelled campaign's sender does on its way out: those still to send become `skipped`."""
        now = self.store.now()
        with self.store.transaction():
            self.conn.execute("UPDATE campaigns SET finished = COALESCE(finished, ?) WHERE id = ?", (now, campaign_id))
            return self._skip_rest(campaign_id, now)

    def _skip_rest(self, campaign_id: int, now: str) -> int:
        skipped = 0
        for status, reply in (
            (DeliveryStatus.QUEUED, "campaign cancelled"),
            (DeliveryStatus.DEFERRED, "campaign cancelled"),
            (DeliveryStatus.SENDING, "campaign cancelled; an interrupted run may have sent it"),
        ):
            skipped += self.store.deliveries.move(campaign_id, status, DeliveryStatus.SKIPPED, reply, now)
        return skipped
