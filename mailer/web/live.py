"""`mailer preview --watch` on the web: the desktop and mobile frames of the latest rendering, the message itself,
its version number for the page's reload poll, and the background watch that re-renders on change; served on
127.0.0.1 only.

The rendering and the watching belong to preview.LivePreview; this module only serves them."""

from __future__ import annotations

import asyncio
import contextlib
import html as html_lib
import json
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mailer.checks import is_loopback_url
from mailer.errors import MailerError
from mailer.preview import DESKTOP_WIDTH, MOBILE_WIDTH, LivePreview
from mailer.web import listen_socket

_FRAME_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>preview: {title}</title>
<style>
body {{ margin: 0; font: 14px system-ui, sans-serif; background: #d9dde3; color: #222; }}
header {{ padding: 8px 16px; background: #fff; border-bottom: 1px solid #bbb; }}
header .problems {{ color: #8a4b00; margin: 4px 0 0 0; padding-left: 18px; }}
header .error {{ color: #b00020; font-weight: bold; }}
main {{ display: flex; gap: 24px; padding: 16px; align-items: flex-start; }}
figure {{ margin: 0; }} figcaption {{ margin-bottom: 4px; color: #555; }}
iframe {{ border: 1px solid #999; background: #fff; height: 85vh; }}
</style></head>
<body>
<header><b>{title}</b> &middot; updates when you save the issue
{error}<ul class="problems">{warnings}</ul></header>
<main>
<figure><figcaption>desktop</figcaption><iframe src="/message.html" width="700"></iframe></figure>
<figure><figcaption>mobile ({mobile} px)</figcaption><iframe src="/message.html" width="{mobile}"></iframe></figure>
</main>
<script>
let version = {version};
setInterval(async () => {{
  try {{
    const r = await fetch("/version", {{cache: "no-store"}});
    const v = (await r.json()).version;
    if (v !== version) location.reload();
  }} catch (e) {{}}
}}, 700);
</script>
</body></html>
"""


def frame_page(live: LivePreview) -> str:
    title = html_lib.escape(live.message.slug if live.message else "issue")
    error = f'<p class="error">{html_lib.escape(live.error)} (showing the last good version)</p>' if live.error else ""
    warnings = "".join(f"<li>{html_lib.escape(w)}</li>" for w in live.warnings)
    return _FRAME_PAGE.format(
        title=title,
        error=error,
        warnings=warnings,
        version=json.dumps(live.version),
        desktop=DESKTOP_WIDTH,
        mobile=MOBILE_WIDTH,
    )


def live_app(live: LivePreview, poll_seconds: float = 0.3) -> Starlette:
    """`/` the desktop and mobile frames (reloading when a new version is rendered), `/message.html` the
    message itself, `/version` the rendering's number; a background task re-renders on change."""
    headers = {"Cache-Control": "no-store"}

    async def frame(request: Request) -> Response:
        return HTMLResponse(frame_page(live), headers=headers)

    async def message(request: Request) -> Response:
        body = live.message.browser_html if live.message else f"<p>{html_lib.escape(live.error)}</p>"
        return HTMLResponse(body, headers=headers)

    async def version(request: Request) -> Response:
        return JSONResponse({"version": live.version}, headers=headers)

    async def watch() -> None:
        while True:
            await asyncio.sleep(poll_seconds)
            await asyncio.to_thread(live.refresh)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(watch())
        try:
            yield
        finally:
            task.cancel()

    return Starlette(
        routes=[Route("/", frame), Route("/message.html", message), Route("/version", version)], lifespan=lifespan
    )


def serve_live_preview(
    live: LivePreview, port: int, host: str = "127.0.0.1", ready: Callable[[str], None] | None = None
) -> None:
    """Serve the live preview until Ctrl-C (loopback only: a draft is not for the network)."""
    import uvicorn

    if not is_loopback_url(f"http://{host}/"):
        raise MailerError(f"the live preview only listens on this machine, not on {host}")
    sock = listen_socket(host, port)
    if ready:
        ready(f"http://{host}:{sock.getsockname()[1]}/")
    uvicorn.Server(uvicorn.Config(live_app(live), log_level="warning", access_log=False)).run(sockets=[sock])
