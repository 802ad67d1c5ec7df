"""`mailer new` and `mailer demo`: an editor's workspace, and the main job on embedded defaults.

Commands only: the services are workspace.py and demo.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mailer.cli.common import (
    RichProgress,
    app,
    run_service,
    settings,
    summary_line,
    table,
)
from mailer.cli.shell import err, out, say
from mailer.exit_codes import ExitCode
from mailer.store import Store
from mailer.wording import STARTER_TITLE


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
        say(out(), f"created {path}")
    for path in made.kept:
        say(out(), f"kept {path} (already there; not overwritten)")
    title = STARTER_TITLE.get(lang, STARTER_TITLE["en"])
    sender = f"{title} <news@example.org>"
    say(
        out(),
        f"next, in {folder}:\n"
        f"  mailer init\n"
        f'  mailer lists create news --title {title} --from "{sender}" --lang {lang}\n'
        f"  mailer subs import {EXAMPLE_CSV} --list news\n"
        f"  mailer render {STARTER_ISSUE} --list news -o out\n"
        f"layouts: {folder / 'templates'}/ (mailer uses ./templates/ when it exists); colours and footer: "
        f"[theme] in {folder / 'mailer.toml'}",
    )


@app.command()
def demo(
    ctx: typer.Context,
    workdir: Annotated[Path, typer.Option("--dir", help="Working folder (recreated).")] = Path("demo-run"),
) -> None:
    """Send the sample issue to the sample list through a local capture server and show the log.

    Example: mailer demo
    """
    from mailer.demo import run_demo

    progress = RichProgress(err().is_terminal)
    try:
        result = run_service(run_demo(workdir, settings(ctx).base_url, progress))
    finally:
        progress.stop()
    campaign_id = result.summary.campaign_id
    with Store.open(result.db_path) as store:
        rows = list(store.deliveries.log(campaign_id or 0))
    table(
        ["email", "name", "status", "code", "message-id"],
        [[r.email, r.name, r.status, r.smtp_code, r.message_id] for r in rows],
        title=f"delivery log of campaign {campaign_id}",
    )
    say(out(), summary_line(result.summary))
    out().print(f"imported {result.imported.added} subscribers; database {result.db_path}", highlight=False)
    if result.messages:
        first = result.messages[0]
        say(
            out(),
            f"{len(result.messages)} messages captured in {result.outbox}/; open one: {first} "
            f"({first.stat().st_size:,} bytes)",
        )
    html = next((p for p in result.rendered if p.suffix == ".html"), None)
    if html:
        say(out(), f"rendered HTML: {html}")
    say(out(), f"see it again: mailer --db {result.db_path} log {campaign_id}")
    if result.summary.failed:
        raise typer.Exit(ExitCode.SOME_FAILED)
