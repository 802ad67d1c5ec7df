"""Who a send is for, from what the editor typed: `--list` (one or more), `--where EXPR` or `--segment NAME` (or the
issue's `segment:`), checked against the lists' attributes before anything is written; and the saved segments.

A service over the store; must not send or render. The expression language itself is mailer.segments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailer.audience import Audience, canonical_where
from mailer.errors import UsageError
from mailer.segments import SegmentError, check_fields, parse
from mailer.store import Store


def refuse_blank(where: str | None, segment: str | None) -> None:
    """A `--where` or `--segment` given but empty is a mistake (an unset shell variable), never "everyone": leaving
    the option out is how a send says the whole list."""
    if where is not None and not where.strip():
        raise UsageError('--where is empty: give an expression (example: city = "北京"), or leave --where out')
    if segment is not None and not str(segment).strip():
        raise UsageError("--segment is empty: name a saved segment (see: mailer segments list), or leave it out")


def front_matter_segment(meta: Mapping[str, Any], origin: str) -> str | None:
    """The issue's `segment:`; written but empty is an error like `--segment ''`, not the whole list."""
    if "segment" not in meta:
        return None
    value = meta["segment"]
    if value is None or not str(value).strip():
        raise UsageError(f"{origin}: front matter 'segment' is empty: name a saved segment, or remove it")
    return str(value).strip()


def resolve_audience(
    store: Store, list_names: Sequence[str], where: str | None = None, segment: str | None = None
) -> Audience:
    """The audience of `--list A --list B [--where EXPR | --segment NAME]`: lists in the order given (a list
    named twice counts once), the expression checked against what their subscribers have."""
    refuse_blank(where, segment)
    if where and segment:
        raise UsageError("give --where or --segment, not both")
    names = list(dict.fromkeys(n.strip() for n in list_names if n.strip()))
    if not names:
        raise UsageError("name a list with --list")
    lists = [store.lists.get(name) for name in names]
    ids = tuple(found.id for found in lists)
    segment_name = ""
    if segment:
        saved = store.audiences.segment(str(segment).strip())
        where, segment_name = saved.expr, saved.name
    try:
        expr = canonical_where(where)
    except SegmentError as exc:
        known = ", ".join(store.audiences.attribute_names(ids)) or "none"
        # the column says where it goes wrong: a pasted screenful need not come back whole
        shown = where if where is None or len(where) <= 80 else f"{where[:60]}…"
        raise SegmentError(f"--where {shown!r}: {exc} (attributes of {', '.join(names)}: {known})") from None
    if expr:
        check_fields(parse(expr), store.audiences.attribute_names(ids))
    return Audience(ids, tuple(names), expr, segment_name)


@dataclass(frozen=True)
class SegmentCount:
    name: str
    list_name: str
    expr: str
    matching: int
    created: str


def create_segment(store: Store, name: str, list_name: str, where: str) -> SegmentCount:
    """Save `--where EXPR` for a list under a name (`mailer send --segment NAME`); returns it with its count."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"segment name {name!r}: use letters, digits, '-' and '_' only")
    audience = resolve_audience(store, [list_name], where)
    if not audience.where:
        raise UsageError("--where is empty: a segment is part of a list")
    store.audiences.create_segment(name, audience.list_ids[0], audience.where)
    return next(s for s in segment_counts(store) if s.name == name)


def segment_counts(store: Store) -> list[SegmentCount]:
    """Every saved segment with how many of its list it matches now."""
    found = []
    for saved in store.audiences.segments():
        mailing_list = store.lists.get(saved.list_name)
        audience = Audience((mailing_list.id,), (saved.list_name,), saved.expr, saved.name)
        found.append(
            SegmentCount(saved.name, saved.list_name, saved.expr, store.audiences.count(audience), saved.created)
        )
    return found
