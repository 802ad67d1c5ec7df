"""`mailer campaigns` and `mailer log`: what each send did, one row per recipient.

Commands only: each parses, reads the store and prints."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from mailer.audience import audience_lists
from mailer.cli.common import (
    JsonOpt,
    app,
    campaigns_app,
    open_store,
    print_json,
    stream_json,
    table,
)
from mailer.cli.shell import environment, out, say
from mailer.errors import CampaignBusy
from mailer.models import CampaignState, DeliveryStatus


@campaigns_app.command("ls")
def campaigns_ls(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    tests: Annotated[bool, typer.Option("--tests", help="Include test sends.")] = False,
) -> None:
    """Each campaign with its delivery counts per status.

    Example: mailer campaigns ls --json
    """
    with open_store(ctx) as store:
        rows = store.campaigns.with_counts(include_tests=tests)
    if as_json:
        # the audience as an object: {"lists": [...], "where": "...", "segment": "..."}
        print_json(
            [{**dataclasses.asdict(r), "audience": json.loads(r.audience) if r.audience else None} for r in rows]
        )
        return
    table(
        ["id", "issue", "list", "state", "created", "counts"],
        [
            [
                r.id,
                r.issue + (" (test)" if r.test else ""),
                ", ".join(audience_lists(r.audience)) or r.list,
                f"{r.state} for {r.send_at}" if r.state == CampaignState.SCHEDULED else r.state,
                r.created,
                ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())),
            ]
            for r in rows
        ],
    )


@campaigns_app.command("cancel")
def campaigns_cancel(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
    under_sender: Annotated[
        bool,
        typer.Option(
            "--under-sender",
            help="Also while a live process sends it: it stops within a second and skips the rest (as the console).",
        ),
    ] = False,
) -> None:
    """Stop a campaign for good: whoever it has not reached yet is skipped (refused while it is being sent, unless
    --under-sender). A scheduled campaign cancelled before it reached anyone can be scheduled or sent again.

    Example: mailer campaigns cancel 1
    """
    from mailer.operations import cli_actor

    with open_store(ctx) as store:
        found = store.campaigns.get(campaign)
        try:
            skipped = store.campaigns.cancel(found.id, under_sender=under_sender)
        except CampaignBusy as busy:
            raise CampaignBusy(
                f"{busy}; or cancel it under that sender: mailer campaigns cancel {found.id} --under-sender"
            ) from None
        sent = store.deliveries.counts(found.id).get(DeliveryStatus.SENT, 0)
        detail = "its sender stops and skips the rest" if skipped is None else f"{skipped} recipient(s) skipped"
        store.audit.record(cli_actor(), "cancel", campaign_id=found.id, detail=detail)
    if skipped is None:
        say(
            out(),
            f"campaign {found.id} cancelled: its sender stops within a second and skips whoever it has not reached "
            f"({sent} had it so far; see: mailer campaigns show {found.id})",
        )
        return
    say(
        out(),
        f"campaign {found.id} cancelled: {skipped} recipient(s) not reached are skipped, {sent} had it",
    )


@campaigns_app.command("pause")
def campaigns_pause(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
) -> None:
    """Hold a campaign: its sender stops taking recipients within a second and waits; nobody sends it until resumed.

    Example: mailer campaigns pause 1
    """
    from mailer.operations import cli_actor

    with open_store(ctx) as store:
        found = store.campaigns.get(campaign)
        store.campaigns.pause(found.id)
        store.audit.record(cli_actor(), "pause", campaign_id=found.id, detail=f"campaign {found.id} paused")
        counts, waiting = store.deliveries.counts(found.id), store.deliveries.waiting(found.id)
    say(
        out(),
        f"campaign {found.id} paused with {counts.get(DeliveryStatus.SENT, 0)} sent and {waiting} waiting; "
        f"go on with: mailer campaigns resume {found.id}",
    )


@campaigns_app.command("resume")
def campaigns_resume(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
) -> None:
    """Lift a pause: a sender that waits goes on where it stopped (with none running: mailer retry ID).

    Example: mailer campaigns resume 1
    """
    from mailer.operations import cli_actor

    with open_store(ctx) as store:
        found = store.campaigns.get(campaign)
        store.campaigns.resume(found.id)
        store.audit.record(cli_actor(), "resume", campaign_id=found.id, detail=f"campaign {found.id} resumed")
    say(
        out(),
        f"campaign {found.id} resumed: a sender that waits goes on; with none running, send the rest with: "
        f"mailer retry {found.id}",
    )


LOG_COLUMNS = ["email", "status", "attempts", "smtp_code", "smtp_reply", "message_id", "queued", "updated"]


@app.command()
def log(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. deferred or failed.")] = None,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="The table shows the newest N (--csv and --json: all).")
    ] = 50,
) -> None:
    """One row per recipient: status, attempts, last SMTP reply, Message-ID, times (the table: the newest 50).

    Example: mailer log 1 --status failed
    """
    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    if status and status not in tuple(DeliveryStatus):
        raise typer.BadParameter(f"must be one of {', '.join(DeliveryStatus)}", param_hint="--status")
    wanted = DeliveryStatus(status) if status else None
    from mailer.campaign import stored_audience

    with open_store(ctx) as store:
        found = store.campaigns.get(campaign)
        if as_json:
            stream_json(
                {k: getattr(r, k) for k in [*LOG_COLUMNS, "next_attempt"]}
                for r in store.deliveries.log(found.id, wanted)
            )
        elif as_csv:
            from mailer.spreadsheet import SpreadsheetWriter

            writer = SpreadsheetWriter(environment().stdout)
            writer.writerow(LOG_COLUMNS)
            for r in store.deliveries.log(found.id, wanted):
                writer.writerow([getattr(r, k) for k in LOG_COLUMNS])
        else:
            # The newest first and only `limit` of them: a table of a million rows is neither read nor printed.
            rows = store.reports.page(found.id, status=wanted, limit=limit)
            counts = store.deliveries.counts(found.id)
            total = counts.get(wanted, 0) if wanted else sum(counts.values())
            table(
                ["email", "status", "tries", "code", "reply", "message-id", "updated"],
                [
                    [r.email, r.status, r.attempts, r.smtp_code, r.smtp_reply[:60], r.message_id, r.updated]
                    for r in rows
                ],
                title=f"campaign {found.id}: {found.subject} ({stored_audience(store, found).describe()})",
            )
            if total > len(rows):
                which = f" {wanted}" if wanted else ""
                more = f"mailer log {found.id}" + (f" --status {wanted}" if wanted else "")
                say(
                    out(),
                    f"the newest {len(rows)} of {total}{which} deliveries; all of them: {more} --csv (or --json, "
                    f"or --limit N)",
                )
