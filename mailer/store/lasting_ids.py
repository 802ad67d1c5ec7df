"""Schema 14: the ids of lists, subscribers and campaigns are never given out again once their row is deleted.

Signed links carry those ids (unsubscribe, confirm and preferences links name a list and a subscriber; bounce
addresses a campaign; an archive key a list), and a mail sent years ago still holds them. Without AUTOINCREMENT
SQLite hands the largest id out again after its row is deleted, so a deleted list's links would act on the next
list made. The tables are rebuilt as they stand (their CREATE text with AUTOINCREMENT added, their rows and indexes
kept), and each table's sequence starts past the largest id any row still names, deleted or not.

Runs inside init's transaction with foreign keys off (init turns them off: SQLite ignores the pragma inside a
transaction), so dropping the old table deletes no child row and the other tables' REFERENCES keep their names."""

from __future__ import annotations

import re

import sqlite_utils

# Every column of another table that holds one of these ids, so the sequence starts past ids that only live on
# in history (a delivery, an audit line) after their row went.
NAMED_BY: dict[str, tuple[str, ...]] = {
    "lists": (
        "lists.id",
        "subscribers.list_id",
        "campaigns.list_id",
        "deliveries.list_id",
        "signup_requests.list_id",
        "segments.list_id",
        "approvals.list_id",
    ),
    "subscribers": ("subscribers.id", "deliveries.subscriber_id", "unsubscribes.subscriber_id", "joins.subscriber_id"),
    "campaigns": ("campaigns.id", "deliveries.campaign_id", "returned_mail.campaign_id", "audit.campaign_id"),
}

_KEY = re.compile(r"\bid INTEGER PRIMARY KEY\b(?! AUTOINCREMENT)")


def keep_ids_unique(db: sqlite_utils.Database) -> None:
    conn = db.conn
    # A view naming a table being rebuilt makes the rename fail; init makes the views again after every migration.
    for (view,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'").fetchall():
        conn.execute(f'DROP VIEW "{view}"')
    for table in NAMED_BY:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        indexes = [
            index_sql
            for (index_sql,) in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)
            )
        ]
        body = sql.split("(", 1)[1]
        conn.execute(f"CREATE TABLE new_{table} (" + _KEY.sub("id INTEGER PRIMARY KEY AUTOINCREMENT", body, count=1))
        conn.execute(f"INSERT INTO new_{table} SELECT * FROM {table}")
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE new_{table} RENAME TO {table}")
        for index_sql in indexes:
            conn.execute(index_sql)
    for table, columns in NAMED_BY.items():
        largest = " UNION ALL ".join(
            f"SELECT MAX({column}) AS m FROM {name}" for name, column in (c.split(".") for c in columns)
        )
        (seq,) = conn.execute(f"SELECT COALESCE(MAX(m), 0) FROM ({largest})").fetchone()
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, seq))
