"""Sign-up requests from the web form: how many were made and mailed (rate limits), and the name each asked for,
which waits with its request until the mailbox owner confirms that very request.

Must not change a subscriber (lists.py does, when a request is confirmed)."""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

from mailer.store.connection import Repository


class Signups(Repository):
    def counts(self, email: str, client: str, since: str) -> tuple[int, int]:
        """(confirmation mails sent to `email`, requests made from `client`) since a time."""
        return request_counts(self.conn, "signup_requests", email, client, since)

    def last_mailed(self, email: str, list_id: int | None = None) -> str | None:
        """When a confirmation mail last went to `email` (for one list, or any)."""
        sql = "SELECT MAX(at) FROM signup_requests WHERE email = ? AND mailed = 1"
        args: list[Any] = [email]
        if list_id is not None:
            sql += " AND list_id = ?"
            args.append(list_id)
        (at,) = self.conn.execute(sql, args).fetchone()
        return str(at) if at is not None else None

    def log(self, list_id: int, email: str, client: str, mailed: bool, at: str | None = None, name: str = "") -> int:
        """Record one sign-up request (with the name it asks for); returns its id."""
        cur = self.conn.execute(
            "INSERT INTO signup_requests (list_id, email, client, mailed, at, name) VALUES (?, ?, ?, ?, ?, ?)",
            (list_id, email, client, int(mailed), at or self.store.now(), name),
        )
        return int(cur.lastrowid or 0)

    def requested_name(self, request_id: int, list_id: int, email: str) -> str | None:
        """The name a mailed sign-up request of `email` to this list asked for; None when there is no such request."""
        row = self.conn.execute(
            "SELECT name FROM signup_requests WHERE id = ? AND list_id = ? AND email = ? AND mailed = 1",
            (request_id, list_id, email),
        ).fetchone()
        if row is None:
            return None
        (name,) = row
        return str(name)

    def forget_last_mail(self, email: str) -> None:
        """The latest confirmation mail to `email` could not be sent: it does not count against the address."""
        forget_last_mail(self.conn, "signup_requests", email)


# Requests that mail someone (sign-ups here, "send me my link" in people.py) are limited the same way.
RequestTable = Literal["signup_requests", "link_requests"]


def request_counts(
    conn: sqlite3.Connection, table: RequestTable, email: str, client: str, since: str
) -> tuple[int, int]:
    """(mails sent to `email`, requests made from `client`) since a time, in one table of requests."""
    (mailed,) = conn.execute(
        f"SELECT COUNT(*) FROM {table} WHERE email = ? AND mailed = 1 AND at >= ?", (email, since)
    ).fetchone()
    (asked,) = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE client = ? AND at >= ?", (client, since)).fetchone()
    return int(mailed), int(asked)


def forget_last_mail(conn: sqlite3.Connection, table: RequestTable, email: str) -> None:
    """The latest mail a request sent `email` could not be sent: it does not count against the address."""
    conn.execute(f"UPDATE {table} SET mailed = 0 WHERE id = (SELECT MAX(id) FROM {table} WHERE email = ?)", (email,))
