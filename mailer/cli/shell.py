"""The shell around the commands, as httpie's: `main(argv, env) -> ExitCode` runs one command line in an
Environment (its streams, its variables) and returns the exit status; the one place that turns an exception into
that status and one `error: ...` line; `run()`, the console script, is the only caller of sys.exit.

Must not know any command: they live in the modules beside it and print through `out()` and `err()`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import typer
from rich.console import Console

from mailer.errors import MailerError
from mailer.exit_codes import ExitCode
from mailer.store import DatabaseError, describe_database_error


@dataclass
class Environment:
    """What a command line runs in: its standard streams and environment variables (the process's by default;
    a test passes its own and reads what was written)."""

    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    variables: Mapping[str, str] = field(default_factory=lambda: os.environ)
    program_name: str | None = None  # in usage lines; None: as typer finds it (mailer, python -m mailer)
    db_path: Path = Path("mailer.db")  # the database of this run, named when SQLite fails
    _out: Console | None = field(default=None, repr=False)
    _err: Console | None = field(default=None, repr=False)

    @property
    def out(self) -> Console:
        if self._out is None:
            # Piped output is not cut to 80 columns: a log's addresses and Message-IDs stay whole.
            self._out = Console(
                file=self.stdout, soft_wrap=True, width=None if self.stdout.isatty() else 200, _environ=self.variables
            )
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            self._err = Console(file=self.stderr, soft_wrap=True, _environ=self.variables)
        return self._err


_current: ContextVar[Environment] = ContextVar("mailer_environment")


def environment() -> Environment:
    """The Environment of the command line being run (the process's outside main)."""
    try:
        return _current.get()
    except LookupError:
        env = Environment()
        _current.set(env)
        return env


def out() -> Console:
    """Human output (tables, summaries) of the command being run."""
    return environment().out


def err() -> Console:
    """Progress, warnings and errors of the command being run: stderr, so `--json | jq` always works."""
    return environment().err


def say(console: Console, text: str) -> None:
    """One line as it is: no rich markup, no highlighting (names and replies are data)."""
    console.print(text, markup=False, highlight=False)


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> ExitCode:
    """Run one command line and return its exit status: one `error: ...` line and the SPEC exit code for anything a
    user can cause (a traceback only for a bug)."""
    from mailer.cli.app import app

    env = env or Environment()
    token = _current.set(env)
    try:
        with _streams(env):
            try:
                code = app(
                    args=list(sys.argv[1:] if argv is None else argv), prog_name=env.program_name, standalone_mode=False
                )
            except BaseException as exc:  # every ending is turned into an exit status here
                return _exit_status(exc, env)
        return ExitCode(code) if isinstance(code, int) else ExitCode.OK
    finally:
        _current.reset(token)


def run() -> None:
    """The `mailer` console script."""
    sys.exit(int(main()))


def _exit_status(exc: BaseException, env: Environment) -> ExitCode:
    """The one place an exception becomes an exit status (and, for a user's mistake, one line on stderr)."""
    if isinstance(exc, MailerError):
        _error_line(env, str(exc))
        return exc.exit_code
    if isinstance(exc, typer.Exit):
        return ExitCode(exc.exit_code)
    if isinstance(exc, typer.Abort):
        env.err.print("interrupted", markup=False)
        return ExitCode.INTERRUPTED
    if isinstance(exc, typer.TyperException):  # typer's usage errors and bad parameters
        message = exc.format_message()
        if type(exc).__name__ == "NoArgsIsHelpError":  # `mailer` / `mailer lists` alone: the help, not one line
            say(env.err, message)
            return ExitCode.USAGE
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        _error_line(env, f"{' '.join(message.split())}{hint}")
        return ExitCode.USAGE if exc.exit_code == ExitCode.USAGE else ExitCode.ERROR
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, DatabaseError):  # wherever the database fails (a page found corrupt mid-command, a full disk)
        _error_line(env, describe_database_error(env.db_path, exc))
        return ExitCode.ERROR
    if isinstance(exc, OSError):  # a file or folder the command was given, or needs, that the system refuses
        where = f"{exc.filename}: " if exc.filename else ""
        _error_line(env, f"{where}{exc.strerror or exc}")
        return ExitCode.ERROR
    raise exc


def _error_line(env: Environment, text: str) -> None:
    env.err.print(f"error: {text}", markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _streams(env: Environment) -> Iterator[None]:
    """The command's streams as sys.stdin/stdout/stderr while it runs: typer writes help and prompts there, and a
    command writes machine output (JSON, CSV) straight to stdout."""
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = env.stdin, env.stdout, env.stderr
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
