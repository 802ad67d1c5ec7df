"""`mailer render`, `mailer send` and `mailer retry`: an issue to files, to a list, and again to whoever still
waits. Commands only: the services are sample.py and send.py."""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from mailer.cli.common import (
    ListsOpt,
    RichProgress,
    SegmentOpt,
    TemplatesOpt,
    WhereOpt,
    app,
    finish_send,
    open_store,
    open_store_for,
    run_service,
    settings,
)
from mailer.cli.shell import environment, err, out, say
from mailer.errors import MailerError, UsageError
from mailer.exit_codes import ExitCode

# Unset: `concurrency` in mailer.toml, 4 by default.
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option(min=1, max=64, help="SMTP sessions at once.  [default: concurrency in mailer.toml, else 4]"),
]


DEFAULT_MAX_WAIT = 300.0


def resume_command(ctx: typer.Context, command: list[str], **options: object) -> str:
    """The command that goes on where this run stopped: this one, with the options it was given (a resume at
    another relay, rate or database would not be the same run), shell-quoted to paste."""
    words = ["mailer"]
    db = ctx.find_root().params.get("db")
    if db is not None:
        words += ["--db", str(db)]
    words += command
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list):  # given again for each (--list a --list b)
            for item in value:
                words += [flag, str(item)]
        elif value is not None and value is not False:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


@app.command()
def render(
    ctx: typer.Context,
    issue: Annotated[Path, typer.Argument(help="The issue: Markdown with front matter.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for <slug>.html, .txt and .eml.")] = Path(
        "out"
    ),
    list_name: Annotated[str | None, typer.Option("--list", "-l", help="Render for this list's settings.")] = None,
    templates: TemplatesOpt = None,
    where: WhereOpt = None,
    segment: SegmentOpt = None,
) -> None:
    """Render an issue to HTML, plain text and a sample .eml.

    Example: mailer render issues/sample.md -o out
    """
    from mailer.sample import render_to_dir

    config = settings(ctx, templates)

    def warn(warning: str) -> None:
        say(err(), f"warning: {warning}")

    with open_store_for(config, list_name) as store:
        try:
            paths = render_to_dir(issue, output, config, store, list_name, warn, (where, segment))
        except OSError as exc:
            raise MailerError(f"cannot write to {output}: {exc.strerror}") from None
    for path in paths:
        say(out(), f"wrote {path} ({path.stat().st_size:,} bytes)")


@app.command()
def send(
    ctx: typer.Context,
    issue: Annotated[Path, typer.Argument(help="The issue: Markdown with front matter.")],
    lists: ListsOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Render and count recipients; send nothing.")] = False,
    test: Annotated[str | None, typer.Option("--test", help="Send one test message to this address only.")] = None,
    concurrency: ConcurrencyOpt = None,
    rate: Annotated[float | None, typer.Option(min=0.01, help="At most this many messages per second.")] = None,
    max_wait: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds to wait in this run for deferred recipients' retry times (the rest: mailer retry)."
        ),
    ] = DEFAULT_MAX_WAIT,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Sending processes (one per core is plenty).")] = 1,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    smtp_host: Annotated[str | None, typer.Option(help="SMTP host (env MAILER_SMTP_HOST).")] = None,
    smtp_port: Annotated[int | None, typer.Option(min=1, max=65535, help="SMTP port (env MAILER_SMTP_PORT).")] = None,
    templates: TemplatesOpt = None,
    where: WhereOpt = None,
    segment: SegmentOpt = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help='Schedule it: "2026-12-05 09:00" (in --tz), ISO 8601 with an offset, or now; mailer run sends it.',
        ),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option("--tz", help="Time zone of --at, e.g. Asia/Shanghai (default: the list's, mailer.toml's, UTC)."),
    ] = None,
    include_new: Annotated[
        bool,
        typer.Option("--include-new", help="For a finished campaign: send it to who joined or started matching since."),
    ] = False,
) -> None:
    """Send an issue to one or more lists, or to part of them (running it again resumes the same campaign).

    Example: mailer send issues/sample.md --list bulletin --test me@example.org
    """
    from mailer.addresses import normalise_address
    from mailer.clock import utcnow
    from mailer.engine import SendOptions
    from mailer.runner import zone_for
    from mailer.schedule import describe, parse_send_at
    from mailer.send import send_issue
    from mailer.smtp import relays

    if not (dry_run or test or yes or environment().stdin.isatty()):
        # From cron or a script nobody can answer the question: mailing a whole list takes saying so.
        raise UsageError(
            f"mailer send asks before mailing a list, and stdin is not a terminal: add --yes to send "
            f"{issue} to list {', '.join(lists)} (or --dry-run, or --test EMAIL); nothing was sent"
        )
    if at is not None and (dry_run or test):
        raise UsageError("--at schedules a real send: leave out --dry-run and --test")
    config = settings(ctx, templates)
    options = SendOptions.for_config(
        config,
        dry_run=dry_run,
        test_email=normalise_address(test) if test else None,
        concurrency=concurrency or config.concurrency,
        rate=rate,
        max_wait=max_wait,
        workers=workers,
    )
    with open_store(ctx) as store:
        zone = zone_for(store, config, lists[0] if lists else None, tz)
        send_at = parse_send_at(at, zone, utcnow()) if at and at.strip().lower() != "now" else None
        smtp = relays(config, smtp_host, smtp_port)
        if not (dry_run or test or yes):
            counted = run_service(
                send_issue(
                    store,
                    config,
                    issue,
                    lists,
                    replace(options, dry_run=True),
                    smtp,
                    where=where,
                    segment=segment,
                    include_new=include_new,
                )
            )
            when = f" at {describe(send_at, zone)}" if send_at else ""
            if not typer.confirm(f"Send {issue} to {counted.total} recipients of {counted.audience}{when}?"):
                raise typer.Exit(ExitCode.ERROR)
        stop = asyncio.Event()
        progress = RichProgress(err().is_terminal and not dry_run)
        try:
            again = resume_command(
                ctx,
                ["send", str(issue)],
                list=lists,
                where=where,
                segment=segment,
                concurrency=concurrency,
                rate=rate,
                max_wait=max_wait if max_wait != DEFAULT_MAX_WAIT else None,
                workers=workers if workers != 1 else None,
                smtp_host=smtp_host,
                smtp_port=smtp_port,
                templates=templates,
                yes=yes,
            )
            summary = run_service(
                send_issue(
                    store,
                    config,
                    issue,
                    lists,
                    options,
                    smtp,
                    progress,
                    stop,
                    where=where,
                    segment=segment,
                    include_new=include_new,
                    send_at=send_at,
                    resume=again,
                ),
                stop,
            )
        finally:
            progress.stop()
    if send_at is not None:
        for warning in summary.warnings:
            say(err(), f"warning: {warning}")
        say(
            out(),
            f"campaign {summary.campaign_id} scheduled for {describe(send_at, zone)}: {summary.total} recipient(s) "
            "match now (who they are is settled when it starts); 'mailer run' sends it",
        )
        return
    finish_send(summary)


@app.command()
def retry(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
    due_only: Annotated[bool, typer.Option("--due-only", help="Only those whose backoff time has passed.")] = False,
    concurrency: ConcurrencyOpt = None,
    rate: Annotated[float | None, typer.Option(min=0.01)] = None,
    max_wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for further retries in this run.")
    ] = DEFAULT_MAX_WAIT,
    failed: Annotated[
        bool,
        typer.Option(
            "--failed",
            help="Also queue the failed recipients again (not those who unsubscribed or were suppressed since).",
        ),
    ] = False,
) -> None:
    """Send again to the deferred (and what a stop left queued) recipients of a campaign; with --failed, to its
    failed ones too, on purpose (after fixing what refused them).

    Example: mailer retry 1 --due-only
    """
    from mailer.engine import SendOptions
    from mailer.send import retry_campaign
    from mailer.smtp import relays

    config = settings(ctx)
    stop = asyncio.Event()
    progress = RichProgress(err().is_terminal)
    options = SendOptions.for_config(
        config, concurrency=concurrency or config.concurrency, rate=rate, max_wait=max_wait
    )
    with open_store(ctx) as store:
        try:
            again = resume_command(
                ctx,
                ["retry", campaign],
                due_only=due_only,
                concurrency=concurrency,
                rate=rate,
                max_wait=max_wait if max_wait != DEFAULT_MAX_WAIT else None,
            )
            summary = run_service(
                retry_campaign(
                    store,
                    config,
                    campaign,
                    options,
                    relays(config),
                    progress,
                    stop,
                    due_only=due_only,
                    failed=failed,
                    resume=again,
                ),
                stop,
            )
        finally:
            progress.stop()
    finish_send(summary)
