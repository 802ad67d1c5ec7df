"""`mailer dkim`, `mailer doctor` and `mailer preview`: keys, the configuration checked, and the issue seen as
recipients see it. Commands only: the services are dkim.py, doctor.py and preview.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mailer.cli.common import (
    SegmentOpt,
    TemplatesOpt,
    WhereOpt,
    app,
    dkim_app,
    open_store_for,
    run_service,
    settings,
)
from mailer.cli.shell import environment, err, out
from mailer.errors import MailerError
from mailer.exit_codes import ExitCode


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
    environment().stdout.write(key.record + "\n")
    name = key.record.split(" ", 1)[0]
    err().print(
        f"wrote {key.path} (mode 600). Publish the TXT record above at {name} (in a zone file, end the name "
        f"with a dot), then set MAILER_DKIM_KEY={key.path} MAILER_DKIM_SELECTOR={selector} "
        f"MAILER_DKIM_DOMAIN={domain} and check with: mailer doctor --dns",
        markup=False,
        highlight=False,
    )


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

    config = settings(ctx)
    findings = run_service(run_checks(config, relays(config), dns_txt if dns else None))
    for finding in findings:
        out().print(str(finding), markup=False, highlight=False)
    if any(finding.level == Level.ERROR for finding in findings):
        raise typer.Exit(ExitCode.ERROR)


@app.command()
def preview(
    ctx: typer.Context,
    issue: Annotated[Path, typer.Argument(help="The issue: Markdown with front matter.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the PNG screenshots.")] = Path("preview"),
    list_name: Annotated[
        str | None, typer.Option("--list", "-l", help="Render for this list's settings and its first subscriber.")
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Serve the issue on 127.0.0.1 with live reload instead, re-rendering on every save, until Ctrl-C.",
        ),
    ] = False,
    port: Annotated[int, typer.Option(help="Port of --watch.", min=1, max=65535)] = 8026,
    offline: Annotated[
        bool, typer.Option("--offline", help="Load no remote images (as a client that blocks them shows the issue).")
    ] = False,
    templates: TemplatesOpt = None,
    where: WhereOpt = None,
    segment: SegmentOpt = None,
) -> None:
    """Screenshots of the issue as a recipient sees it (1200 px desktop, 390 px mobile) and what mail clients break.

    Example: mailer preview issues/sample.md -o preview
    """
    from mailer.preview import live_preview, preview_issue
    from mailer.web.live import serve_live_preview

    config = settings(ctx, templates)
    with open_store_for(config, list_name) as store:
        if watch:

            def report(live: Any) -> None:
                if live.error:
                    err().print(f"error: {live.error}", markup=False, highlight=False)
                for warning in live.warnings:
                    err().print(f"warning: {warning}", markup=False, highlight=False)
                err().print(f"rendered {issue} (version {live.version})", markup=False, highlight=False)

            live = live_preview(issue, config, store, list_name, report, (where, segment))
            if live.message is None:
                raise MailerError(live.error)
            serve_live_preview(
                live,
                port,
                ready=lambda url: err().print(
                    f"previewing on {url} (updates when {issue} changes); Ctrl-C stops", markup=False, highlight=False
                ),
            )
            return
        result = preview_issue(issue, output, config, store, list_name, offline=offline, segment=(where, segment))
        assert result.screenshots is not None
        for path in (result.screenshots.desktop, result.screenshots.mobile):
            out().print(f"wrote {path}", markup=False, highlight=False)
        html_size, message_size = len(result.message.html.encode("utf-8")), len(result.message.data)
        out().print(
            f"HTML {html_size / 1024:.1f} KB, whole message {message_size / 1024:.1f} KB", markup=False, highlight=False
        )
        for warning in result.warnings:
            err().print(f"warning: {warning}", markup=False, highlight=False)
        if not result.warnings:
            out().print("no compatibility problems found", markup=False, highlight=False)
