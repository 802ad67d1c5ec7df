"""Everything SQLite: one connection shared by small repositories, one per thing a mailer.db remembers.

    schema.py        tables, migrations from every older version, the views for people (`delivery_log`, ...)
    connection.py    opening the file, write transactions, SQLite failures as one line
    lists.py         lists and their subscribers (import, status, unsubscribes)
    suppressions.py  addresses never mailed again, and returned mail (bounces, complaints) read once each
    signups.py       sign-up requests: rate limits and double opt-in
    people.py        one address across lists: its preferences, joins, "send me my link" requests
    archive.py       a list's archive: the web editions of the campaigns that reached someone
    campaigns.py     campaigns: the snapshot of an issue and its recipients, scheduling, cancelling
    audiences.py     who an audience (lists, a segment) reaches, evaluated in SQLite; saved segments
    approvals.py     who approved which exact content for a list
    schedules.py     when campaigns go: scheduled starts, top-ups, what is due for `mailer run`
    leases.py        one sender per campaign: who holds it and whether that process lives
    deliveries.py    each recipient's status and history: the engine's hot path
    reports.py       what ops read at scale: a campaign's aggregates, keyset pages, one person's history, totals
    audit.py         what operators did in the ops console, who and when

The only package that imports sqlite3 or sqlite-utils. Reads return dataclasses of mailer.models or of the
repository, statuses are enums, never prints. sqlite-utils makes the schema steps it can express and runs the
reads that are not per message (`db.query`); the hot path (mark `sending`, record an outcome, stream the queue)
stays hand-written SQL on the bare connection: per message it is one UPDATE ... RETURNING and one INSERT in the
transaction the engine already holds, ~75 µs of a ~300 µs message at 4 sessions, and sqlite-utils' row
dictionaries and savepoint around each query would add to every one of them for nothing.

Time comes from the clock the store is opened with (`Store.open(path, clock=...)`), never from the store itself."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from mailer.clock import Clock, stamp, utcnow
from mailer.store import schema
from mailer.store.approvals import Approval, Approvals
from mailer.store.archive import Archive, ArchivedIssue
from mailer.store.audiences import Audiences, Segment, register_functions
from mailer.store.audit import Audit, AuditEntry
from mailer.store.campaigns import Campaigns, CampaignSummary
from mailer.store.connection import StoreBusy, StoreWriteError, Transaction, connect, describe_database_error
from mailer.store.deliveries import CHUNK, Deliveries, LogEntry, Outcome, Partition
from mailer.store.leases import Leases, holder_state, lease_owner
from mailer.store.lists import Lists, ListSummary, Subscribers, Unsubscribe
from mailer.store.people import People, Person
from mailer.store.reports import PersonDelivery, Reports
from mailer.store.schedules import Schedules
from mailer.store.signups import Signups
from mailer.store.suppressions import DeliveryRef, ReturnedMail, Suppression, Suppressions

DatabaseError = sqlite3.Error  # what SQLite raises, for the shell to name without importing sqlite3

__all__ = [
    "CHUNK",
    "Approval",
    "ArchivedIssue",
    "AuditEntry",
    "CampaignSummary",
    "DatabaseError",
    "DeliveryRef",
    "ListSummary",
    "LogEntry",
    "Outcome",
    "Partition",
    "Person",
    "PersonDelivery",
    "Segment",
    "Store",
    "StoreBusy",
    "StoreWriteError",
    "Suppression",
    "Unsubscribe",
    "describe_database_error",
    "holder_state",
    "lease_owner",
]


class Store:
    """One mailer database file. `with Store.open(path) as store:`; `init()` creates or migrates the schema.

    Its repositories share the connection: `store.lists`, `store.subscribers`, `store.suppressions`,
    `store.returned`, `store.signups`, `store.campaigns`, `store.leases`, `store.deliveries`, `store.audiences`,
    `store.approvals`, `store.schedules`, `store.people`, `store.archive`, `store.reports`, `store.audit`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Clock = utcnow) -> None:
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.path = path
        self.clock = clock
        self.lists = Lists(self)
        self.subscribers = Subscribers(self)
        self.suppressions = Suppressions(self)
        self.returned = ReturnedMail(self)
        self.signups = Signups(self)
        self.campaigns = Campaigns(self)
        self.leases = Leases(self)
        self.deliveries = Deliveries(self)
        self.reports = Reports(self)
        self.audit = Audit(self)
        self.people = People(self)
        self.archive = Archive(self)
        self.audiences = Audiences(self)
        self.approvals = Approvals(self)
        self.schedules = Schedules(self)
        register_functions(conn)

    @classmethod
    def open(cls, path: Path, *, must_exist: bool = True, clock: Clock = utcnow) -> Store:
        path = Path(path)
        return cls(connect(path, must_exist=must_exist), path, clock)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def init(self) -> bool:
        """Create or migrate the schema; returns True when something was created."""
        return schema.init(self.conn)

    def transaction(self) -> Transaction:
        return Transaction(self.conn, self.path)

    def now(self) -> str:
        """This moment on the store's clock, as stored."""
        return stamp(self.clock())
