"""`mailer init` and `mailer lists`: the database and its mailing lists.

Commands only: each parses, calls one service and prints."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from mailer.cli.common import (
    JsonOpt,
    app,
    archive_app,
    lists_app,
    open_store,
    print_json,
    settings,
    table,
)
from mailer.cli.shell import out, say
from mailer.config import ensure_secret
from mailer.store import Store

ApprovalsOpt = Annotated[
    int | None, typer.Option("--require-approval", min=0, max=100, help="Approvals a send to it needs (0: none).")
]
TzOpt = Annotated[str | None, typer.Option("--tz", help="Time zone of its --at times, e.g. Asia/Shanghai.")]


@app.command()
def init(ctx: typer.Context) -> None:
    """Create or migrate the database and the signing secret; safe to run again.

    Example: mailer init
    """
    config = ensure_secret(settings(ctx))
    with Store.open(config.db_path, must_exist=False) as store:
        created = store.init()
    out().print(f"{'created' if created else 'up to date'}: {config.db_path}")


@lists_app.command("create")
def lists_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Short name, e.g. bulletin.")],
    title: Annotated[str, typer.Option(help="Title shown to subscribers.")] = "",
    from_: Annotated[str, typer.Option("--from", help='From header, "Name <addr>".')] = "",
    reply_to: Annotated[str, typer.Option("--reply-to", help="Reply-To address.")] = "",
    lang: Annotated[str, typer.Option(help="Language of the list's pages and defaults: zh or en.")] = "zh",
    require_approval: ApprovalsOpt = None,
    tz: TzOpt = None,
) -> None:
    """Create a mailing list.

    Example: mailer lists create bulletin --title 知识产权运营简报 --from "简报 <news@example.org>" --lang zh
    """
    from mailer.schedule import timezone
    from mailer.subscriptions import create_list, update_list

    with open_store(ctx) as store:
        if tz:
            timezone(tz)  # a misspelt zone creates nothing
        created = create_list(store, name, title, from_, reply_to, lang)
        if require_approval is not None or tz is not None:
            update_list(store, name, require_approval=require_approval, tz=tz)
    out().print(f"created list {created.name}")


class Switch(StrEnum):
    ON = "on"
    OFF = "off"


def _switch(value: Switch | None) -> bool | None:
    return None if value is None else value is Switch.ON


@lists_app.command("update")
def lists_update(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The list's name.")],
    title: Annotated[str | None, typer.Option(help="Title shown to subscribers.")] = None,
    from_: Annotated[str | None, typer.Option("--from", help='From header, "Name <addr>".')] = None,
    reply_to: Annotated[str | None, typer.Option("--reply-to", help="Reply-To address ('' for none).")] = None,
    lang: Annotated[str | None, typer.Option(help="zh or en.")] = None,
    require_approval: ApprovalsOpt = None,
    tz: TzOpt = None,
    archive: Annotated[
        Switch | None, typer.Option(help="Publish its past issues at /a/NAME/ with an Atom feed (default off).")
    ] = None,
    public: Annotated[
        Switch | None,
        typer.Option(help="Offer it on every subscriber's preferences page, to join in one click (default off)."),
    ] = None,
) -> None:
    """Change a list's settings; what is not given stays as it is (NAME alone prints them).

    Example: mailer lists update bulletin --require-approval 1 --tz Asia/Shanghai --archive on
    """
    from mailer.subscriptions import update_list

    with open_store(ctx) as store:
        updated = update_list(
            store,
            name,
            title=title,
            from_addr=from_,
            reply_to=reply_to,
            lang=lang,
            require_approval=require_approval,
            tz=tz,
        )
        updated = store.lists.set_flags(name, public=_switch(public), archive=_switch(archive))
    approvals = f"{updated.require_approval} approval(s) before a send" if updated.require_approval else "no approvals"
    say(
        out(),
        f"list {updated.name}: title {updated.title!r}, from {updated.from_addr!r}, lang {updated.lang}, "
        f"{approvals}, time zone {updated.tz or 'of mailer.toml (else UTC)'}, "
        f"archive {'on' if updated.archive else 'off'}, public {'on' if updated.public else 'off'}",
    )


@lists_app.command("delete")
def lists_delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The list's name.")],
    force: Annotated[bool, typer.Option("--force", help="Also delete its campaigns and their delivery log.")] = False,
) -> None:
    """Delete a list and its subscribers (refused while it has campaigns, unless --force; --force keeps a campaign that
    also went to other lists, and is refused while one is scheduled, paused or being sent).

    Example: mailer lists delete old-list
    """
    with open_store(ctx) as store:
        subscribers, campaigns, kept = store.lists.delete(name, force=force)
    line = f"deleted list {name}: {subscribers} subscriber(s), {campaigns} campaign(s)"
    if kept:
        line += f"; kept campaign(s) {', '.join(map(str, kept))}: also sent to other lists, with their delivery history"
    say(out(), line)


@lists_app.command("ls")
def lists_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show the lists with their subscriber counts.

    Example: mailer lists ls
    """
    with open_store(ctx) as store:
        rows = store.lists.with_counts()
    if as_json:
        print_json(
            [
                {
                    "name": r.name,
                    "title": r.title,
                    "from": r.from_addr,
                    "lang": r.lang,
                    "created": r.created,
                    "active": r.active,
                    "total": r.total,
                    "require_approval": r.require_approval,
                    "tz": r.tz,
                }
                for r in rows
            ]
        )
        return
    table(
        ["name", "title", "from", "lang", "active", "total", "approvals"],
        [[r.name, r.title, r.from_addr, r.lang, r.active, r.total, r.require_approval or ""] for r in rows],
    )


@archive_app.command("build")
def archive_build(
    ctx: typer.Context,
    list_name: Annotated[str, typer.Argument(metavar="LIST", help="The list whose archive to write.")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Folder to write into (created).")],
    url: Annotated[
        str, typer.Option(help="Where the folder will be served, for the feed's links (default: BASE_URL/a/LIST/).")
    ] = "",
) -> None:
    """Write a list's public archive as static files: index.html, one page per issue, feed.xml.

    Example: mailer archive build bulletin -o site
    """
    from mailer.archive import build_static

    config = settings(ctx)
    with open_store(ctx) as store:
        written = build_static(store, config, list_name, out_dir, url)
    issues = sum(1 for path in written if path.suffix == ".html" and path.name != "index.html")
    out().print(f"wrote {out_dir}: {issues} issue(s), index.html and feed.xml")
