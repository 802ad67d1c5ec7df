"""mailer: an email newsletter distribution tool.

Markdown issues rendered once, subscriber lists in SQLite, one correct message per recipient over async SMTP."""

__version__ = "0.1.0"
