"""One sender per campaign: the lease a sending process holds (`host:pid:start time`), renewed while it sends,
and whether a holder on this host still lives (from /proc), so a dead one loses the campaign at once and a
stopped one keeps it.

Must not send or decide to stop a run: the engine asks `holder` in the transaction that marks `sending`."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

from mailer.clock import stamp
from mailer.errors import CampaignBusy, MailerError
from mailer.models import CampaignState
from mailer.store.connection import Repository


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


def check_holder(campaign_id: int, holder: str | None, until: str | None, owner: str, now: str) -> None:
    """Raise CampaignBusy unless the campaign is free for `owner`: no holder, this very process, a holder on
    this host that is gone, or one on another host whose lease has expired."""
    if not holder or holder == owner:
        return
    state = holder_state(holder)
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if state == "running":
        raise CampaignBusy(
            f"campaign {campaign_id} is being sent by process {pid} on this host; wait for it to "
            f"finish or stop it first (Ctrl-C, or kill {pid})"
        )
    if state == "stopped":
        raise CampaignBusy(
            f"campaign {campaign_id} is held by process {pid}, which is stopped (kill -STOP or "
            f"Ctrl-Z): let it go on with kill -CONT {pid}, or end it with kill {pid} and run this again"
        )
    if state == "remote" and until and until > now:
        raise CampaignBusy(
            f"campaign {campaign_id} is being sent by process {pid} on {host} (lease until {until}); "
            "wait for it to finish or stop it first"
        )


class LeaseLost(MailerError):
    """This sender no longer holds its campaign (or a worker's parent is gone): it must not send another message."""


class Leases(Repository):
    def acquire(self, campaign_id: int, seconds: float = 60.0) -> str:
        """Take the campaign for this process for `seconds` (renewed while it sends), or raise CampaignBusy.

        The owner is `host:pid:start time`, so a holder on this host is known to be alive or not, whatever its
        lease says: a live one keeps the campaign even past `lease_until` (a process stopped by kill -STOP, Ctrl-Z
        or a paused VM must not find a second sender at work when it continues), a dead one (or its pid reused)
        loses it at once. A holder on another host is known only by its renewals and loses the campaign once its
        lease has expired; it then stops before its next message, as every `sending` mark checks the lease in
        the same transaction (`holder`)."""
        owner = lease_owner()
        now = self.store.clock()
        self.check_free(campaign_id, owner)
        with self.store.transaction():
            self.check_free(campaign_id, owner)
            self.conn.execute(
                "UPDATE campaigns SET lease_owner = ?, lease_until = ? WHERE id = ?",
                (owner, stamp(now + timedelta(seconds=seconds)), campaign_id),
            )
        return owner

    def check_free(self, campaign_id: int, owner: str) -> None:
        """Raise CampaignBusy when someone else holds the campaign. Asked once before the write lock too (reads
        never wait in WAL mode): a holder stopped in the middle of a transaction keeps SQLite's write lock, and
        the second sender would wait 30 s only to say "database is locked" instead of naming it."""
        row = self.conn.execute(
            "SELECT lease_owner, lease_until FROM campaigns WHERE id = ?", (campaign_id,)
        ).fetchone()
        if row is not None:
            holder, until = row
            check_holder(campaign_id, holder, until, owner, self.store.now())

    def holder(self, campaign_id: int) -> str | None:
        """Who holds the campaign; read inside the transaction that marks `sending`, so the answer holds for it."""
        row = self.conn.execute("SELECT lease_owner FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        if row is None:
            return None
        holder: str | None
        (holder,) = row
        return holder

    def standing(self, campaign_id: int) -> tuple[str | None, CampaignState]:
        """Who holds the campaign and its state, in one read: the `sending` mark's check."""
        row = self.conn.execute("SELECT lease_owner, state FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        if row is None:
            return None, CampaignState.CANCELLED
        return row[0], CampaignState(row[1])

    def renew(self, campaign_id: int, owner: str, seconds: float = 60.0) -> bool:
        """Extend the lease; False when it changed no row: the campaign is no longer ours."""
        with self.store.transaction():
            return (
                self.conn.execute(
                    "UPDATE campaigns SET lease_until = ? WHERE id = ? AND lease_owner = ?",
                    (stamp(self.store.clock() + timedelta(seconds=seconds)), campaign_id, owner),
                ).rowcount
                > 0
            )

    def release(self, campaign_id: int, owner: str) -> None:
        with self.store.transaction():
            self.conn.execute(
                "UPDATE campaigns SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (campaign_id, owner),
            )

    def lost(self, campaign_id: int) -> LeaseLost:
        """Why a sender may not go on: who holds its campaign now."""
        host, pid, _ = [*(self.holder(campaign_id) or "").split(":"), "", ""][:3]
        now = f"process {pid} on {host} holds it now" if pid else "it was released"
        return LeaseLost(
            f"this run no longer holds campaign {campaign_id} ({now}; was this process stopped past its "
            "lease?): it stopped before its next message"
        )
