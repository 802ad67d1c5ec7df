"""The audit of the ops console: who did what to which campaign or address, and when, one row per action.

Rows are only added and read back; the action itself is done by the repository it concerns, in the same
transaction (so an action is never recorded without being done, nor done without being recorded)."""

from __future__ import annotations

from dataclasses import dataclass

from mailer.store.connection import Repository


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    actor: str
    action: str
    campaign_id: int | None
    email: str
    detail: str


_COLUMNS = "id, at, actor, action, campaign_id, email, detail"


class Audit(Repository):
    def record(
        self, actor: str, action: str, *, campaign_id: int | None = None, email: str = "", detail: str = ""
    ) -> None:
        with self.store.transaction():
            self.conn.execute(
                "INSERT INTO audit (at, actor, action, campaign_id, email, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (self.store.now(), actor, action, campaign_id, email, detail),
            )

    def of_campaign(self, campaign_id: int, limit: int = 50) -> list[AuditEntry]:
        return self._rows("campaign_id = ?", (campaign_id,), limit)

    def of_address(self, email: str, limit: int = 50) -> list[AuditEntry]:
        return self._rows("email = ?", (email,), limit)

    def _rows(self, condition: str, args: tuple[object, ...], limit: int) -> list[AuditEntry]:
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM audit WHERE {condition} ORDER BY id DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [AuditEntry(*row) for row in rows]
