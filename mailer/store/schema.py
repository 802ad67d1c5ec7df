"""The database's shape: the tables of schema 1, each migration since, and the views that explain a mailer.db to
someone who opens it with `sqlite-utils` or Datasette. Owns `init` (create or migrate, in one transaction).

Must not read or write rows beyond what a migration moves; the repositories do that."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

from mailer.store.lasting_ids import keep_ids_unique

SCHEMA_VERSION = 14

# Schema 1, as every database began. It stays SQL: sqlite-utils' table.create has no table-level UNIQUE over two
# columns, and a database made today must have the very tables one made at schema 1 has after its migrations.
SCHEMA_1 = """
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

# Issue 5: sign-up requests (rate limits, double opt-in) and returned mail (bounces, complaints, mailto
# unsubscribes), each report read once.
_SIGNUPS_AND_RETURNED_MAIL = """
CREATE TABLE IF NOT EXISTS signup_requests (
    id INTEGER PRIMARY KEY,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    email TEXT NOT NULL,
    client TEXT NOT NULL,
    mailed INTEGER NOT NULL DEFAULT 0,
    at TEXT NOT NULL
);
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
"""

# What ops ask of a mailer.db, as views a person can open in Datasette or query with `sqlite-utils`. Added by
# schema 7; they hold no data, so they are made again (replaced) after every migration, as the latest schema has them.
VIEWS = {
    "delivery_log": """SELECT d.id AS delivery_id, c.id AS campaign_id, c.slug AS issue, c.subject, l.name AS list,
       d.email, d.name, d.status, d.attempts, d.smtp_code, d.smtp_reply, d.message_id, d.queued, d.first_attempt,
       d.updated, d.next_attempt, s.status AS subscriber_status
FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id JOIN lists l ON l.id = c.list_id
LEFT JOIN subscribers s ON s.id = d.subscriber_id""",
    "campaign_counts": """SELECT c.id AS campaign_id, c.slug AS issue, l.name AS list, c.subject, c.created,
       c.finished, c.cancelled, c.state, c.is_test, d.status, COUNT(d.id) AS recipients
FROM campaigns c JOIN lists l ON l.id = c.list_id LEFT JOIN deliveries d ON d.campaign_id = c.id
GROUP BY c.id, d.status""",
    "list_members": """SELECT l.name AS list, s.email, s.name, s.status, s.source, s.created, s.confirmed, s.updated,
       su.reason AS suppressed
FROM subscribers s JOIN lists l ON l.id = s.list_id LEFT JOIN suppressions su ON su.email = s.email""",
}


def _script(sql: str) -> Callable[[sqlite_utils.Database], None]:
    """A migration written as SQL, run statement by statement inside init's transaction (executescript would
    commit it)."""

    def run(db: sqlite_utils.Database) -> None:
        for statement in statements(sql):
            db.conn.execute(statement)

    return run


def statements(sql: str) -> list[str]:
    """The statements of an SQL script, each whole."""
    found, pending = [], ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    if pending.strip():
        found.append(pending.strip())
    return found


def _schema_3(db: sqlite_utils.Database) -> None:
    _script(_SIGNUPS_AND_RETURNED_MAIL)(db)
    db.table("signup_requests").create_index(["email", "at"], "signup_requests_email", if_not_exists=True)
    db.table("signup_requests").create_index(["client", "at"], "signup_requests_client", if_not_exists=True)
    db.table("returned_mail").create_index(["email", "kind"], "returned_mail_email", if_not_exists=True)
    # DSNs that carry no VERP address are matched by the Message-ID of the original.
    db.table("deliveries").create_index(["message_id"], "deliveries_message_id", if_not_exists=True)
    db.table("subscribers").add_column("confirmed", str)


def _schema_6(db: sqlite_utils.Database) -> None:
    # Issue 11: a campaign is what is sent (list and content), not the name: December's issue.md is not
    # November's. Campaigns can be cancelled. The partial index is SQL: create_index has no WHERE.
    _script("""DROP INDEX IF EXISTS campaigns_issue;
CREATE INDEX IF NOT EXISTS campaigns_content ON campaigns (list_id, content_hash) WHERE is_test = 0;""")(db)
    db.table("campaigns").create_index(["list_id", "slug"], "campaigns_slug", if_not_exists=True)
    db.table("campaigns").add_column("cancelled", str)


def _views(db: sqlite_utils.Database) -> None:
    for name, sql in VIEWS.items():
        db.create_view(name, sql, replace=True)


def _schema_8(db: sqlite_utils.Database) -> None:
    # A campaign's state as a whole (CampaignState), so an operator's pause outlives the sender and the server.
    db.table("campaigns").add_column("state", str, not_null_default="sending")
    db.conn.execute(
        "UPDATE campaigns SET state = CASE WHEN cancelled IS NOT NULL THEN 'cancelled' "
        "WHEN finished IS NOT NULL THEN 'finished' ELSE 'sending' END"
    )


# Issue 14, the ops console: an audit of what operators did, and what its pages and `mailer log` read at a million
# deliveries. Scanning a million index entries costs ~100 ms, so a campaign's aggregates are not counted when read:
# tallies kept by triggers in the transaction of each change (per domain, status and attempts; per minute of each
# sent, deferred or failed; per reply of the deliveries not sent), ~35 µs of CPU per message against ~50 µs for
# the indexes they replace. `domain` is a virtual column (computed when read, stored only in its index, which never
# changes after the snapshot). Rows of one campaign in id order (keyset pages, newest first, `log --csv` in one
# pass) come from deliveries_campaign: the older indexes order them by subscriber or by status.
REPLY_STATUSES_SQL = "('deferred', 'failed', 'bounced', 'skipped')"
MINUTE_STATUSES_SQL = "('sent', 'deferred', 'failed')"
_OPS_CONSOLE = f"""
ALTER TABLE deliveries ADD COLUMN domain TEXT GENERATED ALWAYS AS (substr(email, instr(email, '@') + 1)) VIRTUAL;
CREATE INDEX IF NOT EXISTS deliveries_campaign ON deliveries (campaign_id);
CREATE INDEX IF NOT EXISTS deliveries_domain ON deliveries (campaign_id, domain);
CREATE INDEX IF NOT EXISTS deliveries_email ON deliveries (email);
CREATE INDEX IF NOT EXISTS subscribers_email ON subscribers (email);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    campaign_id INTEGER,
    email TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_campaign ON audit (campaign_id);
CREATE INDEX IF NOT EXISTS audit_email ON audit (email);
CREATE TABLE IF NOT EXISTS delivery_tally (
    campaign_id INTEGER NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, domain, status, attempts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delivery_minutes (
    campaign_id INTEGER NOT NULL,
    minute TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, minute, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delivery_replies (
    campaign_id INTEGER NOT NULL,
    smtp_code INTEGER NOT NULL,
    smtp_reply TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, smtp_code, smtp_reply, status)
) WITHOUT ROWID;
INSERT INTO delivery_tally SELECT campaign_id, domain, status, attempts, COUNT(*) FROM deliveries
    GROUP BY campaign_id, domain, status, attempts;
INSERT INTO delivery_minutes SELECT d.campaign_id, substr(e.at, 1, 16), e.status, COUNT(*) FROM delivery_events e
    JOIN deliveries d ON d.id = e.delivery_id WHERE e.status IN {MINUTE_STATUSES_SQL} GROUP BY 1, 2, 3;
INSERT INTO delivery_replies SELECT campaign_id, COALESCE(smtp_code, 0), smtp_reply, status, COUNT(*) FROM deliveries
    WHERE status IN {REPLY_STATUSES_SQL} GROUP BY 1, 2, 3, 4;
CREATE TRIGGER IF NOT EXISTS deliveries_tally_insert AFTER INSERT ON deliveries BEGIN
    INSERT INTO delivery_tally VALUES (NEW.campaign_id, NEW.domain, NEW.status, NEW.attempts, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_minutes_insert AFTER INSERT ON deliveries
WHEN NEW.status IN {MINUTE_STATUSES_SQL} BEGIN
    INSERT INTO delivery_minutes VALUES (NEW.campaign_id, substr(NEW.updated, 1, 16), NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_replies_insert AFTER INSERT ON deliveries
WHEN NEW.status IN {REPLY_STATUSES_SQL} BEGIN
    INSERT INTO delivery_replies VALUES (NEW.campaign_id, COALESCE(NEW.smtp_code, 0), NEW.smtp_reply, NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_tally_update AFTER UPDATE OF status, attempts ON deliveries
WHEN OLD.status IS NOT NEW.status OR OLD.attempts IS NOT NEW.attempts BEGIN
    UPDATE delivery_tally SET n = n - 1 WHERE campaign_id = OLD.campaign_id AND domain = OLD.domain
        AND status = OLD.status AND attempts = OLD.attempts;
    INSERT INTO delivery_tally VALUES (NEW.campaign_id, NEW.domain, NEW.status, NEW.attempts, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_minutes_update AFTER UPDATE OF status ON deliveries
WHEN OLD.status IS NOT NEW.status AND NEW.status IN {MINUTE_STATUSES_SQL} BEGIN
    INSERT INTO delivery_minutes VALUES (NEW.campaign_id, substr(NEW.updated, 1, 16), NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_replies_update AFTER UPDATE OF status, smtp_code, smtp_reply ON deliveries
WHEN (OLD.status IN {REPLY_STATUSES_SQL}
    OR NEW.status IN {REPLY_STATUSES_SQL})
    AND (OLD.status IS NOT NEW.status OR OLD.smtp_code IS NOT NEW.smtp_code OR OLD.smtp_reply IS NOT NEW.smtp_reply)
BEGIN
    UPDATE delivery_replies SET n = n - 1 WHERE OLD.status IN {REPLY_STATUSES_SQL}
        AND campaign_id = OLD.campaign_id AND smtp_code = COALESCE(OLD.smtp_code, 0) AND smtp_reply = OLD.smtp_reply
        AND status = OLD.status;
    INSERT INTO delivery_replies SELECT NEW.campaign_id, COALESCE(NEW.smtp_code, 0), NEW.smtp_reply, NEW.status, 1
        WHERE NEW.status IN {REPLY_STATUSES_SQL} ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_tally_delete AFTER DELETE ON deliveries BEGIN
    UPDATE delivery_tally SET n = n - 1 WHERE campaign_id = OLD.campaign_id AND domain = OLD.domain
        AND status = OLD.status AND attempts = OLD.attempts;
    UPDATE delivery_replies SET n = n - 1 WHERE OLD.status IN {REPLY_STATUSES_SQL}
        AND campaign_id = OLD.campaign_id AND smtp_code = COALESCE(OLD.smtp_code, 0) AND smtp_reply = OLD.smtp_reply
        AND status = OLD.status;
END;
"""


# Issue 15: subscribers at home. Per address (not per list row): the preferred language and the moment before which
# their preferences links no longer work (a change rotates them); "send me my link" requests (rate limits, as for
# sign-ups); joins made from the preferences page, recorded with their source as unsubscribes are; which lists are
# offered to everyone on preferences pages (public) and publish their archive; each campaign's issue as rendered
# for a neutral reader (the web edition) under a slug unique in its list.
_PEOPLE_AND_ARCHIVE = """
CREATE TABLE IF NOT EXISTS people (
    email TEXT PRIMARY KEY,
    lang TEXT NOT NULL DEFAULT '',
    links_valid_from INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS link_requests (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL,
    client TEXT NOT NULL,
    mailed INTEGER NOT NULL DEFAULT 0,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS link_requests_email ON link_requests (email, at);
CREATE INDEX IF NOT EXISTS link_requests_client ON link_requests (client, at);
CREATE TABLE IF NOT EXISTS joins (
    id INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id),
    source TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS campaigns_archive_slug ON campaigns (list_id, archive_slug)
    WHERE archive_slug IS NOT NULL;
"""


def _schema_11(db: sqlite_utils.Database) -> None:
    db.table("lists").add_column("public", int, not_null_default=0)
    db.table("lists").add_column("archive", int, not_null_default=0)
    db.table("campaigns").add_column("web_edition", str)
    db.table("campaigns").add_column("archive_slug", str)
    _script(_PEOPLE_AND_ARCHIVE)(db)


# Issue 13 (schema 12): who a campaign is for (several lists, a segment: its audience), when it goes (scheduled), saved
# segments and approvals of exact content. A campaign's identity becomes its audience and the issue's own content
# (the file and what it embeds), no longer the rendered output: a new theme colour must not mail a list again. The
# content hash of older campaigns was of the rendered output, so it moves to look_hash and their identity is kept
# as 'rendered:HASH' (campaigns.find still matches them by the rendered output they were made from).
_CAMPAIGN_LIFECYCLE = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    expr TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    content_hash TEXT NOT NULL,
    issue_path TEXT NOT NULL,
    files TEXT NOT NULL DEFAULT '{}',
    by_name TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL,
    UNIQUE (list_id, content_hash, by_name)
);
CREATE INDEX IF NOT EXISTS approvals_path ON approvals (list_id, issue_path, at);
UPDATE campaigns SET look_hash = content_hash, content_hash = 'rendered:' || content_hash,
    audience_key = CAST(list_id AS TEXT) || '|',
    audience = json_object('lists', json_array((SELECT name FROM lists WHERE lists.id = campaigns.list_id)),
                           'where', '', 'segment', '');
CREATE INDEX IF NOT EXISTS campaigns_audience ON campaigns (audience_key, content_hash) WHERE is_test = 0;
CREATE INDEX IF NOT EXISTS campaigns_due ON campaigns (state, send_at);
"""


def _schema_12(db: sqlite_utils.Database) -> None:
    db.table("lists").add_column("require_approval", int, not_null_default=0)
    db.table("lists").add_column("tz", str, not_null_default="")
    for column in ("audience", "audience_key", "look_hash"):
        db.table("campaigns").add_column(column, str, not_null_default="")
    db.table("campaigns").add_column("send_at", str)
    db.table("deliveries").add_column("list_id", int)  # the list the recipient is on (NULL: the campaign's)
    _script(_CAMPAIGN_LIFECYCLE)(db)


# Each entry takes the schema from version N-1 to N; a fresh database gets schema 1 and then every step.
MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    2: lambda db: db.table("deliveries").add_column("first_attempt", str),
    3: _schema_3,
    # Addresses are compared in lower case from now on; a row whose lower-case twin exists is left as it was.
    4: _script("""
UPDATE OR IGNORE subscribers SET email = lower(email) WHERE email <> lower(email);
UPDATE OR IGNORE suppressions SET email = lower(email) WHERE email <> lower(email);
UPDATE OR IGNORE returned_mail SET email = lower(email) WHERE email <> lower(email);
UPDATE signup_requests SET email = lower(email) WHERE email <> lower(email);
"""),
    # The name typed into the sign-up form stays with its request until the mailbox owner confirms that request:
    # a stranger re-posting the form for someone's address must not change what later mail calls them.
    5: lambda db: db.table("signup_requests").add_column("name", str, not_null_default=""),
    6: _schema_6,
    7: lambda db: None,  # the views (made after every migration, as they stand in the latest schema: _views)
    8: _schema_8,
    # 9 and 10 were reserved for the branches of issues 13 and 14 while three were written side by side, and are
    # empty: those steps became 12 and 13 (a development database at 11 must not skip them).
    9: lambda db: None,
    10: lambda db: None,
    11: _schema_11,
    12: _schema_12,
    13: _script(_OPS_CONSOLE),  # issue 14: the ops console
    14: keep_ids_unique,  # a deleted list's, subscriber's or campaign's id is never given out again (lasting_ids)
}


def schema_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def init(conn: sqlite3.Connection) -> bool:
    """Create or migrate the schema in one write transaction; True when something was created or changed."""
    db = sqlite_utils.Database(conn)
    # Off for the migrations (a rebuilt table is dropped and made again: lasting_ids); SQLite ignores the pragma
    # inside a transaction, so it is set before and put back after.
    (foreign_keys,) = conn.execute("PRAGMA foreign_keys").fetchone()
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(conn)  # read under the write lock: two `mailer init` never migrate twice
        for statement in statements(SCHEMA_1):
            conn.execute(statement)
        for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[step](db)
        if version < SCHEMA_VERSION:
            _views(db)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute(f"PRAGMA foreign_keys={int(foreign_keys)}")
    return version < SCHEMA_VERSION
