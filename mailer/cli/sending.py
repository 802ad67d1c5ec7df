"""`mailer render`, `mailer send` and `mailer retry`: an issue to files, to a list, and again to whoever still
waits. Commands only: the services are sample.py and send.py."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import Annotated

import typer

from mailer.cli.common import (
    ListOpt,
    RichProgress,
    TemplatesOpt,
    app,
    finish_send,
    open_store,
    open_store_for,
    run_service,
    settings,
)
from mailer.cli.shell import environment, err, out
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
) -> None:
    """Render an issue to HTML, plain text and a sample .eml.

    Example: mailer render issues/sample.md -o out
    """
    from mailer.sample import render_to_dir

    config = settings(ctx, templates)

    def warn(warning: str) -> None:
        err().print(f"warning: {warning}", markup=False, highlight=False)

    with open_store_for(config, list_name) as store:
        try:
            paths = render_to_dir(issue, output, config, store, list_name, warn)
        except OSError as exc:
            raise MailerError(f"cannot write to {output}: {exc.strerror}") from None
    for path in paths:
        out().print(f"wrote {path} ({path.stat().st_size:,} bytes)", markup=False, highlight=False)


@app.command()
def send(
    ctx: typer.Context,
    issue: Annotated[Path, typer.Argument(help="The issue: Markdown with front matter.")],
    list_name: ListOpt,
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
) -> None:
    """Send an issue to a list (running it again resumes the same campaign).

    Example: mailer send issues/sample.md --list bulletin --test me@example.org
    """
    from mailer.addresses import normalise_address
    from mailer.engine import SendOptions
    from mailer.send import send_issue
    from mailer.smtp import relays

    if not (dry_run or test or yes or environment().stdin.isatty()):
        # From cron or a script nobody can answer the question: mailing a whole list takes saying so.
        raise UsageError(
            f"mailer send asks before mailing a list, and stdin is not a terminal: add --yes to send "
            f"{issue} to list {list_name} (or --dry-run, or --test EMAIL); nothing was sent"
        )
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
        if not (dry_run or test or yes):
            total = store.subscribers.count_recipients(store.lists.get(list_name).id)
            if not typer.confirm(f"Send {issue} to {total} recipients of {list_name}?"):
                raise typer.Exit(ExitCode.ERROR)
        stop = asyncio.Event()
        progress = RichProgress(err().is_terminal and not dry_run)
        try:
            again = resume_command(
                ctx,
                ["send", str(issue), "--list", list_name],
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
                    list_name,
                    options,
                    relays(config, smtp_host, smtp_port),
                    progress,
                    stop,
                    resume=again,
                ),
                stop,
            )
        finally:
            progress.stop()
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
