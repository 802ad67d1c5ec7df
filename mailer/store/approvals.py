"""Approvals: who approved which exact content of an issue for a list (its hash, and the hash of each file it is
made of, so a refusal can say what changed since), and when.

Must not decide whether a send may go (approvals.py, the service, does)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mailer.store.connection import Repository


@dataclass(frozen=True)
class Approval:
    list_name: str
    content_hash: str
    issue_path: str
    files: dict[str, str]  # file name -> sha256 of the content approved
    by: str
    note: str
    at: str
    # What the approved issue looked like (approvals.look_of): "output" -> the rendered mail's hash, "layout NAME"
    # and "theme FIELD" -> sha256. Empty for approvals recorded before looks were: they cover the content only.
    look: dict[str, str] = field(default_factory=dict)


LOOK_PREFIX = "look:"  # kept in the files column beside the files, so the table keeps its shape


_COLUMNS = "l.name, a.content_hash, a.issue_path, a.files, a.by_name, a.note, a.at"


class Approvals(Repository):
    def add(
        self,
        list_id: int,
        content_hash: str,
        issue_path: str,
        files: dict[str, str],
        by: str,
        note: str,
        look: dict[str, str] | None = None,
    ) -> bool:
        """Record an approval; True when it is new (the same person approving the same content again updates the
        note, the time and the look approved)."""
        now = self.store.now()
        files = {**files, **{LOOK_PREFIX + k: v for k, v in (look or {}).items()}}
        stored = json.dumps(files, ensure_ascii=False)
        with self.store.transaction():
            cur = self.conn.execute(
                "UPDATE approvals SET note = ?, at = ?, files = ? "
                "WHERE list_id = ? AND content_hash = ? AND by_name = ?",
                (note, now, stored, list_id, content_hash, by),
            )
            if cur.rowcount:
                return False
            self.conn.execute(
                "INSERT INTO approvals (list_id, content_hash, issue_path, files, by_name, note, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (list_id, content_hash, issue_path, stored, by, note, now),
            )
        return True

    def of_content(self, list_id: int, content_hash: str) -> list[Approval]:
        return self._query("a.list_id = ? AND a.content_hash = ?", (list_id, content_hash))

    def earlier(self, list_id: int, issue_path: str, content_hash: str) -> list[Approval]:
        """Approvals of other content of the same issue file for the list, latest first."""
        rows = self._query(
            "a.list_id = ? AND a.issue_path = ? AND a.content_hash <> ?", (list_id, issue_path, content_hash)
        )
        return sorted(rows, key=lambda a: a.at, reverse=True)

    def _query(self, condition: str, args: tuple[object, ...]) -> list[Approval]:
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM approvals a JOIN lists l ON l.id = a.list_id WHERE {condition} ORDER BY a.at", args
        )
        return [_approval(*row) for row in rows]


def _approval(name: str, content_hash: str, path: str, raw: str, by: str, note: str, at: str) -> Approval:
    stored: dict[str, str] = json.loads(raw)
    files = {k: v for k, v in stored.items() if not k.startswith(LOOK_PREFIX)}
    look = {k.removeprefix(LOOK_PREFIX): v for k, v in stored.items() if k.startswith(LOOK_PREFIX)}
    return Approval(name, content_hash, path, files, by, note, at, look)
