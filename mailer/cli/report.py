"""`mailer campaigns show` on a terminal, after the campaign's details (lifecycle.details_lines): how its sending
went as rich renders it: the counts as a coloured bar with its legend, the send rate as a sparkline, the top replies
and domains as tables.

Printing only; the summary is campaign_report.py's, the same one the ops console shows."""

from __future__ import annotations

from rich.text import Text

from mailer.campaign_report import CampaignReport
from mailer.charts import STATUS_COLOURS, sparkline
from mailer.cli.common import table
from mailer.cli.shell import out, say
from mailer.message import clean_header_text

BAR_WIDTH = 50


def status_bar(counts: dict[str, int], width: int = BAR_WIDTH) -> Text:
    """The counts as one bar of `width` cells, each status in its colour, then the legend in words (colour is
    never the only cue)."""
    total = sum(counts.values())
    bar = Text()
    if total:
        for status in [*STATUS_COLOURS, *sorted(set(counts) - set(STATUS_COLOURS))]:
            cells = round(width * counts.get(status, 0) / total)
            if cells:
                bar.append("█" * cells, style=STATUS_COLOURS.get(status, "#666666"))
    legend = ", ".join(f"{status} {n}" for status, n in counts.items() if n) or "no recipients"
    bar.append(f"  {legend}")
    return bar


def show_report(report: CampaignReport) -> None:
    console = out()
    say(console, f"done: {report.done} of {report.total} ({report.progress:.1%})")
    console.print(status_bar(report.counts))
    if report.timeline:
        unit = "minute" if report.bucket_minutes == 1 else f"{report.bucket_minutes} minutes"
        rate = report.send_rate
        say(console, f"sent per {unit}, {report.timeline[0][0]} to {report.timeline[-1][0]} UTC (peak {max(rate)}):")
        say(console, sparkline([float(n) for n in rate]))
    if report.replies:
        table(
            ["reply", "count", "statuses"],
            [[g.reply, g.count, ", ".join(f"{s} {n}" for s, n in g.statuses.items())] for g in report.replies],
            title="top replies (deferred, failed, bounced, skipped)",
        )
    if report.domains:
        table(
            ["domain", "total", "sent", "deferred", "failed", "bounced", "median attempts"],
            [
                [
                    d.domain,
                    d.total,
                    *(d.counts.get(s, 0) for s in ("sent", "deferred", "failed", "bounced")),
                    f"{d.median_attempts:g}",
                ]
                for d in report.domains
            ],
            title="top domains" + (f" ({report.other_domains} more)" if report.other_domains else ""),
        )
    for entry in report.audit[:10]:
        say(console, clean_header_text(f"{entry.at} {entry.actor}: {entry.action} {entry.email} {entry.detail}"))
