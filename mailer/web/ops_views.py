"""What the ops console shows: the campaigns with their bars, one campaign (summary, chart, replies, domains, its
deliveries a keyset page at a time), one person's history, the JSON API with its streamed CSV and JSON exports,
and /ops/metrics. Each handler gets the request, the operator's session and language (ops.py checked who it is).

Reads only; the store's reports walk indexes, so each page answers in well under a second at a million deliveries."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from mailer.audience import audience_lists
from mailer.campaign_report import CHART_STATUSES, campaign_report, progress
from mailer.charts import STATUS_COLOURS, columns, stacked_bar
from mailer.errors import NotFoundError
from mailer.metrics import CONTENT_TYPE, exposition
from mailer.models import DeliveryStatus
from mailer.operations import CAMPAIGN_ACTIONS, Action, metric_families
from mailer.spreadsheet import SpreadsheetWriter
from mailer.store import CampaignSummary, LogEntry, Store
from mailer.web.ops_auth import Session
from mailer.web.ops_pages import render, words

if TYPE_CHECKING:
    from mailer.web.ops import OpsConsole

PAGE = 50  # deliveries per page of the console
API_PAGE_MAX = 1000
EXPORT_CHUNK = 1000
EXPORT_COLUMNS = ["id", "email", "status", "attempts", "smtp_code", "smtp_reply", "message_id", "queued", "updated"]


def _console(request: Request) -> OpsConsole:
    return request.app.state.ops  # type: ignore[no-any-return]


def _campaign_json(c: CampaignSummary) -> dict[str, Any]:
    return {
        "id": c.id,
        "issue": c.issue,
        "subject": c.subject,
        "list": c.list,  # the first of its lists, as `mailer campaigns ls --json` gives it
        "lists": audience_lists(c.audience) or [c.list],
        "state": str(c.state),
        "created": c.created,
        "finished": c.finished,
        "test": c.test,
        "counts": c.counts,
        "total": sum(c.counts.values()),
        "progress": round(progress(c.counts), 4),
    }


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{s} {n}" for s, n in counts.items() if n)


# ---- pages ---------------------------------------------------------------------------------------------------


async def campaigns(request: Request, session: Session, lang: str) -> Response:
    console = _console(request)
    found = await console.web.with_store(lambda store: store.campaigns.with_counts(include_tests=True))
    rows = [
        {
            **_campaign_json(c),
            "bar": stacked_bar(c.counts, label=_counts_text(c.counts)),
            "counts_text": _counts_text(c.counts),
            "progress": f"{100 * progress(c.counts):.1f}%",
        }
        for c in reversed(found)
    ]
    note, refused = console.note_for(session)
    return render(
        "campaigns",
        lang,
        title=words(lang)["campaigns"],
        session=session,
        campaigns=rows,
        legend=list(STATUS_COLOURS.items()),
        note="" if refused else note,
        error=note if refused else "",
    )


def _filters(request: Request) -> tuple[DeliveryStatus | None, str | None, int | None]:
    raw_status = request.query_params.get("status", "")
    status = DeliveryStatus(raw_status) if raw_status in tuple(DeliveryStatus) else None
    domain = request.query_params.get("domain", "").strip().lower()[:253] or None
    return status, domain, _count(request.query_params.get("before", ""))


def _count(raw: str) -> int | None:
    """A positive id or limit from the query, else None (ignored): ASCII digits only, as str.isdigit() also takes
    "²" or "①", which int() refuses, and short enough for SQLite's 64-bit integers."""
    return int(raw) or None if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


async def campaign(request: Request, session: Session, lang: str) -> Response:
    console = _console(request)
    campaign_id = request.path_params["id"]
    status, domain, before = _filters(request)

    def look(store: Store) -> tuple[Any, ...]:
        report = campaign_report(store, campaign_id)
        rows = store.reports.page(campaign_id, status=status, domain=domain, before=before, limit=PAGE + 1)
        matching = store.reports.count(campaign_id, status=status, domain=domain)
        list_lang = store.lists.get(report.details.lists[0]).lang if report.details.lists else ""
        return report, rows, matching, list_lang

    try:
        report, rows, matching, list_lang = await console.web.with_store(look)
    except NotFoundError:
        return PlainTextResponse("no such campaign\n", status_code=404)
    lang = console.lang(request, default=list_lang)
    t = words(lang)
    filters = {k: v for k, v in (("status", status or ""), ("domain", domain or "")) if v}
    base = f"/ops/campaigns/{campaign_id}"
    api = f"/ops/api/campaigns/{campaign_id}/deliveries"
    width = t["minute"] if report.bucket_minutes == 1 else t["minutes"].format(n=report.bucket_minutes)
    note, refused = console.note_for(session)
    return render(
        "campaign",
        lang,
        title=f"#{report.id} {report.subject}",
        session=session,
        r=report,
        progress=f"{100 * report.progress:.1f}%",
        bar=stacked_bar(report.counts, width=640, height=18, label=_counts_text(report.counts)),
        chart=columns(
            report.timeline, CHART_STATUSES, width=900, height=180, label=t["per_minute"].format(width=width)
        ),
        width=width,
        statuses=[str(s) for s in DeliveryStatus],
        all_statuses=[str(s) for s in DeliveryStatus],
        actions=[str(a) for a in _actions_for(str(report.state), report.counts)],
        deliveries=rows[:PAGE],
        matching=matching,
        status=status or "",
        domain=domain or "",
        before=before,
        newest_url=f"{base}?{urlencode(filters)}#deliveries",
        older_url=f"{base}?{urlencode({**filters, 'before': rows[PAGE - 1].id})}#deliveries"
        if len(rows) > PAGE
        else "",
        export_csv=f"{api}?{urlencode({**filters, 'format': 'csv'})}",
        export_json=f"{api}?{urlencode({**filters, 'format': 'json'})}",
        note="" if refused else note,
        error=note if refused else "",
    )


def _actions_for(state: str, counts: dict[str, int]) -> list[Action]:
    """The actions that make sense now (the others would be refused anyway)."""
    shown = []
    for action in CAMPAIGN_ACTIONS:
        if action is Action.PAUSE and state != "sending":
            continue
        if action is Action.RESUME and state != "paused":
            continue
        if action is Action.CANCEL and state in ("cancelled", "finished"):
            continue
        if action is Action.RETRY_DEFERRED and (state == "cancelled" or not counts.get("deferred")):
            continue
        if action is Action.REQUEUE_FAILED and (state == "cancelled" or not counts.get("failed")):
            continue
        shown.append(action)
    return shown


async def people(request: Request, session: Session, lang: str) -> Response:
    console = _console(request)
    query = request.query_params.get("q", "").strip()[:254]

    def look(store: Store) -> dict[str, Any]:
        found = store.reports.addresses(query)
        if len(found) != 1:
            return {"matches": found if len(found) > 1 else [], "person": ""}
        email = found[0]
        return {
            "matches": [],
            "person": email,
            "memberships": store.reports.memberships(email),
            "suppression": store.suppressions.get(email),
            "deliveries": store.reports.deliveries_of(email),
            "unsubscribes": store.reports.unsubscribes(email),
            "signups": store.reports.signups(email),
            "returned": store.reports.returned(email),
            "audit": store.audit.of_address(email),
        }

    found = await console.web.with_store(look)
    note, refused = console.note_for(session)
    return render(
        "people",
        lang,
        title=found["person"] or words(lang)["people"],
        session=session,
        query=query,
        note="" if refused else note,
        error=note if refused else "",
        **found,
    )


# ---- JSON, exports and metrics -------------------------------------------------------------------------------


async def api_campaigns(request: Request, session: Session, lang: str) -> Response:
    found = await _console(request).web.with_store(lambda store: store.campaigns.with_counts(include_tests=True))
    return JSONResponse([_campaign_json(c) for c in found])


async def api_campaign(request: Request, session: Session, lang: str) -> Response:
    campaign_id = request.path_params["id"]

    def look(store: Store) -> dict[str, Any]:
        found = store.campaigns.get(campaign_id)
        counts = store.deliveries.counts(found.id)
        return {
            "id": found.id,
            "issue": found.slug,
            "subject": found.subject,
            "state": str(found.state),
            "counts": counts,
            "total": sum(counts.values()),
            "progress": round(progress(counts), 4),
        }

    try:
        return JSONResponse(await _console(request).web.with_store(look))
    except NotFoundError:
        return JSONResponse({"error": "no such campaign"}, status_code=404)


def _entry_json(entry: LogEntry) -> dict[str, Any]:
    return {k: getattr(entry, k) for k in EXPORT_COLUMNS} | {"next_attempt": entry.next_attempt}


async def api_deliveries(request: Request, session: Session, lang: str) -> Response:
    """A keyset page as JSON (`next` is the URL of the one after), or with format=csv|json every matching delivery,
    streamed newest first a thousand at a time: memory stays flat whatever the campaign's size."""
    console = _console(request)
    campaign_id = request.path_params["id"]
    status, domain, before = _filters(request)
    export = request.query_params.get("format", "")
    try:
        await console.web.with_store(lambda store: store.campaigns.get(campaign_id))
    except NotFoundError:
        return JSONResponse({"error": "no such campaign"}, status_code=404)
    if export in ("csv", "json"):
        rows = _all_rows(console.web.config.db_path, campaign_id, status, domain)
        name = f"campaign-{campaign_id}-deliveries.{export}"
        body = _csv_chunks(rows) if export == "csv" else _json_chunks(rows)
        media = "text/csv; charset=utf-8" if export == "csv" else "application/json"
        return StreamingResponse(
            body, media_type=media, headers={"content-disposition": f'attachment; filename="{name}"'}
        )
    limit = min(API_PAGE_MAX, _count(request.query_params.get("limit", "")) or 100)

    def look(store: Store) -> tuple[list[LogEntry], int]:
        rows = store.reports.page(campaign_id, status=status, domain=domain, before=before, limit=limit + 1)
        return rows, store.reports.count(campaign_id, status=status, domain=domain)

    rows, matching = await console.web.with_store(look)
    filters = {k: v for k, v in (("status", status or ""), ("domain", domain or "")) if v}
    after = None
    if len(rows) > limit:
        after = f"{request.url.path}?{urlencode({**filters, 'limit': limit, 'before': rows[limit - 1].id})}"
    return JSONResponse(
        {
            "campaign": campaign_id,
            "matching": matching,
            "deliveries": [_entry_json(e) for e in rows[:limit]],
            "next": after,
        }
    )


def _all_rows(db_path: Path, campaign_id: int, status: DeliveryStatus | None, domain: str | None) -> Iterator[LogEntry]:
    with Store.open(db_path) as store:
        before = None
        while True:
            page = store.reports.page(campaign_id, status=status, domain=domain, before=before, limit=EXPORT_CHUNK)
            if not page:
                return
            yield from page
            before = page[-1].id


def _csv_chunks(rows: Iterator[LogEntry]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = SpreadsheetWriter(buffer)  # formula-safe: a reply such as =HYPERLINK(...) is text in a spreadsheet
    writer.writerow(EXPORT_COLUMNS)
    for i, entry in enumerate(rows, 1):
        writer.writerow([getattr(entry, k) for k in EXPORT_COLUMNS])
        if i % EXPORT_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _json_chunks(rows: Iterator[LogEntry]) -> Iterator[str]:
    yield "["
    for i, entry in enumerate(rows):
        yield ("," if i else "") + "\n" + json.dumps(_entry_json(entry), ensure_ascii=False)
    yield "\n]\n"


async def metrics(request: Request, session: Session, lang: str) -> Response:
    text = await _console(request).web.with_store(lambda store: exposition(metric_families(store)))
    return Response(text, media_type=CONTENT_TYPE)
