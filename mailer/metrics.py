"""Prometheus text exposition (format 0.0.4) of mailer's counters and gauges, and SMTP reply grouping for ops.

Pure: samples in, text out. Label values are escaped as the format requires, so an address or reply text in a
label can never start a new line or sample."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class Family:
    """One metric: its name, kind (counter or gauge), help line and samples (labels, value)."""

    name: str
    kind: str
    help: str
    samples: Sequence[tuple[Mapping[str, str], float]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name) or self.kind not in ("counter", "gauge"):
            raise ValueError(f"bad metric {self.name!r} ({self.kind})")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def exposition(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            for key in labels:
                if not _LABEL_NAME.fullmatch(key) or key.startswith("__"):
                    raise ValueError(f"bad label name {key!r}")
            rendered = ",".join(f'{key}="{_escape_label(str(val))}"' for key, val in sorted(labels.items()))
            lines.append(
                f"{family.name}{{{rendered}}} {_number(value)}" if rendered else f"{family.name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


# ---- SMTP replies, grouped as ops read them -------------------------------------------------------------------

_VARIABLE = [
    (re.compile(r"<[^<>\s]*@[^<>\s]*>"), "<address>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(\.[\w-]+)+\b"), "address"),
    (re.compile(r"\b\d{1,3}(\.\d{1,3}){3}\b"), "IP"),
    # Queue ids, message hashes, with what relays glue to them (Gmail: `5a7b3c2d1e0f.12`, `…si1234`).
    (re.compile(r"\b[0-9a-f]{8,}\w*(?:[.-]\w+)*", re.I), "ID"),
    (re.compile(r"\b[A-Z0-9]{10,}\b"), "ID"),  # Postfix/Exchange queue ids (0A1B2C3D4E)
    # Any other token of 8+ letters and digits with 3+ digits in it (4Fz1Xk2qWbz9vG3): an id, not a word.
    (re.compile(r"(?<![\w.-])(?=[\w.-]*[A-Za-z])(?=(?:[\w.-]*\d){3})[A-Za-z0-9][\w.-]{7,}"), "ID"),
    (re.compile(r"\b\d{5,}\b"), "N"),  # counters and queue numbers (queued as 00051)
    (re.compile(r"\bhttps?://\S+"), "URL"),
    (re.compile(r"\b\d+(\.\d+)?\s?(s|sec|seconds|minutes|min)\b", re.I), "N s"),
]


def reply_group(code: int | None, text: str) -> str:
    """`451 4.7.1 try again later` for every variant of one receiver's answer: the code, the enhanced status and
    the words, with addresses, IPs, queue ids and URLs replaced by what they are, lower-cased and trimmed."""
    words = " ".join(text.split())
    for pattern, replacement in _VARIABLE:
        words = pattern.sub(replacement, words)
    prefix = f"{code} " if code else ""
    if code and words.startswith(str(code)):
        words = words[len(str(code)) :].lstrip(" -")
    return (prefix + words.lower()).strip()[:160] or "(no reply)"
