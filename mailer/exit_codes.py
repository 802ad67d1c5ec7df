"""The process exit statuses the CLI promises (SPEC "Exit codes").

Only the shell (mailer.cli.shell) returns them from `main`, and its console script exits with them; everything
else raises MailerError carrying one."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    SOME_FAILED = 3
    SMTP_UNAVAILABLE = 4
    INTERRUPTED = 130
