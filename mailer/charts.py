"""Charts for the ops console and the terminal: inline SVG (stacked bars, per-minute columns) and sparklines.

Pure: numbers in, markup out. SVG uses presentation attributes (fill, width), never style attributes or script,
so it renders under the console's strict Content-Security-Policy; every label is escaped as text."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

# One colour per delivery status, chosen to be told apart by people with the common colour-vision deficiencies
# (Okabe & Ito's palette) and matched by the legend's words, so colour is never the only cue.
STATUS_COLOURS = {
    "sent": "#009e73",
    "queued": "#bbbbbb",
    "sending": "#56b4e9",
    "deferred": "#e69f00",
    "failed": "#d55e00",
    "bounced": "#cc79a7",
    "skipped": "#999999",
}
_BLOCKS = "▁▂▃▄▅▆▇█"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def stacked_bar(counts: Mapping[str, int], width: int = 320, height: int = 14, label: str = "") -> str:
    """One horizontal bar split by status, in STATUS_COLOURS order, with a <title> per piece for hovering."""
    total = sum(max(0, n) for n in counts.values())
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'viewBox="0 0 {width} {height}" aria-label="{_esc(label or _summary(counts))}">',
        f'<rect width="{width}" height="{height}" fill="#eeeeee"/>',
    ]
    x = 0.0
    for status in [*STATUS_COLOURS, *sorted(set(counts) - set(STATUS_COLOURS))]:
        n = max(0, counts.get(status, 0))
        if not n or not total:
            continue
        w = width * n / total
        parts.append(
            f'<rect x="{x:.2f}" width="{w:.2f}" height="{height}" '
            f'fill="{STATUS_COLOURS.get(status, "#666666")}"><title>{_esc(status)}: {n}</title></rect>'
        )
        x += w
    parts.append("</svg>")
    return "".join(parts)


def _summary(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counts.items() if n) or "no deliveries"


def columns(
    series: Sequence[tuple[str, Mapping[str, int]]],
    statuses: Sequence[str] = ("sent", "deferred", "failed"),
    width: int = 640,
    height: int = 160,
    label: str = "",
) -> str:
    """Stacked columns, one per time bucket (e.g. per minute): `series` is [(bucket label, {status: n})]."""
    pad_left, pad_bottom = 36, 18
    plot_w, plot_h = width - pad_left - 4, height - pad_bottom - 6
    peak = max((sum(c.get(s, 0) for s in statuses) for _, c in series), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'viewBox="0 0 {width} {height}" aria-label="{_esc(label)}">',
        f'<line x1="{pad_left}" y1="{6 + plot_h}" x2="{width - 4}" y2="{6 + plot_h}" stroke="#999999"/>',
        f'<text x="{pad_left - 4}" y="14" font-size="10" text-anchor="end" fill="#555555">{peak}</text>',
        f'<text x="{pad_left - 4}" y="{6 + plot_h}" font-size="10" text-anchor="end" fill="#555555">0</text>',
    ]
    step = plot_w / max(1, len(series))
    bar_w = max(1.0, step * 0.8)
    for i, (bucket, counts) in enumerate(series):
        x = pad_left + i * step + (step - bar_w) / 2
        y = 6.0 + plot_h
        for status in statuses:
            n = counts.get(status, 0)
            if n <= 0:
                continue
            h = plot_h * n / peak
            y -= h
            parts.append(
                f'<rect x="{x:.2f}" y="{y:.2f}" width="{bar_w:.2f}" height="{h:.2f}" '
                f'fill="{STATUS_COLOURS.get(status, "#666666")}"><title>{_esc(bucket)} {_esc(status)}: '
                f"{n}</title></rect>"
            )
    if series:
        for i in sorted({0, len(series) - 1}):
            x = pad_left + i * step + step / 2
            anchor = "start" if i == 0 else "end"
            parts.append(
                f'<text x="{x:.2f}" y="{height - 4}" font-size="10" text-anchor="{anchor}" '
                f'fill="#555555">{_esc(series[i][0])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def sparkline(values: Sequence[float]) -> str:
    """▁▃▇█▅ for a terminal: each value scaled between the series' own lowest and highest."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return _BLOCKS[0 if high == 0 else 3] * len(values)
    return "".join(
        _BLOCKS[min(len(_BLOCKS) - 1, int((v - low) / (high - low) * (len(_BLOCKS) - 1) + 0.5))] for v in values
    )
