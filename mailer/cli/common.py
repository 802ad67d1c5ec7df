"""What every command shares: the typer app and its groups, the common options, the settings and database of a
run, tables and JSON on the run's consoles, the event loop with Ctrl-C as a stop, and a send's progress bar and
summary.

Only the CLI modules use it; services never see typer or rich."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from mailer import __version__
from mailer.cli.shell import environment, err, out, say
from mailer.config import Config, load_config
from mailer.exit_codes import ExitCode
from mailer.message import clean_header_text
from mailer.models import DeliveryStatus, SendSummary
from mailer.store import Store

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


campaigns_app = typer.Typer(
    help="Campaigns (one per issue and audience).\n\nExample: mailer campaigns ls", no_args_is_help=True
)
segments_app = typer.Typer(
    help="Saved segments: part of a list by its attributes.\n\nExample: mailer segments ls", no_args_is_help=True
)
bounces_app = typer.Typer(
    help="Returned mail: bounces, complaints, mailto unsubscribes.\n\nExample: mailer bounces scan bounces.mbox",
    no_args_is_help=True,
)
dkim_app = typer.Typer(
    help="DKIM signing keys.\n\nExample: mailer dkim keygen --selector news2026 --domain example.org",
    no_args_is_help=True,
)
suppressions_app = typer.Typer(
    help="Addresses never mailed again, on any list (bounced, complained).\n\nExample: mailer suppressions ls",
    no_args_is_help=True,
)
ops_app = typer.Typer(
    help="The ops console of mailer serve (/ops/).\n\nExample: mailer ops passwd", no_args_is_help=True
)
archive_app = typer.Typer(
    help="A list's public archive of past issues.\n\nExample: mailer archive build bulletin -o site",
    no_args_is_help=True,
)
# In the order `mailer --help` has always listed them.
app.add_typer(lists_app, name="lists")
app.add_typer(subs_app, name="subs")
app.add_typer(campaigns_app, name="campaigns")
app.add_typer(bounces_app, name="bounces")
app.add_typer(dkim_app, name="dkim")
app.add_typer(suppressions_app, name="suppressions")
app.add_typer(segments_app, name="segments")
app.add_typer(archive_app, name="archive")
app.add_typer(ops_app, name="ops")
T = TypeVar("T")


ListOpt = Annotated[str, typer.Option("--list", "-l", help="List name.")]


ListsOpt = Annotated[
    list[str], typer.Option("--list", "-l", help="List name; give it again for several lists (each address once).")
]


WhereOpt = Annotated[
    str | None,
    typer.Option(
        "--where",
        help='Only subscribers matching this expression, e.g. \'地区 in ("北京", "重庆") and domain = "example.org"\'.',
    ),
]


SegmentOpt = Annotated[str | None, typer.Option("--segment", help="Only the subscribers of this saved segment.")]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON array on stdout.")]


TemplatesOpt = Annotated[
    Path | None,
    typer.Option(
        "--templates",
        exists=True,
        file_okay=False,
        dir_okay=True,
        help="Folder of layouts (issue.html.j2, issue.txt.j2, web/page.html.j2); a layout it lacks is the built-in "
        "one. Default: 'templates' in mailer.toml, else ./templates/ when it exists.",
    ),
]


def settings(ctx: typer.Context, templates: Path | None = None) -> Config:
    """The settings of this run; `templates` is a command's --templates, which wins over mailer.toml."""
    config: Config = ctx.obj["config"]
    return config.with_overrides(templates=templates)


def open_store(ctx: typer.Context) -> Store:
    return Store.open(settings(ctx).db_path)


def open_store_for(config: Config, list_name: str | None) -> contextlib.AbstractContextManager[Store | None]:
    """The database when a command is asked for a list's settings (render, preview --list); none otherwise."""
    return Store.open(config.db_path) if list_name else contextlib.nullcontext()


def run_service(coro: Coroutine[Any, Any, T], stop: asyncio.Event | None = None) -> T:
    """Run a service coroutine; SIGINT/SIGTERM set `stop` so in-flight work finishes before we exit."""
    from mailer.workers import run

    def stopping() -> None:
        # Said at once: with a low --rate or a slow relay the in-flight messages may take a while.
        err().print("stopping: no new recipients; in-flight messages finish and are recorded", markup=False)

    return run(coro, stop, stopping)


def print_json(rows: list[dict[str, Any]]) -> None:
    environment().stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")


def stream_json(rows: Iterable[dict[str, Any]]) -> None:
    """A JSON array written as its rows come (what print_json writes, byte for byte), so memory stays flat however
    many there are."""
    stdout = environment().stdout
    first = True
    for row in rows:
        stdout.write(("[\n" if first else ",\n") + _indented(row))
        first = False
    stdout.write("[]\n" if first else "\n]\n")


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def _indented(row: dict[str, Any]) -> str:
    """One object as json.dumps(indent=2) writes it inside an array. A flat row is written key by key with the C
    encoder: with `indent` json falls back to its pure-Python encoder, 4x slower (36 s for a million log rows)."""
    if not row or any(isinstance(value, dict | list) for value in row.values()):
        return textwrap.indent(json.dumps(row, ensure_ascii=False, indent=2), "  ")
    dump = _ENCODE
    return "  {\n" + ",\n".join(f"    {dump(key)}: {dump(value)}" for key, value in row.items()) + "\n  }"


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """Cells are data, never rich markup (a name like `[/]` would crash the table, `[link=…]` would make one), and
    what came from outside (names, SMTP replies, bounce reports) loses control characters and terminal escapes."""
    table = Table(*columns, title=Text(clean_header_text(title)) if title else None, show_lines=False)
    for row in rows:
        table.add_row(*(Text("" if v is None else clean_header_text(v)) for v in row))
    out().print(table)


def _show_version(value: bool) -> None:
    if value:
        out().print(f"mailer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    db: Annotated[
        Path | None, typer.Option("--db", help="SQLite database (env MAILER_DB, default ./mailer.db).")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_show_version)
    ] = False,  # eager: no command needed
) -> None:
    """Email newsletters from Markdown to every inbox.

    Example: mailer demo
    """
    config = load_config(environ=dict(environment().variables), db_path=db)
    for warning in config.warnings:
        say(err(), f"warning: {warning}")
    ctx.obj = {"config": config}
    environment().db_path = config.db_path  # for main(): an SQLite failure names the database it is about


class RichProgress:
    """A progress bar on a TTY; nothing otherwise (the summary line says it all)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Progress | None = None
        self.task: Any = None
        self.counts: dict[str, int] = {}

    def start(self, total: int, done: int) -> None:
        if not self.enabled:
            return
        self.bar = Progress(
            TextColumn("sending"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeRemainingColumn(),
            console=err(),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("", total=total, completed=done)

    def advance(self, status: DeliveryStatus, email: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=" ".join(f"{k} {v}" for k, v in self.counts.items()))

    def note(self, text: str) -> None:
        """A line on stderr (above the bar on a TTY): why nothing moves for a while."""
        (self.bar.console if self.bar is not None else err()).print(text, markup=False, highlight=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def summary_line(summary: SendSummary) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "nothing to send"
    if summary.dry_run:
        sample = f" (e.g. {', '.join(summary.sample)})" if summary.sample else ""
        target = f" of {summary.audience}" if summary.audience else ""
        return f"dry run: would send to {summary.total} recipients{target}{sample}; nothing was sent"
    if summary.test:
        return (
            f"test message (campaign {summary.campaign_id}, not counted in the issue's): {counts} in "
            f"{summary.elapsed:.1f}s; see: mailer log {summary.campaign_id}"
        )
    recipients = "1 recipient" if summary.total == 1 else f"{summary.total} recipients"
    return f"campaign {summary.campaign_id}: {recipients}: {counts} in {summary.elapsed:.1f}s"


def finish_send(summary: SendSummary) -> None:
    for warning in summary.warnings:
        say(err(), f"warning: {warning}")
    say(out(), summary_line(summary))
    if summary.interrupted:  # Ctrl-C or SIGTERM: not an error, but say what is left and how it goes on
        line = summary.stopped.replace("interrupted; ", "interrupted: ", 1) or "interrupted"
        err().print(line, markup=False, soft_wrap=True)
        raise typer.Exit(ExitCode.INTERRUPTED)
    if summary.stopped:
        err().print(f"error: {summary.stopped}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(summary.stop_code)
    if summary.failed:
        raise typer.Exit(ExitCode.SOME_FAILED)
