"""The `mailer` command, a thin shell over the services (as sqlite-utils' cli.py over its library):

    shell.py      main(argv, env) -> ExitCode: the environment, the exit status of every exception, the console script
    common.py     the typer app, shared options, tables and JSON, the event loop, a send's progress and summary
    lists.py      init, lists          subs.py       subs, unsubscribe, suppressions
    sending.py    render, send, retry  campaigns.py  campaigns, log
    inbound.py    serve, ops passwd, bounces          tools.py      dkim, doctor, preview
    lifecycle.py  segments, approve, run, campaigns show/reschedule  report.py  campaigns show's bars and tables
    workspace.py  new, demo            app.py        every command on the app, in --help order

The only package that prints, reads stdin, runs the event loop or decides an exit code; human output goes through
rich, `--json` / `--csv` to stdout alone, progress and diagnostics to stderr."""

from __future__ import annotations

from mailer.cli.shell import Environment, main, run

__all__ = ["Environment", "main", "run"]
