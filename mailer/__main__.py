"""`python -m mailer`: the console script."""

from mailer.cli import run

run()
