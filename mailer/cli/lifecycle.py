"""`mailer segments`, `mailer approve`, `mailer run` and `mailer campaigns show / reschedule`: who an issue goes to,
who approved it, when it goes, and the process that sends it then.

Commands only: the services are targeting.py, approvals.py, runner.py and campaign_report.py."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mailer.cli.common import (
    JsonOpt,
    ListOpt,
    app,
    campaigns_app,
    open_store,
    print_json,
    run_service,
    segments_app,
    settings,
    table,
)
from mailer.cli.shell import err, out
from mailer.message import clean_header_text

if TYPE_CHECKING:
    from mailer.campaign_report import CampaignDetails


def _say(text: str) -> None:
    out().print(text, markup=False, highlight=False, soft_wrap=True)


@segments_app.command("create")
def segments_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Short name, e.g. beijing.")],
    list_name: ListOpt,
    where: Annotated[str, typer.Option("--where", help="The expression, e.g. '地区 = \"北京\"'.")],
) -> None:
    """Save a segment: part of a list by its subscribers' fields, for mailer send --segment NAME.

    Example: mailer segments create beijing --list bulletin --where '地区 = "北京"'
    """
    from mailer.targeting import create_segment

    with open_store(ctx) as store:
        saved = create_segment(store, name, list_name, where)
    _say(f"created segment {saved.name} of list {saved.list_name}: {saved.expr} ({saved.matching} match now)")


@segments_app.command("ls")
def segments_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The saved segments, each with how many subscribers it matches now.

    Example: mailer segments ls
    """
    from mailer.targeting import segment_counts

    with open_store(ctx) as store:
        rows = segment_counts(store)
    if as_json:
        print_json([dataclasses.asdict(r) for r in rows])
        return
    table(
        ["name", "list", "where", "matching", "created"],
        [[r.name, r.list_name, r.expr, r.matching, r.created] for r in rows],
    )


@app.command()
def approve(
    ctx: typer.Context,
    issue: Annotated[Path, typer.Argument(help="The issue, as it is now, is what is approved.")],
    list_name: ListOpt,
    by: Annotated[str, typer.Option("--by", help="Who approves, e.g. 李四.")],
    note: Annotated[str, typer.Option("--note", help="A remark kept with the approval.")] = "",
) -> None:
    """Approve the exact content of an issue (the file and everything it embeds) for a list; an edit voids it.

    Example: mailer approve issues/sample.md --list bulletin --by 李四 --note 已审校
    """
    from mailer.approvals import approve as approve_issue

    config = settings(ctx)
    with open_store(ctx) as store:
        result = approve_issue(store, config, issue, list_name, by, note)
    what = "approved" if result.new else "approved again (note and time updated)"
    needs = f" of {result.needed} the list requires" if result.needed else " (the list requires none)"
    _say(f"{issue} {what} by {result.by} for list {result.list_name}: {result.have} approval(s){needs}")


@app.command()
def run(
    ctx: typer.Context,
    poll: Annotated[float, typer.Option(min=0.1, help="Seconds between looks at what is due.")] = 5.0,
    bounces: Annotated[
        Path | None, typer.Option("--bounces", help="A bounce mailbox (mbox, Maildir, .eml folder) to read.")
    ] = None,
    bounce_every: Annotated[float, typer.Option(min=1, help="Seconds between bounce mailbox scans.")] = 300.0,
    concurrency: Annotated[int | None, typer.Option(min=1, max=64, help="SMTP sessions at once.")] = None,
    rate: Annotated[float | None, typer.Option(min=0.01, help="At most this many messages per second.")] = None,
) -> None:
    """Run until stopped: start scheduled campaigns when due, resume interrupted ones, send due retries, read bounces.

    Example: mailer run --bounces /var/mail/bounces
    """
    from mailer.runner import Runner, RunnerOptions, runner_send_options
    from mailer.smtp import relays

    config = settings(ctx)

    def log(line: str) -> None:
        err().print(clean_header_text(line), markup=False, highlight=False, soft_wrap=True)

    stop = asyncio.Event()
    with open_store(ctx) as store:
        runner = Runner(
            store,
            config,
            relays(config),
            runner_send_options(config, concurrency, rate),
            log,
            RunnerOptions(poll=poll, bounces=bounces, bounce_every=bounce_every),
        )
        run_service(runner.run(stop), stop)


@campaigns_app.command("show")
def campaigns_show(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
    as_json: JsonOpt = False,
) -> None:
    """One campaign: its issue, audience, state and times, counts, the approvals of its content; a status bar, the
    send rate as a sparkline, the top SMTP replies and receiving domains.

    Example: mailer campaigns show 1
    """
    from mailer.campaign_report import campaign_report
    from mailer.cli.report import show_report

    with open_store(ctx) as store:
        report = campaign_report(store, campaign)
    if as_json:
        print_json([report.as_json()])
        return
    for line in details_lines(report.details):
        _say(line)
    show_report(report)


def details_lines(d: CampaignDetails) -> list[str]:
    """`campaigns show` as text: one function builds it, so other views (the console's bars) add to one place."""
    lines = [
        f"campaign {d.id}{' (test)' if d.test else ''}: {d.issue} ({d.issue_path})",
        f"subject: {clean_header_text(d.subject)}",
        f"audience: {d.audience}",
        f"state: {d.state}" + (f", scheduled for {d.send_at}" if d.send_at else ""),
        f"created: {d.created}"
        + (f", finished: {d.finished}" if d.finished else "")
        + (f", cancelled: {d.cancelled}" if d.cancelled else ""),
        "recipients: " + (", ".join(f"{n} {status}" for status, n in sorted(d.counts.items())) or "none yet"),
    ]
    for name, needed in d.approvals_needed.items():
        mine = [a for a in d.approvals if a.list == name]
        req = f"requires {needed}" if needed else "requires none"
        lines.append(f"approvals for list {name} ({req}): {len(mine)}")
        lines += [f"  {a.by} at {a.at}" + (f": {clean_header_text(a.note)}" if a.note else "") for a in mine]
    return lines


@campaigns_app.command("reschedule")
def campaigns_reschedule(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign id (see: mailer campaigns ls).")],
    at: Annotated[str, typer.Option("--at", help='The new time: "2026-12-05 09:00" (in --tz), ISO 8601, or now.')],
    tz: Annotated[
        str | None, typer.Option("--tz", help="Time zone of --at (default: the list's, mailer.toml's, UTC).")
    ] = None,
) -> None:
    """Move a scheduled campaign to another time (it has not started: nobody is snapshotted yet).

    Example: mailer campaigns reschedule 3 --at "2026-12-06 09:00" --tz Asia/Shanghai
    """
    from mailer.clock import stamp, utcnow
    from mailer.runner import zone_for
    from mailer.schedule import describe, parse_send_at

    config = settings(ctx)
    with open_store(ctx) as store:
        found = store.campaigns.get(campaign)
        zone = zone_for(store, config, store.lists.by_id(found.list_id).name, tz)
        moment = parse_send_at(at, zone, utcnow())
        store.schedules.reschedule(found.id, stamp(moment))
    _say(f"campaign {found.id} rescheduled for {describe(moment, zone)}; 'mailer run' sends it")
