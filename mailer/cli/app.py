"""The `mailer` typer app with every command on it: each command module registers its commands when imported, and
they are imported in the order `mailer --help` has always listed them.

Assembly only."""

from __future__ import annotations

import importlib

from mailer.cli.common import app

COMMAND_MODULES = ("lists", "subs", "sending", "campaigns", "lifecycle", "inbound", "tools", "workspace")
for _name in COMMAND_MODULES:
    importlib.import_module(f"mailer.cli.{_name}")

__all__ = ["app"]
