"""MailerError and its few subclasses, each carrying a message a person can act on and an exit code.

Service code raises these; only the shell (mailer.cli.shell) prints them, as one `error: ...` line, and turns
them into an exit status."""

from mailer.exit_codes import ExitCode


class MailerError(Exception):
    """A failure the user can fix; `str(err)` is the whole one-line explanation."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(MailerError):
    exit_code = ExitCode.USAGE


class ConfigError(MailerError):
    pass


class NotFoundError(MailerError):
    pass


class TemplateError(MailerError):
    """The issue or its layout cannot be rendered; raised before any message leaves."""


class HeaderError(MailerError):
    """A header value that would be unsafe on the wire (e.g. an address with CR/LF)."""


class SMTPUnavailable(MailerError):
    """The SMTP server cannot be reached or refused our login; nobody is marked failed."""

    exit_code = ExitCode.SMTP_UNAVAILABLE


class CampaignBusy(MailerError):
    """Another process holds the campaign's lease."""


class CampaignHeld(MailerError):
    """An operator paused the campaign (its state): nobody sends it until it is resumed."""
