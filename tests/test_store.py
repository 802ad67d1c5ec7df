"""The store package: a database made at any older schema migrates to exactly the schema a new one has, keeping
its rows; the views answer what ops ask; the store is a context manager on an injected clock."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailer.models import DeliveryStatus, Subscriber, SubscriberStatus
from mailer.store import Store
from mailer.store.schema import SCHEMA_VERSION, statements

# The schema as mailer wrote it at each version, frozen here as old databases hold it (version 1 and the SQL of
# each step that followed, as released): never edit, only add a version.
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


RELEASED_STEPS: dict[int, str] = {
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
    # Views for what ops ask (they hold no data; each migration makes them again as the latest schema has them).
    7: """
CREATE VIEW delivery_log AS SELECT d.id AS delivery_id, c.id AS campaign_id, c.slug AS issue, c.subject, l.name AS list,
       d.email, d.name, d.status, d.attempts, d.smtp_code, d.smtp_reply, d.message_id, d.queued, d.first_attempt,
       d.updated, d.next_attempt, s.status AS subscriber_status
FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id JOIN lists l ON l.id = c.list_id
LEFT JOIN subscribers s ON s.id = d.subscriber_id;
CREATE VIEW campaign_counts AS SELECT c.id AS campaign_id, c.slug AS issue, l.name AS list, c.subject, c.created,
       c.finished, c.cancelled, c.is_test, d.status, COUNT(d.id) AS recipients
FROM campaigns c JOIN lists l ON l.id = c.list_id LEFT JOIN deliveries d ON d.campaign_id = c.id
GROUP BY c.id, d.status;
CREATE VIEW list_members AS SELECT l.name AS list, s.email, s.name, s.status, s.source, s.created, s.confirmed,
       s.updated,
       su.reason AS suppressed
FROM subscribers s JOIN lists l ON l.id = s.list_id LEFT JOIN suppressions su ON su.email = s.email;
""",
    # A campaign's state as a whole: an operator's pause outlives the sender and the server.
    8: """
ALTER TABLE campaigns ADD COLUMN state TEXT NOT NULL DEFAULT 'sending';
UPDATE campaigns SET state = CASE WHEN cancelled IS NOT NULL THEN 'cancelled' WHEN finished IS NOT NULL THEN 'finished'
ELSE 'sending' END;
""",
    9: "",
    10: "",  # 9 and 10 are empty (reserved while issues 13-15 were built side by side)
    # Issue 15: public and archived lists, per-address preferences, link requests, joins, web editions.
    11: """
ALTER TABLE lists ADD COLUMN public INTEGER NOT NULL DEFAULT 0;
ALTER TABLE lists ADD COLUMN archive INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN web_edition TEXT;
ALTER TABLE campaigns ADD COLUMN archive_slug TEXT;
CREATE TABLE people (
    email TEXT PRIMARY KEY,
    lang TEXT NOT NULL DEFAULT '',
    links_valid_from INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL
);
CREATE TABLE link_requests (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL,
    client TEXT NOT NULL,
    mailed INTEGER NOT NULL DEFAULT 0,
    at TEXT NOT NULL
);
CREATE INDEX link_requests_email ON link_requests (email, at);
CREATE INDEX link_requests_client ON link_requests (client, at);
CREATE TABLE joins (
    id INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id),
    source TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE UNIQUE INDEX campaigns_archive_slug ON campaigns (list_id, archive_slug) WHERE archive_slug IS NOT NULL;
""",
    # Issue 13: audiences (several lists, segments), scheduled starts, saved segments and approvals; a campaign's
    # identity is its audience and the issue's own content.
    12: """
ALTER TABLE lists ADD COLUMN require_approval INTEGER NOT NULL DEFAULT 0;
ALTER TABLE lists ADD COLUMN tz TEXT NOT NULL DEFAULT '';
ALTER TABLE campaigns ADD COLUMN audience TEXT NOT NULL DEFAULT '';
ALTER TABLE campaigns ADD COLUMN audience_key TEXT NOT NULL DEFAULT '';
ALTER TABLE campaigns ADD COLUMN look_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE campaigns ADD COLUMN send_at TEXT;
ALTER TABLE deliveries ADD COLUMN list_id INTEGER;
CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    expr TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE approvals (
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
CREATE INDEX approvals_path ON approvals (list_id, issue_path, at);
CREATE INDEX campaigns_audience ON campaigns (audience_key, content_hash) WHERE is_test = 0;
CREATE INDEX campaigns_due ON campaigns (state, send_at);
""",
    # The ops console: the audit of operators' actions, the indexes its pages read at a million deliveries, and the
    # tallies kept by triggers.
    13: """
ALTER TABLE deliveries ADD COLUMN domain TEXT GENERATED ALWAYS AS (substr(email, instr(email, '@') + 1)) VIRTUAL;
CREATE INDEX deliveries_campaign ON deliveries (campaign_id);
CREATE INDEX deliveries_domain ON deliveries (campaign_id, domain);
CREATE INDEX deliveries_email ON deliveries (email);
CREATE INDEX subscribers_email ON subscribers (email);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    campaign_id INTEGER,
    email TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_campaign ON audit (campaign_id);
CREATE INDEX audit_email ON audit (email);
CREATE TABLE delivery_tally (
    campaign_id INTEGER NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, domain, status, attempts)
) WITHOUT ROWID;
CREATE TABLE delivery_minutes (
    campaign_id INTEGER NOT NULL,
    minute TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, minute, status)
) WITHOUT ROWID;
CREATE TABLE delivery_replies (
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
    JOIN deliveries d ON d.id = e.delivery_id WHERE e.status IN ('sent', 'deferred', 'failed') GROUP BY 1, 2, 3;
INSERT INTO delivery_replies SELECT campaign_id, COALESCE(smtp_code, 0), smtp_reply, status, COUNT(*) FROM deliveries
    WHERE status IN ('deferred', 'failed', 'bounced', 'skipped') GROUP BY 1, 2, 3, 4;
CREATE TRIGGER deliveries_tally_insert AFTER INSERT ON deliveries BEGIN
    INSERT INTO delivery_tally VALUES (NEW.campaign_id, NEW.domain, NEW.status, NEW.attempts, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deliveries_minutes_insert AFTER INSERT ON deliveries
WHEN NEW.status IN ('sent', 'deferred', 'failed') BEGIN
    INSERT INTO delivery_minutes VALUES (NEW.campaign_id, substr(NEW.updated, 1, 16), NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deliveries_replies_insert AFTER INSERT ON deliveries
WHEN NEW.status IN ('deferred', 'failed', 'bounced', 'skipped') BEGIN
    INSERT INTO delivery_replies VALUES (NEW.campaign_id, COALESCE(NEW.smtp_code, 0), NEW.smtp_reply, NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deliveries_tally_update AFTER UPDATE OF status, attempts ON deliveries
WHEN OLD.status IS NOT NEW.status OR OLD.attempts IS NOT NEW.attempts BEGIN
    UPDATE delivery_tally SET n = n - 1 WHERE campaign_id = OLD.campaign_id AND domain = OLD.domain
        AND status = OLD.status AND attempts = OLD.attempts;
    INSERT INTO delivery_tally VALUES (NEW.campaign_id, NEW.domain, NEW.status, NEW.attempts, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deliveries_minutes_update AFTER UPDATE OF status ON deliveries
WHEN OLD.status IS NOT NEW.status AND NEW.status IN ('sent', 'deferred', 'failed') BEGIN
    INSERT INTO delivery_minutes VALUES (NEW.campaign_id, substr(NEW.updated, 1, 16), NEW.status, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deliveries_replies_update AFTER UPDATE OF status, smtp_code, smtp_reply ON deliveries
WHEN (OLD.status IN ('deferred', 'failed', 'bounced', 'skipped')
    OR NEW.status IN ('deferred', 'failed', 'bounced', 'skipped'))
    AND (OLD.status IS NOT NEW.status OR OLD.smtp_code IS NOT NEW.smtp_code OR OLD.smtp_reply IS NOT NEW.smtp_reply)
BEGIN
    UPDATE delivery_replies SET n = n - 1 WHERE OLD.status IN ('deferred', 'failed', 'bounced', 'skipped')
        AND campaign_id = OLD.campaign_id AND smtp_code = COALESCE(OLD.smtp_code, 0) AND smtp_reply = OLD.smtp_reply
        AND status = OLD.status;
    INSERT INTO delivery_replies SELECT NEW.campaign_id, COALESCE(NEW.smtp_code, 0), NEW.smtp_reply, NEW.status, 1
        WHERE NEW.status IN ('deferred', 'failed', 'bounced', 'skipped') ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER deliveries_tally_delete AFTER DELETE ON deliveries BEGIN
    UPDATE delivery_tally SET n = n - 1 WHERE campaign_id = OLD.campaign_id AND domain = OLD.domain
        AND status = OLD.status AND attempts = OLD.attempts;
    UPDATE delivery_replies SET n = n - 1 WHERE OLD.status IN ('deferred', 'failed', 'bounced', 'skipped')
        AND campaign_id = OLD.campaign_id AND smtp_code = COALESCE(OLD.smtp_code, 0) AND smtp_reply = OLD.smtp_reply
        AND status = OLD.status;
END;
""",
    # Schema 14: ids of lists, subscribers and campaigns are never reused after a delete (signed links name them):
    # the three tables rebuilt with AUTOINCREMENT, their sequences started past every id a row still names.
    14: """
DROP VIEW IF EXISTS delivery_log;
DROP VIEW IF EXISTS campaign_counts;
DROP VIEW IF EXISTS list_members;
CREATE TABLE new_lists (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL DEFAULT '',
    from_addr TEXT NOT NULL DEFAULT '',
    reply_to TEXT NOT NULL DEFAULT '',
    lang TEXT NOT NULL DEFAULT 'zh',
    created TEXT NOT NULL
, "public" INTEGER NOT NULL DEFAULT 0, "archive" INTEGER NOT NULL DEFAULT 0,
"require_approval" INTEGER NOT NULL DEFAULT 0, "tz" TEXT NOT NULL DEFAULT '');
INSERT INTO new_lists SELECT * FROM lists;
DROP TABLE lists;
ALTER TABLE new_lists RENAME TO lists;
CREATE TABLE new_subscribers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    attrs TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    updated TEXT NOT NULL, "confirmed" TEXT,
    UNIQUE (list_id, email)
);
INSERT INTO new_subscribers SELECT * FROM subscribers;
DROP TABLE subscribers;
ALTER TABLE new_subscribers RENAME TO subscribers;
CREATE INDEX subscribers_status ON subscribers (list_id, status, id);
CREATE INDEX subscribers_email ON subscribers (email);
CREATE TABLE new_campaigns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
, "cancelled" TEXT, "state" TEXT NOT NULL DEFAULT 'sending', "web_edition" TEXT, "archive_slug" TEXT,
"audience" TEXT NOT NULL DEFAULT '', "audience_key" TEXT NOT NULL DEFAULT '', "look_hash" TEXT NOT NULL DEFAULT '',
"send_at" TEXT);
INSERT INTO new_campaigns SELECT * FROM campaigns;
DROP TABLE campaigns;
ALTER TABLE new_campaigns RENAME TO campaigns;
CREATE INDEX campaigns_content ON campaigns (list_id, content_hash) WHERE is_test = 0;
CREATE INDEX campaigns_slug ON campaigns (list_id, slug);
CREATE UNIQUE INDEX campaigns_archive_slug ON campaigns (list_id, archive_slug) WHERE archive_slug IS NOT NULL;
CREATE INDEX campaigns_audience ON campaigns (audience_key, content_hash) WHERE is_test = 0;
CREATE INDEX campaigns_due ON campaigns (state, send_at);
DELETE FROM sqlite_sequence;
INSERT INTO sqlite_sequence (name, seq) VALUES ('lists', (SELECT COALESCE(MAX(m), 0) FROM (
    SELECT MAX(id) AS m FROM lists UNION ALL SELECT MAX(list_id) FROM subscribers
    UNION ALL SELECT MAX(list_id) FROM campaigns UNION ALL SELECT MAX(list_id) FROM deliveries
    UNION ALL SELECT MAX(list_id) FROM signup_requests
    UNION ALL SELECT MAX(list_id) FROM segments UNION ALL SELECT MAX(list_id) FROM approvals)));
INSERT INTO sqlite_sequence (name, seq) VALUES ('subscribers', (SELECT COALESCE(MAX(m), 0) FROM (
    SELECT MAX(id) AS m FROM subscribers UNION ALL SELECT MAX(subscriber_id) FROM deliveries
    UNION ALL SELECT MAX(subscriber_id) FROM unsubscribes UNION ALL SELECT MAX(subscriber_id) FROM joins)));
INSERT INTO sqlite_sequence (name, seq) VALUES ('campaigns', (SELECT COALESCE(MAX(m), 0) FROM (
    SELECT MAX(id) AS m FROM campaigns UNION ALL SELECT MAX(campaign_id) FROM deliveries
    UNION ALL SELECT MAX(campaign_id) FROM returned_mail UNION ALL SELECT MAX(campaign_id) FROM audit)));
""",
}


def _old_database(path: Path, version: int) -> None:
    """A database of `version` with a list, a subscriber (in mixed case, as databases before schema 4 may hold
    one), a campaign and its delivery."""
    email = "Wang@Example.org" if version < 4 else "wang@example.org"
    conn = sqlite3.connect(path)
    conn.executescript(
        SCHEMA_1 + "".join(RELEASED_STEPS[v] for v in range(2, version + 1)) + f"PRAGMA user_version = {version};"
    )
    conn.execute("INSERT INTO lists (name, created) VALUES ('bulletin', '2026-01-01T00:00:00.000Z')")
    conn.execute(
        "INSERT INTO subscribers (list_id, email, name, status, created, updated) VALUES "
        "(1, ?, '王', 'active', 'then', 'then')",
        (email,),
    )
    conn.execute(
        "INSERT INTO campaigns (list_id, slug, subject, issue_path, content_hash, rendered, salt, created) "
        "VALUES (1, 'nov', 'November', 'nov.md', 'h', '{}', 's', 'then')"
    )
    conn.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id, email, status, queued, updated) "
        "VALUES (1, 1, ?, 'sent', 'then', 'then')",
        (email,),
    )
    conn.commit()
    conn.close()


def _shape(path: Path) -> dict[str, object]:
    """Every table's columns (name, type, not null, default, primary key) and every index's columns and
    uniqueness, and the views' names: what a query can tell apart."""
    conn = sqlite3.connect(path)
    try:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        shape: dict[str, object] = {
            "views": [
                name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")
            ]
        }
        for table in tables:
            columns = sorted(tuple(row[1:]) for row in conn.execute(f"PRAGMA table_xinfo({table})"))  # generated too
            indexes = sorted(
                (
                    unique,
                    partial,
                    tuple(c or "(expression)" for (_, _, c) in conn.execute(f"PRAGMA index_info('{name}')")),
                )
                for (_, name, unique, _, partial) in conn.execute(f"PRAGMA index_list({table})")
            )
            shape[table] = (columns, indexes)
        return shape
    finally:
        conn.close()


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_database_of_every_older_schema_migrates_to_the_new_one_and_keeps_its_rows(
    tmp_path: Path, version: int
) -> None:
    fresh = tmp_path / "fresh.db"
    with Store.open(fresh, must_exist=False) as store:
        assert store.init() is True
    old = tmp_path / "old.db"
    _old_database(old, version)
    with Store.open(old, must_exist=False) as store:
        assert store.init() is True
        assert store.init() is False  # up to date: nothing more to do
        [subscriber] = store.subscribers.of_list(store.lists.get("bulletin").id)
        assert subscriber.email == "wang@example.org" and subscriber.status == SubscriberStatus.ACTIVE
        assert store.deliveries.counts(1) == {"sent": 1}
    assert _shape(old) == _shape(fresh)


def test_the_released_steps_are_what_the_migrations_make(tmp_path: Path) -> None:
    """The latest schema made from the frozen SQL and as the migrations make it are the same (so the fresh and
    migrated databases above are compared against the schema users really have)."""
    frozen = tmp_path / "frozen.db"
    _old_database(frozen, SCHEMA_VERSION)
    made = tmp_path / "made.db"
    conn = sqlite3.connect(made)
    conn.executescript(SCHEMA_1 + "PRAGMA user_version = 1;")
    conn.close()
    with Store.open(made, must_exist=False) as store:
        store.init()
    shape = _shape(made)
    assert shape.pop("views") == ["campaign_counts", "delivery_log", "list_members"]
    frozen_shape = _shape(frozen)
    frozen_shape.pop("views")
    assert shape == frozen_shape


def test_a_campaign_of_schema_8_keeps_its_identity_as_the_rendered_output_and_gets_its_audience(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    _old_database(old, 8)
    with Store.open(old, must_exist=False) as store:
        store.init()
        campaign = store.campaigns.get(1)
        assert (campaign.content_hash, campaign.look_hash, campaign.audience_key) == ("rendered:h", "h", "1|")
        assert json.loads(campaign.audience) == {"lists": ["bulletin"], "where": "", "segment": ""}
        assert store.campaigns.find(store.lists.get("bulletin").id, "new identity", "h") == campaign


def test_a_campaign_of_schema_7_gets_the_state_its_stamps_say(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    _old_database(old, 7)
    conn = sqlite3.connect(old)
    for slug, finished, cancelled in (("done", "then", None), ("stopped", "then", "then")):
        conn.execute(
            "INSERT INTO campaigns (list_id, slug, subject, issue_path, content_hash, rendered, salt, created, "
            "finished, cancelled) VALUES (1, ?, 's', 'x.md', ?, '{}', 's', 'then', ?, ?)",
            (slug, slug, finished, cancelled),
        )
    conn.commit()
    conn.close()
    with Store.open(old, must_exist=False) as store:
        store.init()
        assert [(c.issue, c.state) for c in store.campaigns.with_counts()] == [
            ("nov", "sending"),  # not finished: interrupted, or still being sent
            ("done", "finished"),
            ("stopped", "cancelled"),
        ]


def test_statements_keep_each_statement_whole() -> None:
    assert statements("CREATE TABLE a (x TEXT DEFAULT ';');\nUPDATE a SET x = 1;\n") == [
        "CREATE TABLE a (x TEXT DEFAULT ';');",
        "UPDATE a SET x = 1;",
    ]


def test_a_failed_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailer.store import schema

    old = tmp_path / "old.db"
    _old_database(old, 5)

    def broken(db: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(schema.MIGRATIONS, 7, broken)
    with Store.open(old, must_exist=False) as store, pytest.raises(sqlite3.OperationalError):
        store.init()
    conn = sqlite3.connect(old)
    assert conn.execute("PRAGMA user_version").fetchone() == (5,)
    assert "cancelled" not in [row[1] for row in conn.execute("PRAGMA table_info(campaigns)")]


def test_the_views_answer_what_ops_ask(store: Store) -> None:
    bulletin = store.lists.get("bulletin")
    store.subscribers.upsert(bulletin.id, [Subscriber(email="wang@example.org", name="王小明")], "test")
    campaign = store.campaigns.create(bulletin.id, "nov", "November", "nov.md", "h", {}, "salt")
    store.suppressions.suppress_address("wang@example.org", "bounced", "5.1.1")
    rows = list(store.db.query("SELECT issue, list, email, name, status, subscriber_status FROM delivery_log"))
    assert rows == [
        {
            "issue": "nov",
            "list": "bulletin",
            "email": "wang@example.org",
            "name": "王小明",
            "status": DeliveryStatus.QUEUED,
            "subscriber_status": "bounced",
        }
    ]
    counts = list(store.db.query("SELECT campaign_id, status, recipients FROM campaign_counts"))
    assert counts == [{"campaign_id": campaign.id, "status": "queued", "recipients": 1}]
    [member] = store.db.query("SELECT list, email, status, suppressed FROM list_members")
    assert member == {"list": "bulletin", "email": "wang@example.org", "status": "bounced", "suppressed": "bounced"}


def test_the_store_keeps_time_on_the_clock_it_is_given(config: object, tmp_path: Path) -> None:
    moment = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    with Store.open(tmp_path / "clocked.db", must_exist=False, clock=lambda: moment) as store:
        store.init()
        created = store.lists.create("weekly", "", "", "", "en")
    assert created.created == "2026-12-01T09:30:00.000Z"


def test_a_closed_store_refuses_queries(tmp_path: Path) -> None:
    with Store.open(tmp_path / "x.db", must_exist=False) as store:
        store.init()
    with pytest.raises(sqlite3.ProgrammingError):
        store.lists.with_counts()


def test_migrating_starts_each_id_past_every_id_a_row_still_names(tmp_path: Path) -> None:
    """Schema 14: a list, subscriber or campaign deleted before the upgrade (only its deliveries left) does not get
    its id handed out again, nor does the newest one deleted after."""
    old = tmp_path / "old.db"
    _old_database(old, 13)
    conn = sqlite3.connect(old)
    conn.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id, list_id, email, status, queued, updated) "
        "VALUES (7, 9, 5, 'gone@example.org', 'sent', 'then', 'then')"
    )
    conn.commit()
    conn.close()
    with Store.open(old, must_exist=False) as store:
        store.init()
        made = store.lists.create("next", "", "N <n@example.org>", "", "en")
        assert made.id == 6
        store.conn.execute("DELETE FROM lists WHERE id = 6")
        assert store.lists.create("after", "", "N <n@example.org>", "", "en").id == 7
        (sequence,) = store.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'campaigns'").fetchone()
        assert sequence == 7
