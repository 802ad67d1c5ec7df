"""The `mailer` command: parse arguments, call one service function, print, map errors to exit codes.

The only module that calls asyncio.run, prints, reads stdin or decides an exit code. Human output goes through rich;
`--json` / `--csv` machine output goes to stdout alone, progress and diagnostics to stderr."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from mailer import __version__
from mailer.config import Config, ensure_secret, load_config
from mailer.errors import MailerError, UsageError
from mailer.exit_codes import ExitCode
from mailer.message import clean_header_text
from mailer.models import DeliveryStatus, SendSummary
from mailer.store import Store, describe_database_error

app = typer.Typer(
    help="Email newsletters: Markdown issues, subscriber lists, one correct message per recipient.\n\n"
    "Example: mailer demo",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold passwords
    add_completion=False,
    rich_markup_mode=None,
)
lists_app = typer.Typer(help="Mailing lists.\n\nExample: mailer lists ls", no_args_is_help=True)
subs_app = typer.Typer(help="Subscribers of a list.\n\nExample: mailer subs ls --list bulletin", no_args_is_help=True)
campaigns_app = typer.Typer(help="Campaigns (one per issue and list).\n\nExample: mailer campaigns ls",
                           no_args_is_help=True)
app.add_typer(lists_app, name="lists")
app.add_typer(subs_app, name="subs")
app.add_typer(campaigns_app, name="campaigns")

# Piped output is not cut to 80 columns: a log's addresses and Message-IDs stay whole.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")
_session: dict[str, Path] = {}

ListOpt = Annotated[str, typer.Option("--list", "-l", help="List name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON array on stdout.")]
TemplatesOpt = Annotated[Path | None, typer.Option(
    "--templates", exists=True, file_okay=False, dir_okay=True,
    help="Folder of layouts (issue.html.j2, issue.txt.j2, web/page.html.j2); a layout it lacks is the built-in "
    "one. Default: 'templates' in mailer.toml, else ./templates/ when it exists.")]


def _config(ctx: typer.Context, templates: Path | None = None) -> Config:
    """The settings of this run; `templates` is a command's --templates, which wins over mailer.toml."""
    config: Config = ctx.obj["config"]
    return config.with_overrides(templates=templates)


def _store(ctx: typer.Context) -> Store:
    return Store.open(_config(ctx).db_path)


def _optional_store(config: Config, list_name: str | None) -> contextlib.AbstractContextManager[Store | None]:
    """The database when a command is asked for a list's settings (render, preview --list); none otherwise."""
    return Store.open(config.db_path) if list_name else contextlib.nullcontext()


def _run(coro: Coroutine[Any, Any, T], stop: asyncio.Event | None = None) -> T:
    """Run a service coroutine; SIGINT/SIGTERM set `stop` so in-flight work finishes before we exit."""
    from mailer.workers import run

    def stopping() -> None:
        # Said at once: with a low --rate or a slow relay the in-flight messages may take a while.
        err.print("stopping: no new recipients; in-flight messages finish and are recorded", markup=False)

    return run(coro, stop, stopping)


def _print_json(rows: list[dict[str, Any]]) -> None:
    sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")


def _table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """Cells are data, never rich markup (a name like `[/]` would crash the table, `[link=…]` would make one), and
    what came from outside (names, SMTP replies, bounce reports) loses control characters and terminal escapes."""
    table = Table(*columns, title=Text(clean_header_text(title)) if title else None, show_lines=False)
    for row in rows:
        table.add_row(*(Text("" if v is None else clean_header_text(v)) for v in row))
    out.print(table)


def _show_version(value: bool) -> None:
    if value:
        out.print(f"mailer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite database (env MAILER_DB, default ./mailer.db).")]
    = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_show_version)] = False,  # eager: no command needed
) -> None:
    """Email newsletters from Markdown to every inbox.

    Example: mailer demo
    """
    config = load_config(db_path=db)
    for warning in config.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False)
    ctx.obj = {"config": config}
    _session["db"] = config.db_path  # for main(): an SQLite failure names the database it is about


@app.command()
def init(ctx: typer.Context) -> None:
    """Create or migrate the database and the signing secret; safe to run again.

    Example: mailer init
    """
    config = ensure_secret(_config(ctx))
    with Store.open(config.db_path, must_exist=False) as store:
        created = store.init()
    out.print(f"{'created' if created else 'up to date'}: {config.db_path}")


# ---- lists -----------------------------------------------------------------------------------------------------


@lists_app.command("create")
def lists_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Short name, e.g. bulletin.")],
    title: Annotated[str, typer.Option(help="Title shown to subscribers.")] = "",
    from_: Annotated[str, typer.Option("--from", help='From header, "Name <addr>".')] = "",
    reply_to: Annotated[str, typer.Option("--reply-to", help="Reply-To address.")] = "",
    lang: Annotated[str, typer.Option(help="Language of the list's pages and defaults: zh or en.")] = "zh",
) -> None:
    """Create a mailing list.

    Example: mailer lists create bulletin --title 知识产权运营简报 --from "简报 <news@example.org>" --lang zh
    """
    from mailer.subscriptions import create_list

    with _store(ctx) as store:
        created = create_list(store, name, title, from_, reply_to, lang)
    out.print(f"created list {created.name}")


@lists_app.command("ls")
def lists_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show the lists with their subscriber counts.

    Example: mailer lists ls
    """
    with _store(ctx) as store:
        rows = store.lists.with_counts()
    if as_json:
        _print_json([{"name": r.name, "title": r.title, "from": r.from_addr, "lang": r.lang, "created": r.created,
                      "active": r.active, "total": r.total} for r in rows])
        return
    _table(["name", "title", "from", "lang", "active", "total"],
           [[r.name, r.title, r.from_addr, r.lang, r.active, r.total] for r in rows])


# ---- subscribers -------------------------------------------------------------------------------------------------


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

    with _store(ctx) as store:
        sub, added = add_subscriber(store, list_name, email, name)
    out.print(f"{'added' if added else 'updated'} {sub.email} ({sub.status})")


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

    with _store(ctx) as store:
        result = import_csv(store, list_name, file)
    if result.encoding == "gb18030" or result.delimiter != ",":
        # Not silent: a file that is neither UTF-8 nor comma-separated says how it was read.
        how = [*(["GB18030"] if result.encoding == "gb18030" else []),
               *([f"{DELIMITER_NAMES[result.delimiter]}-separated"] if result.delimiter != "," else [])]
        err.print(f"note: read {file} as {', '.join(how)}", markup=False, highlight=False)
    for problem in result.problems:
        err.print(f"{file} {problem}", markup=False, highlight=False)
    suppressed = f", {result.suppressed} suppressed (listed, never mailed: see mailer suppressions ls)" \
        if result.suppressed else ""
    out.print(
        f"imported {file}: {result.added} added, {result.updated} updated, {result.kept} kept as unsubscribed/"
        f"bounced{suppressed}, {len(result.problems)} rejected", markup=False, highlight=False,
    )
    if result.problems:
        raise typer.Exit(ExitCode.ERROR)


@subs_app.command("ls")
def subs_ls(
    ctx: typer.Context,
    list_name: ListOpt,
    status: Annotated[str | None, typer.Option(help="Only this status: active, pending, unsubscribed, bounced.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """List subscribers.

    Example: mailer subs ls --list bulletin --status active
    """
    from mailer.subscriptions import subscribers

    with _store(ctx) as store:
        rows = subscribers(store, list_name, status)
        # Suppressed addresses (bounced or complained, on any list) are never mailed whatever their status says.
        suppressed = {row.email: row.reason for row in store.suppressions.all()}
        if as_json:
            _print_json([{"email": s.email, "name": s.name, "status": s.status, "suppressed": suppressed.get(s.email),
                          "attrs": s.attrs} for s in rows])
            return
        _table(["email", "name", "status", "suppressed"],
               [[s.email, s.name, s.status, suppressed.get(s.email, "")] for s in rows])


@subs_app.command("export")
def subs_export(
    ctx: typer.Context,
    list_name: ListOpt,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file (default stdout).")]
    = None,
) -> None:
    """Export a list as CSV (email, name, status, attributes).

    Example: mailer subs export --list bulletin -o bulletin.csv
    """
    from mailer.subscriptions import export_csv

    with _store(ctx) as store:
        chunks = export_csv(store, list_name)
        if output is None:
            for chunk in chunks:
                sys.stdout.write(chunk)
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
    err.print(f"wrote {output}", markup=False, highlight=False)


@subs_app.command("remove")
def subs_remove(ctx: typer.Context, email: Annotated[str, typer.Argument()], list_name: ListOpt) -> None:
    """Remove a subscriber from a list (kept as unsubscribed if they appear in a delivery log).

    Example: mailer subs remove wang@example.org --list bulletin
    """
    from mailer.subscriptions import remove_subscriber

    with _store(ctx) as store:
        remove_subscriber(store, list_name, email)
    out.print(f"removed {email}")


@app.command()
def unsubscribe(ctx: typer.Context, email: Annotated[str, typer.Argument()], list_name: ListOpt) -> None:
    """Unsubscribe someone by hand (recorded as done by ops).

    Example: mailer unsubscribe wang@example.org --list bulletin
    """
    from mailer.subscriptions import unsubscribe_by_hand

    with _store(ctx) as store:
        changed = unsubscribe_by_hand(store, list_name, email)
    out.print(f"{email} {'unsubscribed' if changed else 'was already unsubscribed'}")


# ---- rendering and sending -----------------------------------------------------------------------------------


@app.command()
def render(
    ctx: typer.Context,
    issue: Annotated[Path, typer.Argument(help="The issue: Markdown with front matter.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for <slug>.html, .txt and .eml.")]
    = Path("out"),
    list_name: Annotated[str | None, typer.Option("--list", "-l", help="Render for this list's settings.")] = None,
    templates: TemplatesOpt = None,
) -> None:
    """Render an issue to HTML, plain text and a sample .eml.

    Example: mailer render issues/sample.md -o out
    """
    from mailer.sample import render_to_dir

    config = _config(ctx, templates)
    def warn(warning: str) -> None:
        err.print(f"warning: {warning}", markup=False, highlight=False)

    with _optional_store(config, list_name) as store:
        try:
            paths = render_to_dir(issue, output, config, store, list_name, warn)
        except OSError as exc:
            raise MailerError(f"cannot write to {output}: {exc.strerror}") from None
    for path in paths:
        out.print(f"wrote {path} ({path.stat().st_size:,} bytes)", markup=False, highlight=False)


class _RichProgress:
    """A progress bar on a TTY; nothing otherwise (the summary line says it all)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Progress | None = None
        self.task: Any = None
        self.counts: dict[str, int] = {}

    def start(self, total: int, done: int) -> None:
        if not self.enabled:
            return
        self.bar = Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                            TimeRemainingColumn(), console=err, transient=True)
        self.bar.start()
        self.task = self.bar.add_task("", total=total, completed=done)

    def advance(self, status: DeliveryStatus, email: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=" ".join(f"{k} {v}" for k, v in self.counts.items()))

    def note(self, text: str) -> None:
        """A line on stderr (above the bar on a TTY): why nothing moves for a while."""
        (self.bar.console if self.bar is not None else err).print(text, markup=False, highlight=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _summary_line(summary: SendSummary) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "nothing to send"
    if summary.dry_run:
        return f"dry run: would send to {summary.total} recipients; nothing was sent"
    if summary.test:
        return (f"test message (campaign {summary.campaign_id}, not counted in the issue's): {counts} in "
                f"{summary.elapsed:.1f}s; see: mailer log {summary.campaign_id}")
    recipients = "1 recipient" if summary.total == 1 else f"{summary.total} recipients"
    return f"campaign {summary.campaign_id}: {recipients}: {counts} in {summary.elapsed:.1f}s"


def _finish_send(summary: SendSummary) -> None:
    for warning in summary.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False)
    out.print(_summary_line(summary), markup=False, highlight=False)
    if summary.stopped:
        err.print(f"error: {summary.stopped}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(summary.stop_code)
    if summary.interrupted:
        err.print("interrupted: run the same command again to resume", markup=False)
        raise typer.Exit(ExitCode.INTERRUPTED)
    if summary.failed:
        raise typer.Exit(ExitCode.SOME_FAILED)


@app.command()
def send(
    ctx: typer.Context,
    issue: Annotated[Path, typer.Argument(help="The issue: Markdown with front matter.")],
    list_name: ListOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Render and count recipients; send nothing.")] = False,
    test: Annotated[str | None, typer.Option("--test", help="Send one test message to this address only.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="SMTP sessions at once.")] = 4,
    rate: Annotated[float | None, typer.Option(min=0.01, help="At most this many messages per second.")] = None,
    max_wait: Annotated[float, typer.Option(min=0, help="Seconds to wait in this run for deferred recipients' "
                                            "retry times (the rest: mailer retry).")] = 300.0,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Sending processes (one per core is plenty).")] = 1,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    smtp_host: Annotated[str | None, typer.Option(help="SMTP host (env MAILER_SMTP_HOST).")] = None,
    smtp_port: Annotated[int | None, typer.Option(min=1, max=65535, help="SMTP port (env MAILER_SMTP_PORT).")]
    = None,
    templates: TemplatesOpt = None,
) -> None:
    """Send an issue to a list (running it again resumes the same campaign).

    Example: mailer send issues/sample.md --list bulletin --test me@example.org
    """
    from mailer.addresses import normalise_address
    from mailer.engine import SendOptions
    from mailer.send import send_issue
    from mailer.smtp import relays

    if not (dry_run or test or yes or sys.stdin.isatty()):
        # From cron or a script nobody can answer the question: mailing a whole list takes saying so.
        raise UsageError(f"mailer send asks before mailing a list, and stdin is not a terminal: add --yes to send "
                         f"{issue} to list {list_name} (or --dry-run, or --test EMAIL); nothing was sent")
    config = _config(ctx, templates)
    options = SendOptions.for_config(config, dry_run=dry_run, test_email=normalise_address(test) if test else None,
                                     concurrency=concurrency, rate=rate, max_wait=max_wait, workers=workers)
    with _store(ctx) as store:
        if not (dry_run or test or yes):
            total = store.subscribers.count_recipients(store.lists.get(list_name).id)
            if not typer.confirm(f"Send {issue} to {total} recipients of {list_name}?"):
                raise typer.Exit(ExitCode.ERROR)
        stop = asyncio.Event()
        progress = _RichProgress(err.is_terminal and not dry_run)
        try:
            summary = _run(send_issue(store, config, issue, list_name, options,
                                      relays(config, smtp_host, smtp_port), progress, stop), stop)
        finally:
            progress.stop()
    _finish_send(summary)


@app.command()
def retry(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
    due_only: Annotated[bool, typer.Option("--due-only", help="Only those whose backoff time has passed.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 4,
    rate: Annotated[float | None, typer.Option(min=0.01)] = None,
    max_wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for further retries in this run.")] = 300.0,
    failed: Annotated[bool, typer.Option("--failed", help="Also queue the failed recipients again (not those "
                                         "who unsubscribed or were suppressed since).")] = False,
) -> None:
    """Send again to the deferred (and what a stop left queued) recipients of a campaign; with --failed, to its
    failed ones too, on purpose (after fixing what refused them).

    Example: mailer retry 1 --due-only
    """
    from mailer.engine import SendOptions
    from mailer.send import retry_campaign
    from mailer.smtp import relays

    config = _config(ctx)
    stop = asyncio.Event()
    progress = _RichProgress(err.is_terminal)
    options = SendOptions.for_config(config, concurrency=concurrency, rate=rate, max_wait=max_wait)
    with _store(ctx) as store:
        try:
            summary = _run(retry_campaign(store, config, campaign, options, relays(config), progress, stop,
                                          due_only=due_only, failed=failed), stop)
        finally:
            progress.stop()
    _finish_send(summary)


# ---- campaigns and logs --------------------------------------------------------------------------------------


@campaigns_app.command("ls")
def campaigns_ls(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    tests: Annotated[bool, typer.Option("--tests", help="Include test sends.")] = False,
) -> None:
    """Each campaign with its delivery counts per status.

    Example: mailer campaigns ls --json
    """
    with _store(ctx) as store:
        rows = store.campaigns.with_counts(include_tests=tests)
    if as_json:
        _print_json([dataclasses.asdict(r) for r in rows])
        return
    _table(["id", "issue", "list", "created", "counts"],
           [[r.id, r.issue + (" (test)" if r.test else "") + (" (cancelled)" if r.cancelled else ""), r.list, r.created,
             ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items()))] for r in rows])


@campaigns_app.command("cancel")
def campaigns_cancel(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
) -> None:
    """Stop a campaign for good: whoever it has not reached yet is skipped (refused while it is being sent).

    Example: mailer campaigns cancel 1
    """
    with _store(ctx) as store:
        found = store.campaigns.get(campaign)
        skipped = store.campaigns.cancel(found.id)
        sent = store.deliveries.counts(found.id).get(DeliveryStatus.SENT, 0)
    out.print(f"campaign {found.id} cancelled: {skipped} recipient(s) not reached are skipped, {sent} had it",
              markup=False, highlight=False)


LOG_COLUMNS = ["email", "status", "attempts", "smtp_code", "smtp_reply", "message_id", "queued", "updated"]


@app.command()
def log(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. deferred or failed.")] = None,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout.")] = False,
) -> None:
    """One row per recipient: status, attempts, last SMTP reply, Message-ID, times.

    Example: mailer log 1 --status failed
    """
    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    if status and status not in tuple(DeliveryStatus):
        raise typer.BadParameter(f"must be one of {', '.join(DeliveryStatus)}", param_hint="--status")
    with _store(ctx) as store:
        found = store.campaigns.get(campaign)
        rows = store.deliveries.log(found.id, DeliveryStatus(status) if status else None)
        if as_json:
            _print_json([{k: getattr(r, k) for k in [*LOG_COLUMNS, "next_attempt"]} for r in rows])
        elif as_csv:
            from mailer.spreadsheet import SpreadsheetWriter

            writer = SpreadsheetWriter(sys.stdout)
            writer.writerow(LOG_COLUMNS)
            for r in rows:
                writer.writerow([getattr(r, k) for k in LOG_COLUMNS])
        else:
            _table(["email", "status", "tries", "code", "reply", "message-id", "updated"],
                   [[r.email, r.status, r.attempts, r.smtp_code, r.smtp_reply[:60], r.message_id, r.updated]
                    for r in rows], title=f"campaign {found.id}: {found.subject}")


# ---- subscriber side: web endpoints, returned mail ----------------------------------------------------------------


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8025,
    trusted_proxies: Annotated[str, typer.Option(
        "--trusted-proxies", envvar="MAILER_TRUSTED_PROXIES",
        help="Comma-separated proxy addresses whose X-Forwarded-For is believed.")] = "127.0.0.1",
    templates: TemplatesOpt = None,
) -> None:
    """Serve the subscriber pages: unsubscribe (with RFC 8058 one-click), sign-up with double opt-in, confirm.

    Links in mail point at MAILER_BASE_URL; run this behind a reverse proxy that terminates HTTPS there.

    Example: mailer serve --port 8025
    """
    from mailer.web import serve as run_server

    config = _config(ctx, templates)
    with Store.open(config.db_path) as store:  # a missing or uninitialised database is one clear line, before binding
        for row in store.lists.with_counts():
            if not row.from_addr:
                err.print(f"warning: list {row.name} has no From address: its sign-up form answers 'not "
                          "available' until it has one", markup=False, highlight=False)
    run_server(config, host, port, trusted_proxies, ready=lambda url: err.print(
        f"serving on {url} (links in mail use {config.base_url}); Ctrl-C stops", markup=False, highlight=False))


bounces_app = typer.Typer(help="Returned mail: bounces, complaints, mailto unsubscribes.\n\n"
                          "Example: mailer bounces scan bounces.mbox", no_args_is_help=True)
app.add_typer(bounces_app, name="bounces")


@bounces_app.command("scan")
def bounces_scan(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="An mbox file, a Maildir, a folder of .eml files or one .eml file.")],
    as_json: JsonOpt = False,
) -> None:
    """Read DSNs (RFC 3464 and common non-standard bounces), complaint reports and mails to the List-Unsubscribe
    mailto address; record each once. Hard bounces and complaints suppress the address; soft bounces are counted
    (MAILER_SOFT_BOUNCE_LIMIT, default 3, then suppressed). Reading the same mail again changes nothing.

    Example: mailer bounces scan /var/mail/bounces
    """
    from mailer.inbox import scan

    config = _config(ctx)
    with _store(ctx) as store:
        rows = scan(store, config.secret, path, config.soft_bounce_limit)
    if as_json:
        _print_json([{"origin": r.origin, "kind": r.kind, "email": r.email, "campaign": r.campaign,
                      "status": r.status, "result": r.result, "matched": r.matched} for r in rows])
        return
    _table(["read from", "kind", "email", "campaign", "status", "result"],
           [[r.origin, r.kind, r.email, r.campaign if r.campaign is not None else "", r.status, r.result]
            for r in rows], title=f"returned mail in {path}")
    matched = sum(r.matched for r in rows)
    err.print(f"{len(rows)} report(s): {matched} matched, {len(rows) - matched} not", markup=False, highlight=False)


# ---- trust and looks: DKIM keys, configuration doctor, previews -------------------------------------------------

dkim_app = typer.Typer(help="DKIM signing keys.\n\nExample: mailer dkim keygen --selector news2026 --domain "
                       "example.org", no_args_is_help=True)
app.add_typer(dkim_app, name="dkim")


@dkim_app.command("keygen")
def dkim_keygen(
    selector: Annotated[str, typer.Option(help="Selector: the name under _domainkey, e.g. news2026.")],
    domain: Annotated[str, typer.Option(help="Signing domain (d=); the From domain or its parent.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the key file.")] = Path("."),
) -> None:
    """Write a 2048-bit RSA key (mode 0600) as SELECTOR._domainkey.DOMAIN.pem and print the DNS TXT record.

    Example: mailer dkim keygen --selector news2026 --domain example.org -o keys
    """
    from mailer.dkim import generate_key

    key = generate_key(selector, domain, output)
    sys.stdout.write(key.record + "\n")
    name = key.record.split(" ", 1)[0]
    err.print(f"wrote {key.path} (mode 600). Publish the TXT record above at {name} (in a zone file, end the name "
              f"with a dot), then set MAILER_DKIM_KEY={key.path} MAILER_DKIM_SELECTOR={selector} "
              f"MAILER_DKIM_DOMAIN={domain} and check with: mailer doctor --dns", markup=False, highlight=False)


@app.command()
def doctor(
    ctx: typer.Context,
    dns: Annotated[bool, typer.Option("--dns", help="Also look up the published DKIM record.")] = False,
) -> None:
    """Check the configuration: database, secret, base URL, DKIM key and alignment, SMTP and TLS; one line each.

    Exits 1 when any line is an error.

    Example: mailer doctor
    """
    from mailer.dkim import dns_txt
    from mailer.doctor import Level, run_checks
    from mailer.smtp import relays

    config = _config(ctx)
    findings = _run(run_checks(config, relays(config), dns_txt if dns else None))
    for finding in findings:
        out.print(str(finding), markup=False, highlight=False)
    if any(finding.level == Level.ERROR for finding in findings):
        raise typer.Exit(ExitCode.ERROR)


@app.command()
def preview(
    ctx: typer.Context,
    issue: Annotated[Path, typer.Argument(help="The issue: Markdown with front matter.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the PNG screenshots.")] = Path("preview"),
    list_name: Annotated[str | None, typer.Option("--list", "-l", help="Render for this list's settings and its "
                                                  "first subscriber.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Serve the issue on 127.0.0.1 with live reload instead, "
                                        "re-rendering on every save, until Ctrl-C.")] = False,
    port: Annotated[int, typer.Option(help="Port of --watch.", min=1, max=65535)] = 8026,
    offline: Annotated[bool, typer.Option("--offline", help="Load no remote images (as a client that blocks "
                                          "them shows the issue).")] = False,
    templates: TemplatesOpt = None,
) -> None:
    """Screenshots of the issue as a recipient sees it (1200 px desktop, 390 px mobile) and what mail clients break.

    Example: mailer preview issues/sample.md -o preview
    """
    from mailer.preview import live_preview, preview_issue
    from mailer.web.live import serve_live_preview

    config = _config(ctx, templates)
    with _optional_store(config, list_name) as store:
        if watch:
            def report(live: Any) -> None:
                if live.error:
                    err.print(f"error: {live.error}", markup=False, highlight=False)
                for warning in live.warnings:
                    err.print(f"warning: {warning}", markup=False, highlight=False)
                err.print(f"rendered {issue} (version {live.version})", markup=False, highlight=False)

            live = live_preview(issue, config, store, list_name, report)
            if live.message is None:
                raise MailerError(live.error)
            serve_live_preview(live, port, ready=lambda url: err.print(
                f"previewing on {url} (updates when {issue} changes); Ctrl-C stops", markup=False, highlight=False))
            return
        result = preview_issue(issue, output, config, store, list_name, offline=offline)
        assert result.screenshots is not None
        for path in (result.screenshots.desktop, result.screenshots.mobile):
            out.print(f"wrote {path}", markup=False, highlight=False)
        html_size, message_size = len(result.message.html.encode("utf-8")), len(result.message.data)
        out.print(f"HTML {html_size / 1024:.1f} KB, whole message {message_size / 1024:.1f} KB", markup=False,
                  highlight=False)
        for warning in result.warnings:
            err.print(f"warning: {warning}", markup=False, highlight=False)
        if not result.warnings:
            out.print("no compatibility problems found", markup=False, highlight=False)


suppressions_app = typer.Typer(help="Addresses never mailed again, on any list (bounced, complained).\n\n"
                               "Example: mailer suppressions ls", no_args_is_help=True)
app.add_typer(suppressions_app, name="suppressions")


@suppressions_app.command("ls")
def suppressions_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every suppressed address with the reason and when.

    Example: mailer suppressions ls --json
    """
    with _store(ctx) as store:
        rows = store.suppressions.all()
    if as_json:
        _print_json([dataclasses.asdict(r) for r in rows])
        return
    _table(["email", "reason", "detail", "since"], [[r.email, r.reason, r.detail, r.created] for r in rows])


@suppressions_app.command("remove")
def suppressions_remove(ctx: typer.Context, email: Annotated[str, typer.Argument()]) -> None:
    """Lift a suppression; subscriptions it had marked bounced become active again.

    Example: mailer suppressions remove someone@example.org
    """
    from mailer.addresses import normalise_address

    with _store(ctx) as store:
        store.suppressions.remove(normalise_address(email))
    out.print(f"{email} may be mailed again", markup=False, highlight=False)


# ---- an editor's workspace and the demo ------------------------------------------------------------------------


@app.command("new")
def new(
    folder: Annotated[Path, typer.Argument(help="The workspace folder (made if needed).")],
    lang: Annotated[str, typer.Option(help="Language of the starter issue and example list: zh or en.")] = "zh",
) -> None:
    """Make an editor's workspace: mailer.toml (every setting, commented), issues/ with a starter issue,
    templates/ with copies of the built-in layouts, subscribers/example.csv and a .gitignore.

    An existing file is never overwritten.

    Example: mailer new newsletter --lang zh
    """
    from mailer.workspace import EXAMPLE_CSV, STARTER_ISSUE, create_workspace

    made = create_workspace(folder, lang)
    for path in made.created:
        out.print(f"created {path}", markup=False, highlight=False)
    for path in made.kept:
        out.print(f"kept {path} (already there; not overwritten)", markup=False, highlight=False)
    title = "简报" if lang == "zh" else "Newsletter"
    sender = f"{title} <news@example.org>"
    out.print(f"next, in {folder}:\n"
              f"  mailer init\n"
              f"  mailer lists create news --title {title} --from \"{sender}\" --lang {lang}\n"
              f"  mailer subs import {EXAMPLE_CSV} --list news\n"
              f"  mailer render {STARTER_ISSUE} --list news -o out\n"
              f"layouts: {folder / 'templates'}/ (mailer uses ./templates/ when it exists); colours and footer: "
              f"[theme] in {folder / 'mailer.toml'}", markup=False, highlight=False)


# ---- demo ------------------------------------------------------------------------------------------------------


@app.command()
def demo(
    ctx: typer.Context,
    workdir: Annotated[Path, typer.Option("--dir", help="Working folder (recreated).")] = Path("demo-run"),
) -> None:
    """Send the sample issue to the sample list through a local capture server and show the log.

    Example: mailer demo
    """
    from mailer.demo import run_demo

    progress = _RichProgress(err.is_terminal)
    try:
        result = _run(run_demo(workdir, _config(ctx).base_url, progress))
    finally:
        progress.stop()
    campaign_id = result.summary.campaign_id
    with Store.open(result.db_path) as store:
        rows = list(store.deliveries.log(campaign_id or 0))
    _table(["email", "name", "status", "code", "message-id"],
           [[r.email, r.name, r.status, r.smtp_code, r.message_id] for r in rows],
           title=f"delivery log of campaign {campaign_id}")
    out.print(_summary_line(result.summary), markup=False, highlight=False)
    out.print(f"imported {result.imported.added} subscribers; database {result.db_path}", highlight=False)
    if result.messages:
        first = result.messages[0]
        out.print(f"{len(result.messages)} messages captured in {result.outbox}/; open one: {first} "
                  f"({first.stat().st_size:,} bytes)", markup=False, highlight=False)
    html = next((p for p in result.rendered if p.suffix == ".html"), None)
    if html:
        out.print(f"rendered HTML: {html}", markup=False, highlight=False)
    out.print(f"see it again: mailer --db {result.db_path} log {campaign_id}", markup=False, highlight=False)
    if result.summary.failed:
        raise typer.Exit(ExitCode.SOME_FAILED)


def _family(name: str) -> tuple[type[BaseException], ...]:
    """click's exception class `name` and typer's vendored copy of it (typer >= 0.20 ships its own click)."""
    classes = {getattr(click.exceptions, name)}
    for probe in (typer.BadParameter, typer.Abort):
        classes.update(c for c in probe.__mro__ if c.__name__ == name)
    return tuple(classes)


_ABORT, _CLICK_ERROR, _USAGE_ERROR = _family("Abort"), _family("ClickException"), _family("UsageError")


def main() -> None:
    """Console entry point: one `error: ...` line and the SPEC exit code for anything a user can cause."""
    try:
        code = app(standalone_mode=False)
    except MailerError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(int(exc.exit_code))
    except _ABORT:
        err.print("interrupted", markup=False)
        sys.exit(int(ExitCode.INTERRUPTED))
    except _CLICK_ERROR as exc:
        message = exc.format_message()  # type: ignore[attr-defined]
        if type(exc).__name__ == "NoArgsIsHelpError":  # `mailer` / `mailer lists` alone: the help, not one line
            err.print(message, markup=False, highlight=False)
            sys.exit(ExitCode.USAGE)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        err.print(f"error: {' '.join(message.split())}{hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(ExitCode.USAGE if isinstance(exc, _USAGE_ERROR) else ExitCode.ERROR)
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
    except sqlite3.Error as exc:  # wherever the database fails (a page found corrupt mid-command, a full disk)
        err.print(f"error: {describe_database_error(_session.get('db', Path('mailer.db')), exc)}", markup=False,
                  highlight=False, soft_wrap=True)
        sys.exit(int(ExitCode.ERROR))
    except OSError as exc:  # a file or folder the command was given, or needs, that the system refuses
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"error: {where}{exc.strerror or exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(int(ExitCode.ERROR))
    sys.exit(code if isinstance(code, int) else 0)
