"""Everything SQLite, through sqlite-utils: schema and migrations in one place, lists, subscribers, suppressions,
campaigns, deliveries and their status history.

The only module that imports sqlite-utils. Returns models, never prints; every multi-row change is one transaction."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from mailer.errors import CampaignBusy, MailerError, NotFoundError, UsageError
from mailer.models import Campaign, DeliveryStatus, MailingList, Recipient, Subscriber, SubscriberStatus

SCHEMA_VERSION = 6
CHUNK = 500  # recipients read per query: memory stays flat however long the list
Partition = tuple[int, int]  # (k, n): the deliveries whose id % n == k, one worker process's share

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lists (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL DEFAULT '',
    from_addr TEXT NOT NULL DEFAULT '',
    reply_to TEXT NOT NULL DEFAULT '',
    lang TEXT NOT NULL DEFAULT 'zh',
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS subscribers (
    id INTEGER PRIMARY KEY,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    attrs TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    UNIQUE (list_id, email)
);
CREATE INDEX IF NOT EXISTS subscribers_status ON subscribers (list_id, status, id);
CREATE TABLE IF NOT EXISTS suppressions (
    email TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS unsubscribes (
    id INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id),
    source TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS campaigns (
    id INTEGER PRIMARY KEY,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    slug TEXT NOT NULL,
    subject TEXT NOT NULL,
    issue_path TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    rendered TEXT NOT NULL,
    salt TEXT NOT NULL,
    is_test INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    finished TEXT,
    lease_owner TEXT,
    lease_until TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
    subscriber_id INTEGER NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    attrs TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    smtp_code INTEGER,
    smtp_reply TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    queued TEXT NOT NULL,
    updated TEXT NOT NULL,
    next_attempt TEXT,
    UNIQUE (campaign_id, subscriber_id)
);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (campaign_id, status, id);
CREATE TABLE IF NOT EXISTS delivery_events (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    smtp_code INTEGER,
    smtp_reply TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_events_delivery ON delivery_events (delivery_id);
"""


# Each entry takes the schema from version N-1 to N; fresh databases get _SCHEMA and then every step.
_MIGRATIONS: dict[int, str] = {
    2: "ALTER TABLE deliveries ADD COLUMN first_attempt TEXT;",
    # Issue 5: sign-up requests (rate limits, double opt-in), returned mail (bounces, complaints, mailto
    # unsubscribes) read once each, and Message-ID lookups for DSNs that carry no VERP address.
    3: """
CREATE TABLE IF NOT EXISTS signup_requests (
    id INTEGER PRIMARY KEY,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    email TEXT NOT NULL,
    client TEXT NOT NULL,
    mailed INTEGER NOT NULL DEFAULT 0,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS signup_requests_email ON signup_requests (email, at);
CREATE INDEX IF NOT EXISTS signup_requests_client ON signup_requests (client, at);
CREATE TABLE IF NOT EXISTS returned_mail (
    id INTEGER PRIMARY KEY,
    report_key TEXT NOT NULL,
    email TEXT NOT NULL,
    kind TEXT NOT NULL,
    campaign_id INTEGER,
    delivery_id INTEGER,
    status TEXT NOT NULL DEFAULT '',
    diagnostic TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL,
    UNIQUE (report_key, email)
);
CREATE INDEX IF NOT EXISTS returned_mail_email ON returned_mail (email, kind);
CREATE INDEX IF NOT EXISTS deliveries_message_id ON deliveries (message_id);
ALTER TABLE subscribers ADD COLUMN confirmed TEXT;
""",
    # Addresses are compared in lower case from now on; a row whose lower-case twin exists is left as it was.
    4: """
UPDATE OR IGNORE subscribers SET email = lower(email) WHERE email <> lower(email);
UPDATE OR IGNORE suppressions SET email = lower(email) WHERE email <> lower(email);
UPDATE OR IGNORE returned_mail SET email = lower(email) WHERE email <> lower(email);
UPDATE signup_requests SET email = lower(email) WHERE email <> lower(email);
""",
    # The name typed into the sign-up form stays with its request until the mailbox owner confirms that request:
    # a stranger re-posting the form for someone's address must not change what later mail calls them.
    5: "ALTER TABLE signup_requests ADD COLUMN name TEXT NOT NULL DEFAULT '';",
    # Issue 11: a campaign is what is sent (list and content), not the issue's name: December's issue.md is not
    # November's. Campaigns can be cancelled.
    6: """
DROP INDEX IF EXISTS campaigns_issue;
CREATE INDEX IF NOT EXISTS campaigns_content ON campaigns (list_id, content_hash) WHERE is_test = 0;
CREATE INDEX IF NOT EXISTS campaigns_slug ON campaigns (list_id, slug);
ALTER TABLE campaigns ADD COLUMN cancelled TEXT;
""",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime | None = None) -> str:
    return (moment or utcnow()).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ImportReport:
    added: int
    updated: int
    kept_status: int
    errors: list[str]


@dataclass(frozen=True)
class Outcome:
    """What one SMTP attempt ended as, ready to be recorded."""

    delivery_id: int
    status: DeliveryStatus
    smtp_code: int | None = None
    smtp_reply: str = ""
    message_id: str = ""
    suppress: bool = False  # the reply says the mailbox does not exist: never mail the address again


class Store:
    """One SQLite database file. Open it with `Store.open(path)`; `init()` creates or migrates the schema."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.path = path

    @classmethod
    def open(cls, path: Path, *, must_exist: bool = True) -> Store:
        path = Path(path)
        if must_exist and not path.exists():
            raise MailerError(f"database {path} does not exist; run: mailer init (or pass --db)")
        try:
            if not must_exist and not path.exists():
                _create_private(path)
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            # The version is read before anything is written: a database of a newer mailer is left as it is.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise MailerError(f"database {path} was made by a newer mailer (schema {version}; this one knows "
                                  f"{SCHEMA_VERSION}): upgrade mailer to use it")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise MailerError(describe_database_error(path, exc)) from None
        except OSError as exc:
            raise MailerError(f"cannot create database {path}: {exc.strerror}") from None
        store = cls(conn, path)
        if must_exist and version < SCHEMA_VERSION:
            store.close()
            if version == 0:
                raise MailerError(f"database {path} is not initialised; run: mailer init")
            raise MailerError(f"database {path} is from an older mailer (schema {version}); run: mailer init to "
                              "migrate it")
        return store

    def close(self) -> None:
        self.conn.close()

    def init(self) -> bool:
        """Create or migrate the schema; returns True when something was created."""
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        steps = "".join(_MIGRATIONS[v] for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1))
        self.conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}{steps}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
        return version < SCHEMA_VERSION

    def transaction(self) -> sqlite3.Connection:
        return _Transaction(self.conn, self.path)  # type: ignore[return-value]

    # ---- lists -------------------------------------------------------------------------------------------------

    def create_list(self, name: str, title: str, from_addr: str, reply_to: str, lang: str) -> MailingList:
        if self.conn.execute("SELECT 1 FROM lists WHERE name = ?", (name,)).fetchone():
            raise MailerError(f"list {name!r} already exists")
        self.db["lists"].insert(
            {"name": name, "title": title, "from_addr": from_addr, "reply_to": reply_to, "lang": lang,
             "created": stamp()}
        )
        return self.get_list(name)

    def get_list(self, name: str) -> MailingList:
        row = self.conn.execute("SELECT * FROM lists WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = [r[0] for r in self.conn.execute("SELECT name FROM lists ORDER BY name")]
            hint = f" (lists: {', '.join(known)})" if known else " (create it with: mailer lists create NAME)"
            raise NotFoundError(f"no list named {name!r}{hint}")
        return _list(row)

    def get_list_by_id(self, list_id: int) -> MailingList:
        row = self.conn.execute("SELECT * FROM lists WHERE id = ?", (list_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no list with id {list_id}")
        return _list(row)

    def lists_with_counts(self) -> list[dict[str, Any]]:
        sql = """SELECT l.name, l.title, l.from_addr, l.lang, l.created,
                        SUM(s.status = 'active') AS active, COUNT(s.id) AS total
                 FROM lists l LEFT JOIN subscribers s ON s.list_id = l.id GROUP BY l.id ORDER BY l.name"""
        cols = ["name", "title", "from", "lang", "created", "active", "total"]
        return [dict(zip(cols, row, strict=True)) | {"active": row[5] or 0} for row in self.conn.execute(sql)]

    # ---- subscribers -------------------------------------------------------------------------------------------

    def upsert_subscribers(self, list_id: int, rows: Iterable[Subscriber], source: str,
                           ) -> tuple[int, int, int, int]:
        """Insert or update; never changes the status of someone unsubscribed or bounced. A new address that is
        suppressed joins as suppress_address would have left it (bounced, or unsubscribed after a complaint), not
        active. (added, updated, kept, suppressed)."""
        added = updated = kept = suppressed = 0
        now = stamp()
        with self.transaction():
            for sub in rows:
                existing = self.conn.execute(
                    "SELECT id, status FROM subscribers WHERE list_id = ? AND email = ?", (list_id, sub.email)
                ).fetchone()
                attrs = json.dumps(sub.attrs, ensure_ascii=False, sort_keys=True)
                if existing is None:
                    suppression = self.suppression(sub.email)
                    status = str(sub.status) if suppression is None else str(_suppressed_status(suppression[0]))
                    self.conn.execute(
                        "INSERT INTO subscribers (list_id, email, name, attrs, status, source, created, updated) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (list_id, sub.email, sub.name, attrs, status, source, now, now),
                    )
                    if suppression is None:
                        added += 1
                    else:
                        suppressed += 1
                else:
                    self.conn.execute(
                        "UPDATE subscribers SET name = ?, attrs = ?, updated = ? WHERE id = ?",
                        (sub.name, attrs, now, existing[0]),
                    )
                    if existing[1] in (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED):
                        kept += 1
                    else:
                        updated += 1
        return added, updated, kept, suppressed

    def iter_subscribers(self, list_id: int, status: str | None = None) -> Iterator[Subscriber]:
        last = 0
        while True:
            # With a status, subscribers_status (list_id, status, id) walks in id order. Without one, SQLite took the
            # (list_id, email) index and sorted the whole list again for every chunk of 500, work growing with the
            # square of the list (export of 100,000: 4.3 s, 1.25 s now). `+` keeps list_id off that index, so each
            # chunk walks the rowid on from `last`.
            column = "list_id" if status else "+list_id"
            sql = f"SELECT id, email, name, attrs, status FROM subscribers WHERE {column} = ? AND id > ?"
            args: list[Any] = [list_id, last]
            if status:
                sql += " AND status = ?"
                args.append(status)
            rows = self.conn.execute(sql + f" ORDER BY id LIMIT {CHUNK}", args).fetchall()
            if not rows:
                return
            for row in rows:
                yield Subscriber(id=row[0], email=row[1], name=row[2], attrs=json.loads(row[3]), status=row[4],
                                 list_id=list_id)
            last = rows[-1][0]

    def count_recipients(self, list_id: int) -> int:
        """How many a campaign snapshot of this list would hold: active and not suppressed."""
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM subscribers s WHERE s.list_id = ? AND s.status = 'active' "
            "AND s.email NOT IN (SELECT email FROM suppressions)", (list_id,),
        ).fetchone()[0])

    def attribute_counts(self, list_id: int, keys: Iterable[str] | None) -> dict[str, int]:
        """How many active subscribers of a list have each attribute (with a non-empty value); every attribute
        when `keys` is None."""
        rows = self.conn.execute(
            "SELECT j.key, COUNT(*) FROM subscribers s, json_each(s.attrs) j WHERE s.list_id = ? "
            "AND s.status = 'active' AND j.value <> '' GROUP BY j.key", (list_id,),
        ).fetchall()
        counts = {str(key): int(n) for key, n in rows}
        return counts if keys is None else {key: counts.get(key, 0) for key in keys}

    def get_subscriber(self, list_id: int, email: str) -> Subscriber:
        row = self.conn.execute(
            "SELECT id, email, name, attrs, status FROM subscribers WHERE list_id = ? AND email = ?",
            (list_id, email),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"{email} is not on this list")
        return Subscriber(id=row[0], email=row[1], name=row[2], attrs=json.loads(row[3]), status=row[4],
                          list_id=list_id)

    def remove_subscriber(self, list_id: int, email: str) -> None:
        sub = self.get_subscriber(list_id, email)
        with self.transaction():
            in_campaigns = self.conn.execute(
                "SELECT COUNT(*) FROM deliveries WHERE subscriber_id = ?", (sub.id,)
            ).fetchone()[0]
            if in_campaigns:
                # Delivery history keeps the row: mark it gone instead of deleting what the log refers to.
                self.conn.execute(
                    "UPDATE subscribers SET status = ?, updated = ? WHERE id = ?",
                    (SubscriberStatus.UNSUBSCRIBED, stamp(), sub.id),
                )
                self.conn.execute(
                    "INSERT INTO unsubscribes (subscriber_id, source, at) VALUES (?, 'removed', ?)", (sub.id, stamp())
                )
            else:
                self.conn.execute("DELETE FROM unsubscribes WHERE subscriber_id = ?", (sub.id,))
                self.conn.execute("DELETE FROM subscribers WHERE id = ?", (sub.id,))

    def unsubscribe(self, subscriber_id: int, source: str) -> bool:
        """Mark unsubscribed (idempotent); queued deliveries to them are skipped. True if it changed anything."""
        now = stamp()
        with self.transaction():
            row = self.conn.execute("SELECT status FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
            if row is None:
                raise NotFoundError("no such subscriber")
            if row[0] == SubscriberStatus.UNSUBSCRIBED:
                return False
            self.conn.execute(
                "UPDATE subscribers SET status = ?, updated = ? WHERE id = ?",
                (SubscriberStatus.UNSUBSCRIBED, now, subscriber_id),
            )
            self.conn.execute(
                "INSERT INTO unsubscribes (subscriber_id, source, at) VALUES (?, ?, ?)", (subscriber_id, source, now)
            )
        return True

    def suppress(self, email: str, reason: str, detail: str = "") -> None:
        with self.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO suppressions (email, reason, detail, created) VALUES (?, ?, ?, ?)",
                (email, reason, detail, stamp()),
            )

    def subscriber_by_id(self, subscriber_id: int) -> Subscriber:
        row = self.conn.execute(
            "SELECT id, email, name, attrs, status, list_id FROM subscribers WHERE id = ?", (subscriber_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError("no such subscriber")
        return Subscriber(id=row[0], email=row[1], name=row[2], attrs=json.loads(row[3]), status=row[4],
                          list_id=row[5])

    def subscriber_updated(self, subscriber_id: int) -> str:
        row = self.conn.execute("SELECT updated FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
        return str(row[0]) if row else ""

    def is_suppressed(self, email: str) -> bool:
        return self.conn.execute("SELECT 1 FROM suppressions WHERE email = ?", (email,)).fetchone() is not None

    def suppression(self, email: str) -> tuple[str, str] | None:
        row = self.conn.execute("SELECT reason, detail FROM suppressions WHERE email = ?", (email,)).fetchone()
        return (row[0], row[1]) if row else None

    def suppressions(self) -> list[dict[str, Any]]:
        cols = ["email", "reason", "detail", "created"]
        return [dict(zip(cols, row, strict=True)) for row in self.conn.execute(
            "SELECT email, reason, detail, created FROM suppressions ORDER BY created, email")]

    def unsuppress(self, email: str) -> None:
        """Lift a suppression (ops judged the address good again): its bounced subscriptions become active."""
        with self.transaction():
            if not self.conn.execute("DELETE FROM suppressions WHERE email = ?", (email,)).rowcount:
                raise NotFoundError(f"{email} is not suppressed (see: mailer suppressions ls)")
            self.conn.execute(
                "UPDATE subscribers SET status = 'active', updated = ? WHERE email = ? AND status = 'bounced'",
                (stamp(), email),
            )

    # ---- sign-up (double opt-in) ---------------------------------------------------------------------------------

    def signup_counts(self, email: str, client: str, since: str) -> tuple[int, int]:
        """(confirmation mails sent to `email`, requests made from `client`) since a time."""
        mailed = self.conn.execute(
            "SELECT COUNT(*) FROM signup_requests WHERE email = ? AND mailed = 1 AND at >= ?", (email, since)
        ).fetchone()[0]
        asked = self.conn.execute(
            "SELECT COUNT(*) FROM signup_requests WHERE client = ? AND at >= ?", (client, since)
        ).fetchone()[0]
        return int(mailed), int(asked)

    def last_confirmation_mail(self, email: str, list_id: int | None = None) -> str | None:
        """When a confirmation mail last went to `email` (for one list, or any)."""
        sql = "SELECT MAX(at) FROM signup_requests WHERE email = ? AND mailed = 1"
        args: list[Any] = [email]
        if list_id is not None:
            sql += " AND list_id = ?"
            args.append(list_id)
        row = self.conn.execute(sql, args).fetchone()
        return row[0] if row else None

    def log_signup(self, list_id: int, email: str, client: str, mailed: bool, at: str | None = None,
                   name: str = "") -> int:
        """Record one sign-up request (with the name it asks for); returns its id."""
        cur = self.conn.execute(
            "INSERT INTO signup_requests (list_id, email, client, mailed, at, name) VALUES (?, ?, ?, ?, ?, ?)",
            (list_id, email, client, int(mailed), at or stamp(), name),
        )
        return int(cur.lastrowid or 0)

    def signup_request_name(self, request_id: int, list_id: int, email: str) -> str | None:
        """The name a mailed sign-up request of `email` to this list asked for; None when there is no such request."""
        row = self.conn.execute(
            "SELECT name FROM signup_requests WHERE id = ? AND list_id = ? AND email = ? AND mailed = 1",
            (request_id, list_id, email),
        ).fetchone()
        return str(row[0]) if row else None

    def forget_confirmation_mail(self, email: str) -> None:
        """The latest confirmation mail to `email` could not be sent: it does not count against the address."""
        self.conn.execute(
            "UPDATE signup_requests SET mailed = 0 WHERE id = (SELECT MAX(id) FROM signup_requests WHERE email = ?)",
            (email,),
        )

    def upsert_pending(self, list_id: int, email: str) -> Subscriber:
        """A web sign-up: a new address becomes pending (nameless: the name waits with the request for the
        confirmation); anyone already known keeps their status and name (someone who unsubscribed stays so until
        they confirm: a stranger typing their address changes nothing)."""
        now = stamp()
        self.conn.execute(
            "INSERT OR IGNORE INTO subscribers (list_id, email, name, attrs, status, source, created, updated) "
            "VALUES (?, ?, '', '{}', 'pending', 'web', ?, ?)", (list_id, email, now, now),
        )
        return self.get_subscriber(list_id, email)

    def confirm_subscriber(self, subscriber_id: int, name: str = "") -> bool:
        """pending or unsubscribed -> active (double opt-in done), taking the confirmed request's name unless it is
        blank; True if it changed anything."""
        now = stamp()
        cur = self.conn.execute(
            "UPDATE subscribers SET status = 'active', confirmed = ?, updated = ?, "
            "name = CASE WHEN ? = '' THEN name ELSE ? END WHERE id = ? AND status IN ('pending', 'unsubscribed')",
            (now, now, name, name, subscriber_id),
        )
        return cur.rowcount > 0

    def unsubscribe_source(self, subscriber_id: int) -> tuple[str, str] | None:
        """(source, time) of the latest unsubscribe of a subscriber."""
        row = self.conn.execute(
            "SELECT source, at FROM unsubscribes WHERE subscriber_id = ? ORDER BY id DESC LIMIT 1", (subscriber_id,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    # ---- returned mail: bounces, complaints, mailto unsubscribes -------------------------------------------------

    def delivery_ref(self, delivery_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT id, campaign_id, subscriber_id, email, status, message_id FROM deliveries WHERE id = ?",
            (delivery_id,),
        ).fetchone()
        return _delivery_ref(row)

    def delivery_by_message_id(self, message_id: str) -> dict[str, Any] | None:
        """The delivery whose message went out with this Message-ID. Only an attempted delivery qualifies:
        mark_sending sets the Message-ID and counts the attempt in one transaction, so `attempts > 0` is what says a
        message with that ID was handed to the relay (sent, bounced, deferred or in doubt). A delivery still queued
        for its first attempt has no mail anywhere to bounce, and a blank ID names nothing."""
        if not message_id.strip():
            return None
        row = self.conn.execute(
            "SELECT id, campaign_id, subscriber_id, email, status, message_id FROM deliveries WHERE message_id = ? "
            "AND attempts > 0 ORDER BY id DESC LIMIT 1", (message_id,),
        ).fetchone()
        return _delivery_ref(row)

    def record_returned(
        self, report_key: str, email: str, kind: str, campaign_id: int | None, delivery_id: int | None,
        status: str, diagnostic: str, origin: str,
    ) -> bool:
        """Remember one report about one address; False when this report was read before (it counts once)."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO returned_mail (report_key, email, kind, campaign_id, delivery_id, status, "
            "diagnostic, origin, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (report_key, email, kind, campaign_id, delivery_id, status, diagnostic, origin, stamp()),
        )
        return cur.rowcount > 0

    def soft_bounce_count(self, email: str) -> int:
        """Distinct deliveries (or reports, when unmatched to one) that soft-bounced for this address."""
        return int(self.conn.execute(
            "SELECT COUNT(DISTINCT COALESCE(delivery_id, report_key)) FROM returned_mail "
            "WHERE email = ? AND kind = 'soft'", (email,),
        ).fetchone()[0])

    def mark_bounced(self, delivery_id: int, code: str, text: str) -> None:
        """The delivery ends `bounced`, with the DSN's status and diagnostic recorded as an event."""
        now = stamp()
        with self.transaction():
            # The log shows the receiver's reply from the DSN (e.g. 550), not the 250 our relay gave at send time.
            reply_code = re.search(r"\b([45]\d\d)\b", text)
            smtp_code = int(reply_code.group(1)) if reply_code else None
            self.conn.execute(
                "UPDATE deliveries SET status = 'bounced', smtp_code = ?, smtp_reply = ?, updated = ?, "
                "next_attempt = NULL WHERE id = ?", (smtp_code, f"{code} {text}".strip(), now, delivery_id),
            )
            self.conn.execute(
                "INSERT INTO delivery_events (delivery_id, status, attempt, smtp_code, smtp_reply, at) "
                "SELECT id, 'bounced', attempts, ?, ?, ? FROM deliveries WHERE id = ?",
                (smtp_code, f"{code} {text}".strip(), now, delivery_id),
            )

    def suppress_address(self, email: str, reason: str, detail: str = "") -> None:
        """Never mail this address again, on any list: suppressed, and its subscriptions marked so `subs ls` shows
        why (bounced for a failing mailbox, unsubscribed for a complaint: the person said no)."""
        status = _suppressed_status(reason)
        now = stamp()
        with self.transaction():
            self.suppress(email, reason, detail)
            ids = [row[0] for row in self.conn.execute(
                "SELECT id FROM subscribers WHERE email = ? AND status IN ('active', 'pending')", (email,))]
            for subscriber_id in ids:
                self.conn.execute("UPDATE subscribers SET status = ?, updated = ? WHERE id = ?",
                                  (str(status), now, subscriber_id))
                if status == SubscriberStatus.UNSUBSCRIBED:
                    self.conn.execute("INSERT INTO unsubscribes (subscriber_id, source, at) VALUES (?, ?, ?)",
                                      (subscriber_id, "complaint", now))

    # ---- campaigns ---------------------------------------------------------------------------------------------

    def find_campaign(self, list_id: int, content_hash: str) -> Campaign | None:
        """The campaign that sends this content to this list: what is sent names a campaign, not the issue's
        file name (the latest one, should a database from before schema 5 hold two)."""
        row = self.conn.execute(
            "SELECT * FROM campaigns WHERE list_id = ? AND content_hash = ? AND is_test = 0 ORDER BY id DESC LIMIT 1",
            (list_id, content_hash),
        ).fetchone()
        return _campaign(row, self.conn) if row else None

    def unfinished_campaign(self, list_id: int, slug: str, issue_path: str, content_hash: str) -> Campaign | None:
        """A campaign of the same issue (name or file) with other content that still has recipients to send."""
        rows = self.conn.execute(
            "SELECT * FROM campaigns c WHERE list_id = ? AND is_test = 0 AND cancelled IS NULL AND content_hash <> ? "
            "AND (slug = ? OR issue_path = ?) AND EXISTS (SELECT 1 FROM deliveries d WHERE d.campaign_id = c.id "
            "AND d.status IN ('queued', 'sending', 'deferred')) ORDER BY id",
            (list_id, content_hash, slug, issue_path),
        ).fetchall()
        return _campaign(rows[0], self.conn) if rows else None

    def check_new_content(self, list_id: int, slug: str, issue_path: str, content_hash: str) -> None:
        """Refuse new content under the name or file of a campaign that is not finished: that campaign would
        otherwise be resumed with content the editor no longer sees, or mixed with the new one."""
        if self.find_campaign(list_id, content_hash) is not None:
            return
        unfinished = self.unfinished_campaign(list_id, slug, issue_path, content_hash)
        if unfinished is not None:
            raise MailerError(
                f"{issue_path} is not what campaign {unfinished.id} sends to this list ({unfinished.issue_path}, "
                f"issue '{unfinished.slug}', other content), and that campaign is not finished "
                f"({self.waiting(unfinished.id)} recipient(s) still to send): finish it as it was snapshotted with "
                f"'mailer retry {unfinished.id}', or cancel it with 'mailer campaigns cancel {unfinished.id}' and "
                "send again (a new campaign mails the whole list)")

    def get_campaign(self, ref: str | int) -> Campaign:
        row = None
        if str(ref).isascii() and str(ref).isdigit() and int(ref) < 2**63:  # '²' is a digit; SQLite ids are 64-bit
            row = self.conn.execute("SELECT * FROM campaigns WHERE id = ?", (int(ref),)).fetchone()
        if row is None:
            rows = self.conn.execute("SELECT * FROM campaigns WHERE slug = ? AND is_test = 0", (str(ref),)).fetchall()
            if len(rows) > 1:
                raise UsageError(f"{ref!r} names {len(rows)} campaigns; use the id from: mailer campaigns ls")
            row = rows[0] if rows else None
        if row is None:
            raise NotFoundError(f"no campaign {ref!r} (see: mailer campaigns ls)")
        return _campaign(row, self.conn)

    def campaign_rendered(self, campaign_id: int) -> tuple[dict[str, Any], str]:
        row = self.conn.execute("SELECT rendered, salt FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        return json.loads(row[0]), row[1]

    def create_campaign(
        self, list_id: int, slug: str, subject: str, issue_path: str, content_hash: str,
        rendered: dict[str, Any], salt: str, *, is_test: bool = False,
        test_recipient: Subscriber | None = None,
    ) -> Campaign:
        """Write the campaign and its recipient snapshot (active, not suppressed) in one transaction.

        For a real send, the campaign of this content and list is returned if it exists (another process may have
        created it first: the check and the insert share one write transaction, so two senders never make two);
        see check_new_content for what is refused."""
        now = stamp()
        with self.transaction():
            if not is_test:
                existing = self.find_campaign(list_id, content_hash)
                if existing is not None:
                    return existing
                self.check_new_content(list_id, slug, issue_path, content_hash)
            cur = self.conn.execute(
                "INSERT INTO campaigns (list_id, slug, subject, issue_path, content_hash, rendered, salt, is_test, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (list_id, slug, subject, issue_path, content_hash, json.dumps(rendered, ensure_ascii=False), salt,
                 int(is_test), now),
            )
            campaign_id = int(cur.lastrowid or 0)
            if test_recipient is not None:
                self.conn.execute(
                    "INSERT INTO deliveries (campaign_id, subscriber_id, email, name, attrs, status, queued, updated) "
                    "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (campaign_id, test_recipient.id, test_recipient.email, test_recipient.name,
                     json.dumps(test_recipient.attrs, ensure_ascii=False), now, now),
                )
            else:
                self.conn.execute(
                    "INSERT INTO deliveries (campaign_id, subscriber_id, email, name, attrs, status, queued, updated) "
                    "SELECT ?, s.id, s.email, s.name, s.attrs, 'queued', ?, ? FROM subscribers s "
                    "WHERE s.list_id = ? AND s.status = 'active' "
                    "AND s.email NOT IN (SELECT email FROM suppressions) ORDER BY s.id",
                    (campaign_id, now, now, list_id),
                )
        return self.get_campaign(campaign_id)

    def campaigns_with_counts(self, include_tests: bool = False) -> list[dict[str, Any]]:
        where = "" if include_tests else "WHERE c.is_test = 0"
        rows = self.conn.execute(
            f"SELECT c.id, c.slug, l.name, c.subject, c.created, c.finished, c.is_test, c.issue_path, c.cancelled "
            f"FROM campaigns c JOIN lists l ON l.id = c.list_id {where} ORDER BY c.id"
        ).fetchall()
        out = []
        for row in rows:
            out.append({
                "id": row[0], "issue": row[1], "list": row[2], "subject": row[3], "created": row[4],
                "finished": row[5], "test": bool(row[6]), "issue_path": row[7], "cancelled": row[8],
                "counts": self.counts(row[0]),
            })
        return out

    def counts(self, campaign_id: int) -> dict[str, int]:
        return {
            status: n for status, n in self.conn.execute(
                "SELECT status, COUNT(*) FROM deliveries WHERE campaign_id = ? GROUP BY status", (campaign_id,)
            )
        }

    def waiting(self, campaign_id: int) -> int:
        """Recipients of a campaign still to be sent (queued, deferred, or caught in `sending` by a crash)."""
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND status IN ('queued', 'sending', 'deferred')",
            (campaign_id,),
        ).fetchone()[0])

    def finish_campaign(self, campaign_id: int) -> None:
        with self.transaction():
            self.conn.execute("UPDATE campaigns SET finished = ? WHERE id = ?", (stamp(), campaign_id))

    def cancel_campaign(self, campaign_id: int) -> int:
        """Stop a campaign for good: its recipients still to send become `skipped`; returns how many.

        Refused while a sender holds the campaign (CampaignBusy): that run would go on with its in-flight
        messages, and it is the one that knows how they ended."""
        now = stamp()
        self._check_holder_now(campaign_id, lease_owner())
        with self.transaction():
            row = self.conn.execute(
                "SELECT lease_owner, lease_until, cancelled FROM campaigns WHERE id = ?", (campaign_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no campaign {campaign_id} (see: mailer campaigns ls)")
            if row[2]:
                raise MailerError(f"campaign {campaign_id} was already cancelled at {row[2]}")
            _check_holder(campaign_id, row[0], row[1], lease_owner())
            self.conn.execute(
                "UPDATE campaigns SET cancelled = ?, finished = COALESCE(finished, ?), lease_owner = NULL, "
                "lease_until = NULL WHERE id = ?", (now, now, campaign_id),
            )
            skipped = 0
            for status, reply in (("queued", "campaign cancelled"), ("deferred", "campaign cancelled"),
                                  ("sending", "campaign cancelled; an interrupted run may have sent it")):
                skipped += self._move(campaign_id, status, "skipped", reply, now)
        return skipped

    def _move(self, campaign_id: int, old: str, new: str, reply: str, now: str, extra: str = "") -> int:
        """Every delivery of a campaign in status `old` (and matching `extra` SQL) to `new`, each with an event."""
        where = f"campaign_id = ? AND status = ?{extra}"
        self.conn.execute(
            "INSERT INTO delivery_events (delivery_id, status, attempt, smtp_reply, at) "
            f"SELECT id, ?, attempts, ?, ? FROM deliveries WHERE {where}", (new, reply, now, campaign_id, old),
        )
        return int(self.conn.execute(
            f"UPDATE deliveries SET status = ?, smtp_reply = ?, updated = ?, next_attempt = NULL WHERE {where}",
            (new, reply, now, campaign_id, old),
        ).rowcount)

    # ---- leases: one sender per campaign -----------------------------------------------------------------------

    def acquire_lease(self, campaign_id: int, seconds: float = 60.0) -> str:
        """Take the campaign for this process for `seconds` (renewed while it sends), or raise CampaignBusy.

        The owner is `host:pid:start time`, so a holder on this host is known to be alive or not, whatever its
        lease says: a live one keeps the campaign even past `lease_until` (a process stopped by kill -STOP, Ctrl-Z
        or a paused VM must not find a second sender at work when it continues), a dead one (or its pid reused)
        loses it at once. A holder on another host is known only by its renewals and loses the campaign once its
        lease has expired; it then stops before its next message, as every `sending` mark checks the lease in
        the same transaction (`lease_holder`)."""
        owner = lease_owner()
        now = utcnow()
        self._check_holder_now(campaign_id, owner)
        with self.transaction():
            row = self.conn.execute(
                "SELECT lease_owner, lease_until FROM campaigns WHERE id = ?", (campaign_id,)
            ).fetchone()
            if row:
                _check_holder(campaign_id, row[0], row[1], owner)
            self.conn.execute(
                "UPDATE campaigns SET lease_owner = ?, lease_until = ? WHERE id = ?",
                (owner, stamp(now + timedelta(seconds=seconds)), campaign_id),
            )
        return owner

    def _check_holder_now(self, campaign_id: int, owner: str) -> None:
        """The holder check before asking for the write lock (reads never wait in WAL mode): a holder stopped in
        the middle of a transaction keeps SQLite's write lock, and the second sender would wait 30 s only to
        say "database is locked" instead of naming it."""
        row = self.conn.execute("SELECT lease_owner, lease_until FROM campaigns WHERE id = ?", (campaign_id,)
                                ).fetchone()
        if row:
            _check_holder(campaign_id, row[0], row[1], owner)

    def lease_holder(self, campaign_id: int) -> str | None:
        """Who holds the campaign; read inside the transaction that marks `sending`, so the answer holds for it."""
        row = self.conn.execute("SELECT lease_owner FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        return row[0] if row else None

    def renew_lease(self, campaign_id: int, owner: str, seconds: float = 60.0) -> bool:
        """Extend the lease; False when it changed no row: the campaign is no longer ours."""
        with self.transaction():
            return self.conn.execute(
                "UPDATE campaigns SET lease_until = ? WHERE id = ? AND lease_owner = ?",
                (stamp(utcnow() + timedelta(seconds=seconds)), campaign_id, owner),
            ).rowcount > 0

    def release_lease(self, campaign_id: int, owner: str) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE campaigns SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (campaign_id, owner),
            )

    # ---- deliveries ----------------------------------------------------------------------------------------------

    def requeue(self, campaign_id: int, statuses: Iterable[str]) -> int:
        """Put deliveries in `statuses` back to queued (their Message-ID is derived, so it stays the same)."""
        marks = ",".join("?" for _ in statuses)
        with self.transaction():
            cur = self.conn.execute(
                f"UPDATE deliveries SET status = 'queued', updated = ? WHERE campaign_id = ? AND status IN ({marks})",
                (stamp(), campaign_id, *statuses),
            )
        return cur.rowcount

    def next_retry(self, campaign_id: int, part: Partition = (0, 1)) -> str | None:
        """The earliest next_attempt among the campaign's deferred deliveries (of one partition)."""
        row = self.conn.execute(
            "SELECT MIN(next_attempt) FROM deliveries WHERE campaign_id = ? AND status = 'deferred' AND id % ? = ?",
            (campaign_id, part[1], part[0]),
        ).fetchone()
        return row[0] if row else None

    def requeue_due(self, campaign_id: int, now: str | None = None, part: Partition = (0, 1)) -> int:
        """deferred -> queued for the deliveries whose retry time has come (all of them when `now` is None)."""
        sql = ("UPDATE deliveries SET status = 'queued', updated = ? WHERE campaign_id = ? AND status = 'deferred' "
               "AND id % ? = ?")
        args: list[Any] = [stamp(), campaign_id, part[1], part[0]]
        if now is not None:
            sql += " AND (next_attempt IS NULL OR next_attempt <= ?)"
            args.append(now)
        with self.transaction():
            return self.conn.execute(sql, args).rowcount

    def count_due(self, campaign_id: int, now: str) -> int:
        """Deliveries a run would send now: queued, left in `sending`, or deferred with their retry time come."""
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE campaign_id = ? AND (status IN ('queued', 'sending') OR "
            "(status = 'deferred' AND (next_attempt IS NULL OR next_attempt <= ?)))", (campaign_id, now),
        ).fetchone()[0])

    def attempt_info(self, delivery_id: int) -> tuple[int, str | None]:
        """(attempts so far, time of the first attempt) of one delivery."""
        row = self.conn.execute(
            "SELECT attempts, first_attempt FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        return int(row[0]), row[1]

    def iter_queued(self, campaign_id: int, part: Partition = (0, 1)) -> Iterator[Recipient]:
        """Queued recipients in id order, read CHUNK at a time; `part` (k, n) keeps those with id % n == k."""
        last = 0
        while True:
            rows = self.conn.execute(
                "SELECT id, subscriber_id, email, name, attrs FROM deliveries WHERE campaign_id = ? "
                f"AND status = 'queued' AND id > ? AND id % ? = ? ORDER BY id LIMIT {CHUNK}",
                (campaign_id, last, part[1], part[0]),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield Recipient(row[0], row[1], row[2], row[3], json.loads(row[4]))
            last = rows[-1][0]

    def subscriber_active(self, subscriber_id: int) -> bool:
        row = self.conn.execute(
            "SELECT s.status, EXISTS (SELECT 1 FROM suppressions WHERE email = s.email) FROM subscribers s "
            "WHERE s.id = ?", (subscriber_id,),
        ).fetchone()
        return bool(row) and row[0] == SubscriberStatus.ACTIVE and not row[1]

    def mark_sending(self, delivery_id: int, message_id: str) -> int | None:
        """queued -> sending, committed before the message leaves; returns the attempt number, or None when the
        delivery is no longer queued (recorded or cancelled since it was read): then it must not be sent."""
        now = stamp()
        with self.transaction():
            row = self.conn.execute(
                "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, message_id = ?, updated = ?, "
                "first_attempt = COALESCE(first_attempt, ?) WHERE id = ? AND status = 'queued' RETURNING attempts",
                (message_id, now, now, delivery_id),
            ).fetchone()
            if row is None:
                return None
            self.conn.execute(
                "INSERT INTO delivery_events (delivery_id, status, attempt, at) VALUES (?, 'sending', ?, ?)",
                (delivery_id, row[0], now),
            )
        return int(row[0])

    def record(self, outcome: Outcome, next_attempt: str | None = None) -> None:
        now = stamp()
        with self.transaction():
            self.conn.execute(
                "UPDATE deliveries SET status = ?, smtp_code = ?, smtp_reply = ?, updated = ?, next_attempt = ?, "
                "message_id = CASE WHEN ? = '' THEN message_id ELSE ? END WHERE id = ?",
                (str(outcome.status), outcome.smtp_code, outcome.smtp_reply, now, next_attempt,
                 outcome.message_id, outcome.message_id, outcome.delivery_id),
            )
            self.conn.execute(
                "INSERT INTO delivery_events (delivery_id, status, attempt, smtp_code, smtp_reply, at) "
                "SELECT id, ?, attempts, ?, ?, ? FROM deliveries WHERE id = ?",
                (str(outcome.status), outcome.smtp_code, outcome.smtp_reply, now, outcome.delivery_id),
            )
            if outcome.suppress:
                email, detail = self._refusal(outcome.delivery_id)
                self.suppress_address(email, "bounced", detail)

    def _refusal(self, delivery_id: int) -> tuple[str, str]:
        """The address of a delivery refused at RCPT and the suppression detail that names the refusal (the same
        text both when suppressing and when a paused campaign takes the suppression back)."""
        email, campaign_id, code, reply = self.conn.execute(
            "SELECT email, campaign_id, smtp_code, smtp_reply FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        return email, f"campaign {campaign_id}: {code} {reply}"

    def requeue_failed(self, campaign_id: int) -> tuple[int, int]:
        """failed -> queued on purpose (`mailer retry --failed`), for people still active and not suppressed; the
        expiry clock starts again. Returns (requeued, left failed because the person is gone or suppressed)."""
        now = stamp()
        still_wanted = (" AND subscriber_id IN (SELECT s.id FROM subscribers s WHERE s.status = 'active' "
                        "AND s.email NOT IN (SELECT email FROM suppressions))")
        with self.transaction():
            self.conn.execute(
                f"UPDATE deliveries SET first_attempt = NULL WHERE campaign_id = ? AND status = 'failed'{still_wanted}",
                (campaign_id,),
            )
            requeued = self._move(campaign_id, "failed", "queued", "requeued by mailer retry --failed", now,
                                  still_wanted)
            left = self.counts(campaign_id).get("failed", 0)
        return requeued, left

    def requeue_refused(self, delivery_ids: Iterable[int], reason: str) -> int:
        """Failed deliveries back to queued when their refusals turned out to be the relay's, not the recipients':
        a suppression their RCPT reply made is taken back with them."""
        now = stamp()
        requeued = 0
        with self.transaction():
            for delivery_id in delivery_ids:
                email, detail = self._refusal(delivery_id)
                cur = self.conn.execute(
                    "UPDATE deliveries SET status = 'queued', smtp_reply = ?, updated = ?, next_attempt = NULL "
                    "WHERE id = ? AND status = 'failed'", (reason, now, delivery_id),
                )
                if not cur.rowcount:
                    continue
                requeued += 1
                self.conn.execute(
                    "INSERT INTO delivery_events (delivery_id, status, attempt, smtp_reply, at) "
                    "SELECT id, 'queued', attempts, ?, ? FROM deliveries WHERE id = ?", (reason, now, delivery_id),
                )
                if self.conn.execute("DELETE FROM suppressions WHERE email = ? AND reason = 'bounced' AND detail = ?",
                                     (email, detail)).rowcount:
                    self.conn.execute("UPDATE subscribers SET status = 'active', updated = ? WHERE email = ? "
                                      "AND status = 'bounced'", (now, email))
        return requeued

    def delivery_log(self, campaign_id: int, status: str | None = None) -> Iterator[dict[str, Any]]:
        sql = ("SELECT id, email, name, status, attempts, smtp_code, smtp_reply, message_id, queued, updated, "
               "next_attempt FROM deliveries WHERE campaign_id = ? AND id > ?")
        cols = ["id", "email", "name", "status", "attempts", "smtp_code", "smtp_reply", "message_id", "queued",
                "updated", "next_attempt"]
        last = 0
        while True:
            args: list[Any] = [campaign_id, last]
            extra = ""
            if status:
                extra = " AND status = ?"
                args.append(status)
            rows = self.conn.execute(sql + extra + f" ORDER BY id LIMIT {CHUNK}", args).fetchall()
            if not rows:
                return
            for row in rows:
                yield dict(zip(cols, row, strict=True))
            last = rows[-1][0]


def _create_private(path: Path) -> None:
    """An empty database file readable by its owner only: it holds every subscriber's address. SQLite gives the
    -wal and -shm files it makes beside it the same mode."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def describe_database_error(path: Path, exc: sqlite3.Error) -> str:
    """One line a person can act on for an SQLite failure on the database at `path`."""
    text = str(exc)
    folder = path.parent if str(path.parent) else Path(".")
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        if not folder.is_dir():
            return f"cannot open database {path}: folder {folder} does not exist"
        if not os.access(folder, os.W_OK):
            return (f"cannot use database {path}: its folder {folder} is not writable (SQLite keeps {path.name}-wal "
                    f"and {path.name}-shm beside it, even to read)")
        if path.exists() and not os.access(path, os.W_OK):
            return f"cannot use database {path}: the file is read-only (mailer writes to it, even to read: WAL)"
        return f"cannot open database {path}: {text}"
    if "not a database" in text:
        return f"{path} is not a mailer database ({text}); check --db / MAILER_DB"
    if "malformed" in text:
        return (f"database {path} is damaged ({text}); restore it from a backup, or try: "
                f"sqlite3 {path} .recover | sqlite3 recovered.db")
    if "disk is full" in text or "database or disk is full" in text:
        return f"database {path}: the disk is full; free some space and run the command again"
    return f"database {path}: {text}"


def _suppressed_status(reason: str) -> SubscriberStatus:
    """How a subscription of a suppressed address shows: unsubscribed after a complaint (the person said no),
    bounced otherwise (the mailbox fails)."""
    return SubscriberStatus.UNSUBSCRIBED if reason == "complained" else SubscriberStatus.BOUNCED


def lease_owner(pid: int | None = None) -> str:
    """`host:pid:start time` of a process (this one by default): the start time tells a reused pid apart."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_state(pid)[1]}"


def _process_state(pid: int) -> tuple[str, str]:
    """(state letter, start time in clock ticks since boot) of a process on this host from /proc/PID/stat;
    ("", "") where there is no /proc (the start time is then not compared), ("X", "") for no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        if not Path("/proc/self/stat").exists():
            return "", ""
        return "X", ""
    except OSError:
        return "", ""
    fields = raw.rpartition(")")[2].split()  # the command name in (...) may hold spaces and parentheses
    return (fields[0], fields[19]) if len(fields) > 19 else ("", "")


def holder_state(owner: str) -> str:
    """What a lease owner is now: 'remote' (another host: unknown), 'dead', 'stopped' or 'running'."""
    host, pid, start = [*owner.split(":"), ""][:3]
    if host != socket.gethostname() or not pid.isdigit():
        return "remote"
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "running"  # another user's process, alive; its /proc entry may be hidden from us (hidepid)
    state, started = _process_state(int(pid))
    if state in ("X", "Z", "x") or (start and started and started != start):
        return "dead"  # gone, a zombie, or the pid now belongs to another process
    return "stopped" if state in ("T", "t") else "running"


def _check_holder(campaign_id: int, holder: str | None, until: str | None, owner: str) -> None:
    """Raise CampaignBusy unless the campaign is free for `owner`: no holder, this very process, a holder on
    this host that is gone, or one on another host whose lease has expired."""
    if not holder or holder == owner:
        return
    state = holder_state(holder)
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if state == "running":
        raise CampaignBusy(f"campaign {campaign_id} is being sent by process {pid} on this host; wait for it to "
                           f"finish or stop it first (Ctrl-C, or kill {pid})")
    if state == "stopped":
        raise CampaignBusy(f"campaign {campaign_id} is held by process {pid}, which is stopped (kill -STOP or "
                           f"Ctrl-Z): let it go on with kill -CONT {pid}, or end it with kill {pid} and run this again")
    if state == "remote" and until and until > stamp():
        raise CampaignBusy(f"campaign {campaign_id} is being sent by process {pid} on {host} (lease until {until}); "
                           "wait for it to finish or stop it first")


class StoreWriteError(MailerError):
    """The database could not be written (disk full, I/O error): what the transaction held was not recorded."""


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, re-entrant (an inner block joins the outer one). A disk that is full or failing
    ends as StoreWriteError with everything of the transaction rolled back."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self.conn

    def __exit__(self, exc_type: object, exc: BaseException | None, _: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as error:
                exc = error
        # SQLite may have rolled back already (it does for SQLITE_FULL and SQLITE_IOERR); a second ROLLBACK fails.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF in _WRITE_FAILURES:
            raise StoreWriteError(f"cannot write to database {self.path}: {exc}") from None
        if exc_type is None and exc is not None:
            raise exc


_WRITE_FAILURES = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR}


def _delivery_ref(row: tuple[Any, ...] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return dict(zip(("id", "campaign_id", "subscriber_id", "email", "status", "message_id"), row, strict=True))


def _list(row: tuple[Any, ...]) -> MailingList:
    return MailingList(id=row[0], name=row[1], title=row[2], from_addr=row[3], reply_to=row[4], lang=row[5],
                       created=row[6])


def _campaign(row: tuple[Any, ...], conn: sqlite3.Connection) -> Campaign:
    cols = [d[1] for d in conn.execute("PRAGMA table_info(campaigns)")]
    data = dict(zip(cols, row, strict=True))
    return Campaign(
        id=data["id"], list_id=data["list_id"], slug=data["slug"], subject=data["subject"],
        issue_path=data["issue_path"], content_hash=data["content_hash"], created=data["created"],
        is_test=bool(data["is_test"]), finished=data.get("finished"), cancelled=data.get("cancelled"),
    )
