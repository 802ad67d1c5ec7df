"""When campaigns go, and what holds new content back: a scheduled one begins (its recipients snapshotted then),
is moved, falls due; one that was scheduled and interrupted is found again; a finished one is topped up; retries
fall due (what `mailer run` asks); new content under the name of a campaign still being sent is refused.

Must not send; campaigns.py owns a campaign's identity and rows, audiences.py who an audience reaches."""

from __future__ import annotations

from typing import Any

from mailer.audience import Audience
from mailer.errors import MailerError
from mailer.models import Campaign, CampaignState
from mailer.store.campaigns import _COLUMNS, _LIVE, _campaign
from mailer.store.connection import Repository


class Schedules(Repository):
    def check_new_content(self, audience: Audience, slug: str, issue_path: str, content_hash: str) -> None:
        """Refuse new content under the name or file of a campaign that is not finished: that campaign would
        otherwise be resumed with content the editor no longer sees, or mixed with the new one."""
        if self.store.campaigns.find(audience, content_hash) is not None:
            return
        unfinished = self.unfinished(audience, slug, issue_path, content_hash)
        if unfinished is not None and unfinished.state is CampaignState.SCHEDULED:
            raise MailerError(
                f"campaign {unfinished.id} is scheduled for {unfinished.send_at} with other content or another "
                f"audience of {unfinished.issue_path}: cancel it with 'mailer campaigns cancel {unfinished.id}' and "
                "schedule the issue again"
            )
        if unfinished is not None:
            raise MailerError(
                f"{issue_path} is not what campaign {unfinished.id} sends to this list ({unfinished.issue_path}, "
                f"issue '{unfinished.slug}', other content), and that campaign is not finished "
                f"({self.store.deliveries.waiting(unfinished.id)} recipient(s) still to send): finish it as it was "
                f"snapshotted with 'mailer retry {unfinished.id}', or cancel it with 'mailer campaigns cancel "
                f"{unfinished.id}' and send again (a new campaign mails the whole list)"
            )

    def unfinished(self, audience: Audience, slug: str, issue_path: str, content_hash: str) -> Campaign | None:
        """A campaign of the same issue (name or file) on one of these lists, for other content or another
        audience, that is scheduled or in the middle of sending (recipients queued or sending: running or
        interrupted). One that only waits for deferred recipients' retries blocks nothing (mailer retry or mailer
        run finishes it): one greylisted address must not hold December's issue back for three days."""
        marks = ", ".join("?" for _ in audience.list_ids)
        found = self._all(
            f"list_id IN ({marks}) AND is_test = 0 AND cancelled IS NULL AND (slug = ? OR issue_path = ?) "
            "AND NOT (audience_key = ? AND content_hash = ?) AND (state = 'scheduled' OR EXISTS (SELECT 1 FROM "
            f"deliveries d WHERE d.campaign_id = campaigns.id AND d.status IN {_LIVE})) ORDER BY id",
            (*audience.list_ids, slug, issue_path, audience.key, content_hash),
        )
        return found[0] if found else None

    def begin(self, campaign_id: int, audience: Audience) -> None:
        """A scheduled campaign starts: its recipients are snapshotted now (so who unsubscribed since is not
        mailed) and it is being sent. Nothing happens to one that has begun already."""
        with self.store.transaction():
            if self.store.campaigns.state(campaign_id) is CampaignState.SCHEDULED:
                self.store.audiences.snapshot(campaign_id, audience)
                self.conn.execute("UPDATE campaigns SET state = ? WHERE id = ?", (CampaignState.SENDING, campaign_id))

    def top_up(self, campaign_id: int, audience: Audience) -> int:
        """Queue who the audience reaches now and the campaign never had (joined or started matching since):
        nobody it already has, whatever became of them, is queued again. Returns how many."""
        with self.store.transaction():
            added = self.store.audiences.snapshot(campaign_id, audience, top_up=True)
            if added:
                self.conn.execute("UPDATE campaigns SET finished = NULL WHERE id = ?", (campaign_id,))
            return added

    def reschedule(self, campaign_id: int, send_at: str) -> None:
        """Move a scheduled campaign to a new time; one cancelled before it reached anyone is scheduled again."""
        with self.store.transaction():
            self.revive(campaign_id, send_at)
            state = self.store.campaigns.state(campaign_id)
            if state is not CampaignState.SCHEDULED:
                raise MailerError(f"campaign {campaign_id} is {state}: only a scheduled one can be rescheduled")
            self.conn.execute("UPDATE campaigns SET send_at = ? WHERE id = ?", (send_at, campaign_id))

    def never_began(self, campaign_id: int) -> bool:
        """A cancelled campaign that reached nobody: cancelled while scheduled, before its recipients were taken."""
        row = self.conn.execute(
            "SELECT 1 FROM campaigns WHERE id = ? AND state = 'cancelled' AND NOT EXISTS "
            "(SELECT 1 FROM deliveries d WHERE d.campaign_id = campaigns.id)",
            (campaign_id,),
        ).fetchone()
        return row is not None

    def revive(self, campaign_id: int, send_at: str | None = None) -> bool:
        """Schedule again (at `send_at`, else its old time) a campaign cancelled before it reached anyone: the same
        content to the same people may go out after all. True when it was one; any other campaign is left as is."""
        with self.store.transaction():
            if not self.never_began(campaign_id):
                return False
            self.conn.execute(
                "UPDATE campaigns SET state = 'scheduled', cancelled = NULL, finished = NULL, "
                "send_at = COALESCE(?, send_at) WHERE id = ?",
                (send_at, campaign_id),
            )
        return True

    def due(self, now: str) -> list[Campaign]:
        """Scheduled campaigns whose time has come, earliest first."""
        return self._all("state = 'scheduled' AND send_at <= ? ORDER BY send_at, id", (now,))

    def interrupted(self) -> list[Campaign]:
        """Campaigns that were scheduled, began, and still have recipients queued or in doubt (a runner stopped
        or killed while sending them): the runner resumes them."""
        return self._all(
            "state = 'sending' AND send_at IS NOT NULL AND is_test = 0 AND EXISTS (SELECT 1 FROM deliveries d "
            f"WHERE d.campaign_id = campaigns.id AND d.status IN {_LIVE}) ORDER BY id",
            (),
        )

    def retries_due(self, now: str) -> list[Campaign]:
        """Campaigns (not paused or cancelled) with deferred recipients whose backoff has passed."""
        return self._all(
            "state IN ('sending', 'finished') AND is_test = 0 AND EXISTS (SELECT 1 FROM deliveries d WHERE "
            "d.campaign_id = campaigns.id AND d.status = 'deferred' AND d.next_attempt <= ?) ORDER BY id",
            (now,),
        )

    def _all(self, condition: str, args: tuple[Any, ...]) -> list[Campaign]:
        return [
            _campaign(row) for row in self.store.db.query(f"SELECT {_COLUMNS} FROM campaigns WHERE {condition}", args)
        ]
