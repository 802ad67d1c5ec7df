"""`mailer subs`, `mailer unsubscribe` and `mailer suppressions`: who is on a list, who left, and who is
never mailed. Commands only: each parses, calls one service and prints."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from mailer.cli.common import (
    JsonOpt,
    ListOpt,
    app,
    open_store,
    print_json,
    subs_app,
    suppressions_app,
    table,
)
from mailer.cli.shell import environment, err, out, say
from mailer.errors import MailerError
from mailer.exit_codes import ExitCode


@subs_app.command("add")
def subs_add(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="Email address.")],
    list_name: ListOpt,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
) -> None:
    """Add one subscriber (or update their name).

    Example: mailer subs add wang@example.org --list bulletin --name 王小明
    """
    from mailer.subscriptions import add_subscriber

    with open_store(ctx) as store:
        sub, added = add_subscriber(store, list_name, email, name)
    out().print(f"{'added' if added else 'updated'} {sub.email} ({sub.status})")


@subs_app.command("import")
def subs_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV with a header row: email, optional name, other columns.")],
    list_name: ListOpt,
) -> None:
    """Import subscribers from CSV (UTF-8 or GB18030); bad rows are reported, good rows import.

    Example: mailer subs import subscribers/sample.csv --list bulletin
    """
    from mailer.addresses import DELIMITER_NAMES
    from mailer.subscriptions import import_csv

    with open_store(ctx) as store:
        result = import_csv(store, list_name, file)
    if result.encoding == "gb18030" or result.delimiter != ",":
        # Not silent: a file that is neither UTF-8 nor comma-separated says how it was read.
        how = [
            *(["GB18030"] if result.encoding == "gb18030" else []),
            *([f"{DELIMITER_NAMES[result.delimiter]}-separated"] if result.delimiter != "," else []),
        ]
        say(err(), f"note: read {file} as {', '.join(how)}")
    for problem in result.problems:
        say(err(), f"{file} {problem}")
    suppressed = (
        f", {result.suppressed} suppressed (listed, never mailed: see mailer suppressions ls)"
        if result.suppressed
        else ""
    )
    say(
        out(),
        f"imported {file}: {result.added} added, {result.updated} updated, {result.kept} kept as unsubscribed/"
        f"bounced{suppressed}, {len(result.problems)} rejected",
    )
    if result.problems:
        raise typer.Exit(ExitCode.ERROR)


@subs_app.command("ls")
def subs_ls(
    ctx: typer.Context,
    list_name: ListOpt,
    status: Annotated[
        str | None, typer.Option(help="Only this status: active, pending, unsubscribed, bounced.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List subscribers.

    Example: mailer subs ls --list bulletin --status active
    """
    from mailer.subscriptions import subscribers

    with open_store(ctx) as store:
        rows = subscribers(store, list_name, status)
        # Suppressed addresses (bounced or complained, on any list) are never mailed whatever their status says.
        suppressed = {row.email: row.reason for row in store.suppressions.all()}
        if as_json:
            print_json(
                [
                    {
                        "email": s.email,
                        "name": s.name,
                        "status": s.status,
                        "suppressed": suppressed.get(s.email),
                        "attrs": s.attrs,
                    }
                    for s in rows
                ]
            )
            return
        table(
            ["email", "name", "status", "suppressed"],
            [[s.email, s.name, s.status, suppressed.get(s.email, "")] for s in rows],
        )


@subs_app.command("export")
def subs_export(
    ctx: typer.Context,
    list_name: ListOpt,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file (default stdout).")] = None,
) -> None:
    """Export a list as CSV (email, name, status, attributes).

    Example: mailer subs export --list bulletin -o bulletin.csv
    """
    from mailer.subscriptions import export_csv

    with open_store(ctx) as store:
        chunks = export_csv(store, list_name)
        if output is None:
            for chunk in chunks:
                environment().stdout.write(chunk)
            return
        # Written beside the target and renamed at the end: a failure half-way leaves no half an export behind.
        partial = output.with_name(f".{output.name}.part")
        try:
            with partial.open("w", encoding="utf-8", newline="") as fh:
                for chunk in chunks:
                    fh.write(chunk)
            partial.replace(output)
        except OSError as exc:
            raise MailerError(f"cannot write {output}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
    say(err(), f"wrote {output}")


@subs_app.command("remove")
def subs_remove(ctx: typer.Context, email: Annotated[str, typer.Argument()], list_name: ListOpt) -> None:
    """Remove a subscriber from a list (kept as unsubscribed if they appear in a delivery log).

    Example: mailer subs remove wang@example.org --list bulletin
    """
    from mailer.subscriptions import remove_subscriber

    with open_store(ctx) as store:
        remove_subscriber(store, list_name, email)
    out().print(f"removed {email}")


@app.command()
def unsubscribe(ctx: typer.Context, email: Annotated[str, typer.Argument()], list_name: ListOpt) -> None:
    """Unsubscribe someone by hand (recorded as done by ops).

    Example: mailer unsubscribe wang@example.org --list bulletin
    """
    from mailer.addresses import normalise_address
    from mailer.operations import cli_actor
    from mailer.subscriptions import unsubscribe_by_hand

    with open_store(ctx) as store:
        changed = unsubscribe_by_hand(store, list_name, email)
        if changed:
            detail = f"{normalise_address(email)} unsubscribed from {list_name}"
            store.audit.record(cli_actor(), "unsubscribe", email=normalise_address(email), detail=detail)
    out().print(f"{email} {'unsubscribed' if changed else 'was already unsubscribed'}")


@suppressions_app.command("ls")
def suppressions_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every suppressed address with the reason and when.

    Example: mailer suppressions ls --json
    """
    with open_store(ctx) as store:
        rows = store.suppressions.all()
    if as_json:
        print_json([dataclasses.asdict(r) for r in rows])
        return
    table(["email", "reason", "detail", "since"], [[r.email, r.reason, r.detail, r.created] for r in rows])


@suppressions_app.command("remove")
def suppressions_remove(ctx: typer.Context, email: Annotated[str, typer.Argument()]) -> None:
    """Lift a suppression; subscriptions it had marked bounced become active again.

    Example: mailer suppressions remove someone@example.org
    """
    from mailer.addresses import normalise_address
    from mailer.operations import cli_actor

    with open_store(ctx) as store:
        store.suppressions.remove(normalise_address(email))
        detail = f"suppression of {normalise_address(email)} lifted"
        store.audit.record(cli_actor(), "lift-suppression", email=normalise_address(email), detail=detail)
    say(out(), f"{email} may be mailed again")
