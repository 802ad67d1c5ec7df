"""`python -m mailer`: the same as the `mailer` command."""

from mailer.cli import main

main()
