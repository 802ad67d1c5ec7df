"""`mailer serve`, `mailer ops passwd` (its console's password hash) and `mailer bounces`: what comes back from
subscribers, by the web and by mail.

Commands only: the services are web/ and inbox.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mailer.cli.common import (
    JsonOpt,
    TemplatesOpt,
    app,
    bounces_app,
    open_store,
    ops_app,
    print_json,
    settings,
    table,
)
from mailer.cli.shell import environment, err, say
from mailer.errors import UsageError
from mailer.store import Store


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8025,
    trusted_proxies: Annotated[
        str,
        typer.Option(
            "--trusted-proxies",
            envvar="MAILER_TRUSTED_PROXIES",
            help="Comma-separated proxy addresses whose X-Forwarded-For is believed.",
        ),
    ] = "127.0.0.1",
    templates: TemplatesOpt = None,
) -> None:
    """Serve the subscriber pages: unsubscribe (with RFC 8058 one-click), sign-up with double opt-in, confirm; and
    the ops console under /ops/ when MAILER_OPS_PASSWORD or MAILER_OPS_PASSWORD_FILE is set.

    Links in mail point at MAILER_BASE_URL; run this behind a reverse proxy that terminates HTTPS there.

    Example: mailer serve --port 8025
    """
    from mailer.web import serve as run_server

    config = settings(ctx, templates)
    with Store.open(config.db_path) as store:  # a missing or uninitialised database is one clear line, before binding
        for row in store.lists.with_counts():
            if not row.from_addr:
                err().print(
                    f"warning: list {row.name} has no From address: its sign-up form answers 'not "
                    "available' until it has one",
                    markup=False,
                    highlight=False,
                )
    run_server(
        config,
        host,
        port,
        trusted_proxies,
        ready=lambda url: err().print(
            f"serving on {url} (links in mail use {config.base_url}); Ctrl-C stops", markup=False, highlight=False
        ),
    )


@ops_app.command("passwd")
def ops_passwd() -> None:
    """Print the scrypt hash of a console password (asked twice on a terminal, else the first line of stdin); keep
    it in a file and point MAILER_OPS_PASSWORD_FILE at it. The password itself is never stored or shown.

    Example: mailer ops passwd
    """
    from mailer.passwords import hash_password

    stdin = environment().stdin
    if stdin.isatty():
        password = typer.prompt("console password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("an empty password cannot be used; type one (or pipe it on stdin)")
    say(environment().out, hash_password(password))
    err().print(
        "save this line to a file (e.g. mailer ops passwd > ops.hash), then: MAILER_OPS_PASSWORD_FILE=ops.hash "
        "mailer serve",
        markup=False,
        highlight=False,
    )


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

    config = settings(ctx)
    with open_store(ctx) as store:
        rows = scan(store, config.secret, path, config.soft_bounce_limit)
    if as_json:
        print_json(
            [
                {
                    "origin": r.origin,
                    "kind": r.kind,
                    "email": r.email,
                    "campaign": r.campaign,
                    "status": r.status,
                    "result": r.result,
                    "matched": r.matched,
                }
                for r in rows
            ]
        )
        return
    table(
        ["read from", "kind", "email", "campaign", "status", "result"],
        [[r.origin, r.kind, r.email, r.campaign if r.campaign is not None else "", r.status, r.result] for r in rows],
        title=f"returned mail in {path}",
    )
    matched = sum(r.matched for r in rows)
    err().print(f"{len(rows)} report(s): {matched} matched, {len(rows) - matched} not", markup=False, highlight=False)
