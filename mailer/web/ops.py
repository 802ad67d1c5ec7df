"""The ops console under /ops/ (issue 14): its routes, who may use each (a session for pages and actions, also
HTTP Basic for /ops/api/, also a read-only token for /ops/metrics), the sign-in form, sign-out, and the actions
posted from the pages (CSRF-checked, done and audited by operations.py, then back to the page with a note).

Off unless a password is configured: then everything under /ops/ is a plain 404. The pages themselves are
ops_views.py's; who someone is, ops_auth.py's. Every answer carries the console's CSP (scripts from 'self' only)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailer.errors import MailerError, NotFoundError
from mailer.operations import ADDRESS_ACTIONS, CAMPAIGN_ACTIONS, Action, act_on_address, act_on_campaign
from mailer.web import ops_views
from mailer.web.forms import FormGuard
from mailer.web.ops_auth import SESSION_COOKIE, OpsAuth, Session
from mailer.web.ops_pages import LANGS, render, words

if TYPE_CHECKING:
    from mailer.web.endpoints import WebApp

log = logging.getLogger("mailer.web")

CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
LANG_COOKIE = "mailer_ops_lang"
FORM_COOKIE = "mailer_ops_form"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]

Handler = Callable[[Request, Session, str], Awaitable[Response]]


class OpsConsole:
    def __init__(self, web: WebApp) -> None:
        self.web = web
        self.auth = OpsAuth(web.config, web.clock)
        self.guard = FormGuard(web.config.secret, FORM_COOKIE, "/ops/login", web.config.base_url)  # the sign-in form
        self.notes: dict[str, tuple[str, bool]] = {}  # session nonce -> the last action's sentence, and if refused
        self.script = resources.files("mailer.web").joinpath("static/ops.js").read_bytes()

    def routes(self) -> list[BaseRoute]:
        if not self.auth.enabled:
            return [
                Route("/ops", self.off, methods=ALL_METHODS),
                Route("/ops/{rest:path}", self.off, methods=ALL_METHODS),
            ]
        return [
            Route("/ops", lambda request: RedirectResponse("/ops/", 303)),
            Route("/ops/login", self.login, methods=["GET", "POST"]),
            Route("/ops/logout", self.logout, methods=["POST"]),
            Route("/ops/static/ops.js", self.static_script),
            Route("/ops/", self.page(ops_views.campaigns)),
            Route("/ops/campaigns/{id:int}", self.page(ops_views.campaign)),
            Route("/ops/campaigns/{id:int}/{action}", self.campaign_action, methods=["POST"]),
            Route("/ops/people", self.page(ops_views.people)),
            Route("/ops/people/{action}", self.address_action, methods=["POST"]),
            Route("/ops/api/campaigns", self.api(ops_views.api_campaigns)),
            Route("/ops/api/campaigns/{id:int}", self.api(ops_views.api_campaign)),
            Route("/ops/api/campaigns/{id:int}/deliveries", self.api(ops_views.api_deliveries)),
            Route("/ops/metrics", self.api(ops_views.metrics, token=True)),
            Route("/ops/{rest:path}", self.off, methods=ALL_METHODS),
        ]

    # ---- plumbing ---------------------------------------------------------------------------------------------

    async def off(self, request: Request) -> Response:
        return self.harden(PlainTextResponse("Not Found\n", status_code=404))

    @staticmethod
    def harden(response: Response) -> Response:
        response.headers["content-security-policy"] = CSP
        response.headers["cache-control"] = "no-store"
        return response

    def lang(self, request: Request, default: str = "") -> str:
        chosen = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE, "")
        if chosen in LANGS:
            return chosen
        if default in LANGS:
            return default
        return "zh" if request.headers.get("accept-language", "").lower().startswith("zh") else "en"

    def _keep_lang(self, request: Request, response: Response) -> None:
        chosen = request.query_params.get("lang")
        if chosen in LANGS:
            self._cookie(response, LANG_COOKIE, chosen, 365 * 86400, "/ops")

    @staticmethod
    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def actor(self, request: Request) -> str:
        return f"{self.auth.user} ({self.client(request)})"

    def note_for(self, session: Session) -> tuple[str, bool]:
        return self.notes.pop(session.nonce, ("", False))

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A page for a signed-in operator; anyone else is sent to the sign-in form (and back after)."""

        async def endpoint(request: Request) -> Response:
            session = self.auth.session(request)
            if session is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return self.harden(RedirectResponse(f"/ops/login?next={quote(target, safe='')}", 303))
            response = await handler(request, session, self.lang(request))
            self._keep_lang(request, response)
            return self.harden(response)

        return endpoint

    def api(self, handler: Handler, token: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """JSON (or metrics) for a session, HTTP Basic with the console's credentials, or (metrics) the token."""

        async def endpoint(request: Request) -> Response:
            session = self.auth.session(request)
            if session is None and token and self.auth.bearer(request):  # a scraper: its token is a guess too
                client = self.client(request)
                if self.auth.limited(client):
                    return self.harden(PlainTextResponse("too many failed sign-ins; wait a few minutes\n", 429))
                if not self.auth.metrics_token_ok(request):
                    self.auth.failed(client)
                    return self.harden(PlainTextResponse("sign in required\n", 401))
            elif session is None:
                client = self.client(request)
                given = self.auth.basic_credentials(request)
                ok = False if given is None else await self.auth.attempt(client, *given)
                if ok is None or (given is None and self.auth.limited(client)):
                    return self.harden(PlainTextResponse("too many failed sign-ins; wait a few minutes\n", 429))
                if not ok:
                    challenge = {"www-authenticate": 'Basic realm="mailer ops", charset="UTF-8"'}
                    return self.harden(PlainTextResponse("sign in required\n", 401, headers=challenge))
                session = Session("", "")  # a script's request: no session, no forms
            return self.harden(await handler(request, session or Session("", ""), self.lang(request)))

        return endpoint

    async def static_script(self, request: Request) -> Response:
        return self.harden(Response(self.script, media_type="text/javascript; charset=utf-8"))

    # ---- signing in and out -----------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        lang = self.lang(request)
        target = request.query_params.get("next", "/ops/")
        if request.method == "GET":
            if self.auth.session(request) is not None:
                return self.harden(RedirectResponse(_safe_next(target), 303))
            return self._login_form(lang, target)
        client = self.client(request)
        if self.auth.limited(client):
            return self._login_form(lang, target, status=429, error=words(lang)["limited"])
        form = await self.web.read_form(request)
        if form is None:
            return self._login_form(lang, target, status=400, error=words(lang)["expired_form"])
        target = str(form.get("next", target))
        user = str(form.get("user", ""))[:200]
        if not self.guard.check(request, form, "ops-login"):
            return self._login_form(lang, target, status=403, error=words(lang)["expired_form"], user=user)
        ok = await self.auth.attempt(client, user, str(form.get("password", ""))[:1000])
        if ok is None:  # the limit again: other sign-ins of this client came in while this one's form was read
            return self._login_form(lang, target, status=429, error=words(lang)["limited"])
        if not ok:
            log.warning("ops sign-in refused for a client at %s", client)
            return self._login_form(lang, target, status=401, error=words(lang)["bad_login"], user=user)
        value, max_age = self.auth.new_session()
        response = RedirectResponse(_safe_next(target), 303)
        self._cookie(response, SESSION_COOKIE, value, max_age, "/ops")
        response.delete_cookie(FORM_COOKIE, path="/ops/login")
        log.info("ops sign-in from %s", client)
        return self.harden(response)

    def _login_form(self, lang: str, target: str, *, status: int = 200, error: str = "", user: str = "") -> Response:
        token, nonce = self.guard.issue("ops-login")
        response = render(
            "login", lang, status, title=words(lang)["sign_in"], form_token=token, next=target, user=user, error=error
        )
        self.guard.set_cookie(response, nonce)
        return self.harden(response)

    def _cookie(self, response: Response, name: str, value: str, max_age: int, path: str) -> None:
        """Every cookie of the console: HttpOnly, SameSite=Strict, Secure when MAILER_BASE_URL is https."""
        response.set_cookie(
            name, value, max_age=max_age, path=path, httponly=True, samesite="strict", secure=self.guard.secure
        )

    async def logout(self, request: Request) -> Response:
        session = await self._checked_post(request)
        if isinstance(session, Response):
            return session
        self.auth.sign_out(session)
        response = RedirectResponse("/ops/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/ops")
        return self.harden(response)

    # ---- actions ----------------------------------------------------------------------------------------------

    async def _checked_post(self, request: Request) -> Session | Response:
        """The session of a POST that carries its CSRF field and comes from our own pages; else a 403."""
        session = self.auth.session(request)
        form = await self.web.read_form(request)
        if session is None or form is None or not self.guard.same_origin(request):
            return self.harden(PlainTextResponse("refused: sign in and use the console's own forms\n", 403))
        if not self.auth.csrf_ok(session, str(form.get("csrf", ""))):
            return self.harden(PlainTextResponse("refused: the form's CSRF field is missing or wrong\n", 403))
        request.state.form = form
        return session

    async def _posted_action(self, request: Request, allowed: tuple[Action, ...]) -> tuple[Session, Action] | Response:
        """The session and the action of a checked POST (see _checked_post); an action not in `allowed` is 404."""
        session = await self._checked_post(request)
        if isinstance(session, Response):
            return session
        name = request.path_params["action"]
        if name not in {str(action) for action in allowed}:
            return await self.off(request)
        return session, Action(name)

    async def campaign_action(self, request: Request) -> Response:
        posted = await self._posted_action(request, CAMPAIGN_ACTIONS)
        if isinstance(posted, Response):
            return posted
        (session, action), campaign_id, actor = posted, request.path_params["id"], self.actor(request)
        refused = await self._act(session, lambda store: act_on_campaign(store, actor, action, campaign_id))
        # No such campaign: back to the list, which shows the note (the campaign's page would be a bare 404).
        back = "/ops/" if isinstance(refused, NotFoundError) else f"/ops/campaigns/{campaign_id}"
        return self.harden(RedirectResponse(back, 303))

    async def address_action(self, request: Request) -> Response:
        posted = await self._posted_action(request, ADDRESS_ACTIONS)
        if isinstance(posted, Response):
            return posted
        (session, action), form, actor = posted, request.state.form, self.actor(request)
        email, list_name = str(form.get("email", ""))[:254], str(form.get("list", ""))[:200]
        await self._act(session, lambda store: act_on_address(store, actor, action, email, list_name))
        return self.harden(RedirectResponse(f"/ops/people?q={quote(email.strip().lower(), safe='@')}", 303))

    async def _act(self, session: Session, work: Callable[..., str]) -> MailerError | None:
        """Do the action and keep its sentence for the next page; why it was refused, or None."""
        if len(self.notes) > 1000:  # notes nobody came back to read (a closed tab): the oldest go first
            self.notes.pop(next(iter(self.notes)))
        try:
            said = await self.web.with_store(work)
        except MailerError as exc:
            self.notes[session.nonce] = (str(exc), True)
            return exc
        self.notes[session.nonce] = (said, False)
        log.info("ops action: %s", said)
        return None


def _safe_next(target: str) -> str:
    """Where to go after signing in: a path of the console only (never another site: //evil.test is a host)."""
    if target.startswith("/ops/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ops/"
