"""A person across lists, as their preferences page sees them: every subscription of one address, the language
they prefer, the moment before which their preferences links stop working, joins made from that page, and the
"send me my link" requests (their rate limits).

Must not decide what a change means (preferences.py does); a subscription's status moves through lists.py."""

from __future__ import annotations

from dataclasses import dataclass

from mailer.models import MailingList, Subscriber
from mailer.store.connection import Repository
from mailer.store.lists import _LIST_COLUMNS, _SUBSCRIBER_COLUMNS, _list, _subscriber
from mailer.store.signups import forget_last_mail, request_counts


@dataclass(frozen=True)
class Person:
    email: str
    lang: str = ""  # "" : each list's own language
    links_valid_from: int = 0  # Unix seconds: a preferences link made before this no longer works


class People(Repository):
    def get(self, email: str) -> Person:
        row = self.conn.execute("SELECT lang, links_valid_from FROM people WHERE email = ?", (email,)).fetchone()
        return Person(email) if row is None else Person(email, str(row[0]), int(row[1]))

    def _upsert(self, email: str, column: str, value: str | int) -> None:
        self.conn.execute(
            f"INSERT INTO people (email, {column}, updated) VALUES (?, ?, ?) "
            f"ON CONFLICT (email) DO UPDATE SET {column} = excluded.{column}, updated = excluded.updated",
            (email, value, self.store.now()),
        )

    def set_lang(self, email: str, lang: str) -> None:
        self._upsert(email, "lang", lang)

    def rotate_links(self, email: str, valid_from: int) -> None:
        """Every preferences link of this address made before `valid_from` stops working."""
        self._upsert(email, "links_valid_from", valid_from)

    def subscriptions(self, email: str) -> list[tuple[MailingList, Subscriber | None]]:
        """Every list with this address's subscription to it (None where it has none), in list order."""
        by_list = {
            sub.list_id: sub
            for sub in (
                _subscriber(*row)
                for row in self.conn.execute(
                    f"SELECT {_SUBSCRIBER_COLUMNS} FROM subscribers WHERE email = ? ORDER BY id", (email,)
                )
            )
        }
        lists = [_list(row) for row in self.store.db.query(f"SELECT {_LIST_COLUMNS} FROM lists ORDER BY id")]
        return [(mailing_list, by_list.get(mailing_list.id)) for mailing_list in lists]

    def join(self, list_id: int, email: str, name: str, source: str) -> bool:
        """Subscribe the address to a list, confirmed (the caller proved the mailbox): a new subscription, or one
        that is pending or unsubscribed becomes active; bounced ones stay (ops lift a suppression). The join is
        recorded with its source. True if anything changed."""
        now = self.store.now()
        with self.store.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO subscribers (list_id, email, name, attrs, status, source, created, updated) "
                "VALUES (?, ?, ?, '{}', 'pending', ?, ?, ?)",
                (list_id, email, name, source, now, now),
            )
            row = self.conn.execute(
                "UPDATE subscribers SET status = 'active', confirmed = ?, updated = ? "
                "WHERE list_id = ? AND email = ? AND status IN ('pending', 'unsubscribed') RETURNING id",
                (now, now, list_id, email),
            ).fetchone()
            if row is None:
                return False
            self.conn.execute(
                "INSERT INTO joins (subscriber_id, source, at) VALUES (?, ?, ?)", (int(row[0]), source, now)
            )
        return True

    def rename(self, email: str, name: str) -> None:
        """The name every list calls this address."""
        self.conn.execute(
            "UPDATE subscribers SET name = ?, updated = ? WHERE email = ? AND name <> ?",
            (name, self.store.now(), email, name),
        )

    # ---- "send me my link" -------------------------------------------------------------------------------------

    def link_counts(self, email: str, client: str, since: str) -> tuple[int, int]:
        """(link mails sent to `email`, requests made from `client`) since a time."""
        return request_counts(self.conn, "link_requests", email, client, since)

    def last_link_mail(self, email: str) -> str | None:
        (at,) = self.conn.execute(
            "SELECT MAX(at) FROM link_requests WHERE email = ? AND mailed = 1", (email,)
        ).fetchone()
        return str(at) if at is not None else None

    def log_link_request(self, email: str, client: str, mailed: bool, at: str) -> None:
        self.conn.execute(
            "INSERT INTO link_requests (email, client, mailed, at) VALUES (?, ?, ?, ?)",
            (email, client, int(mailed), at),
        )

    def forget_last_link_mail(self, email: str) -> None:
        """The latest link mail could not be sent: it does not count against the address."""
        forget_last_mail(self.conn, "link_requests", email)
