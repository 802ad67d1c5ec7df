"""The HTTP side of mailer, on Starlette and uvicorn (the only package that imports them):

    endpoints.py  `mailer serve`'s subscriber pages: unsubscribe (RFC 8058 one-click too) and confirm
    signup.py     its sign-up form, double opt-in: the confirmation mail goes out after the answer
    preferences.py  a subscriber's own page (lists, name, language, leave everything) and "send me my link"
    archive.py    the public archive: index, each issue's web edition, the Atom feed
    forms.py      what every form that changes something checks: a cookie-bound token, the Origin
    pages.py      the page layout filled in, in the list's language, and the bilingual pages for bad requests
    live.py       `mailer preview --watch`: the live-reloading preview on 127.0.0.1
    ops.py        the ops console under /ops/ (off without a password): routes, sign-in, actions
    ops_auth.py   who may use it: sessions, CSRF, HTTP Basic, the metrics token, the sign-in limit
    ops_views.py  its pages, JSON API, exports and /ops/metrics;  ops_pages.py  its words (en, zh) and layouts

This module wraps the endpoints in an app with security headers and a redacting access log, binds sockets and runs
uvicorn. Must not decide anything about subscribers (subscriptions.py does) or touch SQLite but through the store."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mailer.clock import utcnow
from mailer.config import Config
from mailer.errors import MailerError
from mailer.subscriptions import SignupLimits
from mailer.web.endpoints import TOKEN_IN_PATH, WebApp
from mailer.web.ops import OpsConsole

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("mailer.web")

SECURITY_HEADERS = {
    # No scripts, no external resources, forms post only to us, never framed.
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # The token in the URL must not leak to another site through the Referer header. Not "no-referrer": with it
    # browsers send `Origin: null` on our own form posts, and the sign-up form's origin check needs the real one.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def create_app(config: Config, limits: SignupLimits | None = None, clock: Callable[[], datetime] = utcnow) -> Starlette:
    web = WebApp(config, limits, clock)
    ops = OpsConsole(web)
    routes = [
        Route("/u/{token}", _by_method(web.unsubscribe_page, web.unsubscribe), methods=["GET", "POST"]),
        Route("/s/{list}", _by_method(web.signups.page, web.signups.post), methods=["GET", "POST"]),
        Route("/c/{token}", _by_method(web.confirm_page, web.confirm), methods=["GET", "POST"]),
        Route("/p/", _by_method(web.preferences.link_page, web.preferences.link_request), methods=["GET", "POST"]),
        Route("/p/{token}", _by_method(web.preferences.page, web.preferences.change), methods=["GET", "POST"]),
        Route("/a/{list}", web.archive.to_index, methods=["GET"]),
        Route("/a/{list}/", web.archive.index, methods=["GET"]),
        Route("/a/{list}/feed.xml", web.archive.feed, methods=["GET"]),
        Route("/a/{list}/{slug}", web.archive.issue, methods=["GET"]),
        Route("/a/{list}/{slug}/{image}", web.archive.image, methods=["GET"]),
        Route("/healthz", web.health, methods=["GET"]),
        *ops.routes(),
    ]

    async def harden(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.monotonic()
        try:
            response = await call_next(request)
        except Exception:
            # Answered here, not by Starlette's outermost error handler, whose bare 500 would skip the headers
            # below (and the page); the traceback goes to the log, with tokens redacted from the path.
            log.exception("%s %s failed", request.method, TOKEN_IN_PATH.sub(r"/\1/…", request.url.path))
            response = web.pages.unavailable()
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        # Our own access log: a token in a path is as good as the subscriber's consent, so it is never written.
        path = TOKEN_IN_PATH.sub(lambda m: f"/{m.group(1)}/…", request.url.path)
        log.info("%s %s %s %.0fms", request.method, path, response.status_code, (time.monotonic() - started) * 1000)
        return response

    app = Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=harden)])
    app.router.redirect_slashes = False  # its redirect is built from the Host header, which a client chooses
    app.state.web = web
    app.state.ops = ops
    return app


Endpoint = Callable[[Request], Awaitable[Response]]


def _by_method(get: Endpoint, post: Endpoint) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await (post(request) if request.method == "POST" else get(request))

    return endpoint


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound socket for uvicorn: bound here, so a port in use is one clear line (uvicorn would exit with 3)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MailerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(
    config: Config,
    host: str,
    port: int,
    trusted_proxies: str,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Run the app on uvicorn until interrupted. Behind a reverse proxy, the client address comes from
    X-Forwarded-For only when the proxy is in `trusted_proxies` (the per-client sign-up limit relies on it)."""
    import uvicorn

    sock = listen_socket(host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = uvicorn.Server(server_config(create_app(config), trusted_proxies))
    if ready:
        ready(f"http://{host}:{sock.getsockname()[1]}")
    server.run(sockets=[sock])


def server_config(app: ASGIApp, trusted_proxies: str) -> uvicorn.Config:
    """uvicorn's settings for `mailer serve`: X-Forwarded-For read by ForwardedFor, not by uvicorn alone."""
    import uvicorn

    return uvicorn.Config(
        ForwardedFor(app, trusted_proxies),
        proxy_headers=False,  # ForwardedFor does it, and keeps the peer when the header names no address
        access_log=False,  # uvicorn's access log would write unsubscribe tokens; ours redacts them
        server_header=False,
        log_level="warning",
    )


class ForwardedFor:
    """The client's address from X-Forwarded-For when the peer is a trusted proxy (uvicorn's own reading of it),
    kept only when it is an IP address: "admin@corp <b>x</b>" is no client, so the peer it came from stays the
    client (the audit's "who" and the per-client limits use this address)."""

    def __init__(self, app: ASGIApp, trusted_proxies: str) -> None:
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        self.app = app
        # uvicorn's ASGI types and Starlette's are the same protocol, spelled differently
        self.proxied: ASGIApp = ProxyHeadersMiddleware(cast(Any, self._checked), trusted_hosts=trusted_proxies)  # type: ignore[assignment]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        return await self.proxied({**scope, "mailer.peer": scope.get("client")}, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client and client != scope["mailer.peer"]:
            try:
                ipaddress.ip_address(client[0])
            except ValueError:
                scope["client"] = scope["mailer.peer"]
        await self.app(scope, receive, send)
