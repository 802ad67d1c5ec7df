"""A list's archive: the web editions of the campaigns that reached someone, newest first (the same content once),
and one of them by its archive slug. A test send, a cancelled campaign or one that nobody received yet is never in
it.

Reads only; campaigns.py writes the web edition when it creates a campaign."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mailer.store.connection import Repository

# What makes a campaign part of a list's archive: for that list (?1), a real send, not cancelled, with a web edition,
# received by someone (a sent or later bounced delivery).


def on_list(alias: str, param: str = "?1") -> str:
    """SQL: the campaign `alias` was for the list `param`, its first or another of its audience (the audience key
    starts with the sorted list ids: `1,2|where`), so a reader of any of them finds it in their list's archive."""
    ids = f"substr({alias}.audience_key, 1, instr({alias}.audience_key, '|') - 1)"
    return f"({alias}.list_id = {param} OR instr(',' || {ids} || ',', ',' || {param} || ',') > 0)"


_ARCHIVED = (
    on_list("c") + " AND c.is_test = 0 AND c.state <> 'cancelled' AND c.web_edition IS NOT NULL "
    "AND c.archive_slug IS NOT NULL"
)
_SENT = "SELECT MIN(COALESCE(d.first_attempt, d.updated)) FROM deliveries d WHERE d.campaign_id = c.id " + (
    "AND d.status IN ('sent', 'bounced')"
)
# The archive lists issues, not campaigns: the same content sent again to a segment of the list (or to another
# audience that starts with it) is listed once, as its first archived campaign. The later one's page still opens
# by its slug, since its readers' "view in browser" links point at it.
_FIRST = (
    " AND NOT EXISTS (SELECT 1 FROM campaigns e WHERE " + on_list("e") + " AND e.content_hash = c.content_hash "
    "AND e.id < c.id AND e.is_test = 0 AND e.state <> 'cancelled' AND e.web_edition IS NOT NULL "
    "AND e.archive_slug IS NOT NULL AND EXISTS (SELECT 1 FROM deliveries d WHERE d.campaign_id = e.id "
    "AND d.status IN ('sent', 'bounced')))"
)


@dataclass(frozen=True)
class ArchivedIssue:
    campaign_id: int
    slug: str
    subject: str
    preheader: str
    issue_number: str  # the front matter's `issue` (第12期), may be ""
    date: str  # the front matter's `date` as the editor wrote it, may be ""
    sent: str  # when its first message went out (RFC 3339, UTC)
    list_id: int = 0  # its campaign's first list: the one whose sign-up link the web edition carries


class Archive(Repository):
    def _issues(self, where: str, args: tuple[object, ...]) -> list[ArchivedIssue]:
        rows = self.conn.execute(
            f"SELECT * FROM (SELECT c.id, c.archive_slug, c.subject, "
            "json_extract(c.rendered, '$.preheader'), json_extract(c.rendered, '$.meta.issue'), "
            f"json_extract(c.rendered, '$.meta.date'), ({_SENT}) AS sent, c.list_id FROM campaigns c "
            f"WHERE {_ARCHIVED}{where}) "
            "WHERE sent IS NOT NULL ORDER BY sent DESC, id DESC",
            args,
        ).fetchall()
        return [
            ArchivedIssue(
                int(cid), str(slug), str(subject), str(pre or ""), str(num or ""), str(date or ""), str(sent), int(lid)
            )
            for cid, slug, subject, pre, num, date, sent, lid in rows
        ]

    def issues(self, list_id: int) -> list[ArchivedIssue]:
        """The list's archived issues, newest first, each content once (a few hundred rows of a few fields: no page
        bodies): what the index and the feed show."""
        return self._issues(_FIRST, (list_id,))

    def pages(self, list_id: int) -> list[ArchivedIssue]:
        """Every archived campaign of the list, an issue sent again included: the pages a static archive holds, so
        every "view in browser" link opens."""
        return self._issues("", (list_id,))

    def issue(self, list_id: int, slug: str) -> tuple[ArchivedIssue, str] | None:
        """One archived issue and its web edition (HTML), by its archive slug."""
        found = self._issues(" AND c.archive_slug = ?2", (list_id, slug))
        if not found:
            return None
        (html,) = self.conn.execute(
            "SELECT web_edition FROM campaigns WHERE id = ?", (found[0].campaign_id,)
        ).fetchone()
        return found[0], str(html)

    def images(self, campaign_id: int) -> list[dict[str, str]]:
        """The images embedded in a campaign's messages (cid, filename, content_type, data in base64)."""
        (rendered,) = self.conn.execute("SELECT rendered FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        images: list[dict[str, str]] = json.loads(rendered).get("images", [])
        return images
