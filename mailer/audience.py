"""Who a campaign is for: one or more lists (the first given wins for a person on several) and an optional segment
expression; its key (what identifies it, whatever the order the lists were given in) and how it reads to a person.

Pure: names, ids and expression text in, values out. The store evaluates the expression (store/audiences.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from mailer.errors import UsageError
from mailer.segments import parse


@dataclass(frozen=True)
class Audience:
    """The lists (id and name, in the order given) and the segment a campaign targets."""

    list_ids: tuple[int, ...]
    list_names: tuple[str, ...]
    where: str = ""  # the expression as mailer prints it (canonical), or "" for everyone on the lists
    segment: str = ""  # the saved segment it came from, if any

    @property
    def key(self) -> str:
        """`1,2|地区 = "北京"`: the same lists in any order and the same expression are the same audience."""
        return ",".join(str(i) for i in sorted(set(self.list_ids))) + "|" + self.where

    @property
    def first_list(self) -> str:
        return self.list_names[0]

    def describe(self) -> str:
        lists = ("lists " if len(self.list_names) > 1 else "list ") + ", ".join(self.list_names)
        if self.segment:
            return f"{lists}, segment {self.segment} ({self.where})"
        return f"{lists} where {self.where}" if self.where else lists

    def to_json(self) -> str:
        return json.dumps(
            {"lists": list(self.list_names), "where": self.where, "segment": self.segment}, ensure_ascii=False
        )

    def options(self) -> str:
        """The `mailer send` options that name this audience again (for the commands mailer suggests)."""
        lists = " ".join(f"--list {name}" for name in self.list_names)
        if self.segment:
            return f"{lists} --segment {self.segment}"
        return f"{lists} --where '{self.where}'" if self.where else lists


def canonical_where(text: str | None) -> str:
    """The expression as mailer prints it (so spacing and quoting never make two audiences of one), or ""."""
    if text is None or not text.strip():
        return ""
    return str(parse(text))


def audience_lists(raw: str) -> list[str]:
    """The list names a campaign's stored audience names (first given first)."""
    return list(json.loads(raw).get("lists", [])) if raw else []


def audience_of(raw: str, list_ids: Sequence[int]) -> Audience:
    """A stored audience back as a value; `list_ids` are its lists' ids, in its order."""
    data = json.loads(raw) if raw else {}
    names = tuple(data.get("lists", ()))
    if len(names) != len(list_ids):
        raise UsageError(f"the campaign's audience names lists that no longer exist ({', '.join(names)})")
    return Audience(tuple(list_ids), names, data.get("where", ""), data.get("segment", ""))
