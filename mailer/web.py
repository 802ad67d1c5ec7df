"""The HTTP app of `mailer serve` (Starlette): unsubscribe (page and RFC 8058 one-click), sign-up with double
opt-in, confirm. Thin: it parses requests and renders pages; subscriptions.py decides, store.py remembers.

A GET never changes anything (mail scanners follow links); a bad token gets the same 400 page whatever was wrong."""

from __future__ import annotations

import logging
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from mailer.addresses import AddressError
from mailer.clock import utcnow
from mailer.config import Config
from mailer.errors import MailerError, NotFoundError
from mailer.message import BuiltMessage
from mailer.models import MailingList, SubscriberStatus, UnsubscribeSource
from mailer.render import memory_ceiling, render_page
from mailer.send import dkim_signer, send_one, smtp_settings
from mailer.store import Store
from mailer.subscriptions import (
    ConfirmState,
    LinkTarget,
    SignupLimits,
    SignupOutcome,
    TestLink,
    build_confirmation,
    confirm_with_token,
    link_target,
    mask_address,
    request_signup,
    requested_name,
    unsubscribe_with_token,
)
from mailer.tokens import BadToken, TokenKind, check_form_token, make_form_token

log = logging.getLogger("mailer.web")

FORM_MAX_AGE = 2 * 3600  # a sign-up form older than this asks for a reload
CSRF_COOKIE = "mailer_form"
TRAP_FIELD = "website"  # hidden from people, filled in by form-spamming bots
TOKEN_IN_PATH = re.compile(r"^/(u|c)/[^/]+")

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

TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "unsub_heading": "退订「{title}」",
        "unsub_ask": "确认后，{addr} 将不再收到「{title}」的邮件。",
        "unsub_button": "确认退订",
        "unsub_done_heading": "已退订",
        "unsub_done": "{addr} 不会再收到「{title}」的邮件。",
        "unsub_already": "{addr} 已经退订「{title}」，不会再收到它的邮件。",
        "unsub_undo": "退订错了？重新订阅",
        "test_heading": "测试邮件中的链接",
        "test_link": "这是测试邮件里的退订链接，它不对应任何读者，什么也不会改变。"
        "正式发送时，每位读者邮件中的链接只退订其本人。",
        "signup_heading": "订阅「{title}」",
        "signup_intro": "填写邮箱，我们会发一封确认邮件；点击其中的链接后订阅才生效。",
        "email_label": "邮箱",
        "name_label": "称呼（可选）",
        "signup_button": "订阅",
        "signup_bad_email": "请填写有效的邮箱地址。",
        "signup_sent_heading": "请查收确认邮件",
        "signup_sent": "如果 {addr} 可以订阅「{title}」，我们已经给它发了一封确认邮件。请点击邮件中的链接完成订阅。",
        "signup_sent_hint": "几分钟内没有收到？请查看垃圾邮件文件夹。",
        "form_expired_heading": "表单已过期",
        "form_expired": "为了安全，这个表单已失效。请重新打开订阅页面再提交。",
        "back_to_form": "返回订阅页面",
        "limited_heading": "请求过于频繁",
        "limited": "这台设备提交订阅的次数太多了，请过一会儿再试。",
        "confirm_heading": "确认订阅「{title}」",
        "confirm_ask": "点击下面的按钮，{addr} 将开始收到「{title}」。",
        "confirm_button": "确认订阅",
        "confirmed_heading": "订阅成功",
        "confirmed": "{addr} 已订阅「{title}」。欢迎！",
        "expired_heading": "链接已过期",
        "expired": "这个确认链接已超过 7 天。请重新订阅，我们会再发一封确认邮件。",
        "gone_heading": "链接已失效",
        "gone": "这个确认链接已不再适用。如需订阅，请重新填写订阅表单。",
    },
    "en": {
        "unsub_heading": "Unsubscribe from {title}",
        "unsub_ask": "Once you confirm, {addr} will no longer receive {title}.",
        "unsub_button": "Unsubscribe",
        "unsub_done_heading": "You are unsubscribed",
        "unsub_done": "{addr} will no longer receive {title}.",
        "unsub_already": "{addr} is already unsubscribed from {title} and will receive nothing more.",
        "unsub_undo": "Unsubscribed by mistake? Subscribe again",
        "test_heading": "A link from a test message",
        "test_link": "This is the unsubscribe link of a test message: it belongs to no reader and changes nothing. In "
        "the real issue, the link in each reader's message unsubscribes that reader.",
        "signup_heading": "Subscribe to {title}",
        "signup_intro": "Enter your address and we will send you a confirmation mail; your subscription starts "
        "when you click the link in it.",
        "email_label": "Email address",
        "name_label": "Name (optional)",
        "signup_button": "Subscribe",
        "signup_bad_email": "Please enter a valid email address.",
        "signup_sent_heading": "Check your inbox",
        "signup_sent": "If {addr} can subscribe to {title}, a confirmation mail is on its way. Click the link in "
        "it to finish.",
        "signup_sent_hint": "Nothing after a few minutes? Look in your spam folder.",
        "form_expired_heading": "This form has expired",
        "form_expired": "For your safety this form is no longer valid. Please open the sign-up page again.",
        "back_to_form": "Back to the sign-up page",
        "limited_heading": "Too many requests",
        "limited": "Too many sign-ups came from this device. Please try again later.",
        "confirm_heading": "Confirm your subscription to {title}",
        "confirm_ask": "Press the button and {addr} will start receiving {title}.",
        "confirm_button": "Confirm subscription",
        "confirmed_heading": "You are subscribed",
        "confirmed": "{addr} is now subscribed to {title}. Welcome!",
        "expired_heading": "This link has expired",
        "expired": "This confirmation link is more than 7 days old. Please sign up again and we will send a "
        "new one.",
        "gone_heading": "This link no longer applies",
        "gone": "This confirmation link is no longer valid. To subscribe, please fill in the sign-up form again.",
    },
}

# Shown when we cannot (or must not) tell which list a request is about: both languages, nothing specific.
BAD_LINK = ("链接无效 / Invalid link", [
    "这个链接无效或不完整。请确认复制了邮件中的完整链接。",
    "This link is not valid or is incomplete. Please make sure you copied the whole link from the email.",
])
NO_LIST = ("没有这个列表 / No such list", ["没有找到这个邮件列表。", "There is no mailing list at this address."])
UNAVAILABLE = ("暂时无法处理 / Not available right now", [
    "服务暂时出了问题，您的请求没有完成。请稍后再试。",
    "Something went wrong on our side and your request was not completed. Please try again later.",
])


class WebApp:
    """The endpoints, bound to one configuration; `create_app` wraps them in Starlette."""

    def __init__(self, config: Config, limits: SignupLimits | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        if not config.secret:
            raise MailerError("no signing secret: run 'mailer init' (or set MAILER_SECRET) before 'mailer serve'")
        self.config = config
        self.limits = limits or SignupLimits()
        self.clock = clock
        self.secure_cookie = config.base_url.startswith("https://")
        self.pending = 0  # confirmation mails handed to the background and not yet sent
        self.signer = dkim_signer(config)  # confirmations are DKIM-signed like issues; the key is read once
        self._check_page_layout()

    def _check_page_layout(self) -> None:
        """Render the page once with every part filled in before serving: an error in web/page.html.j2 is then one
        line at start, not a 500 for every request (a one-click unsubscribe's too) until someone reads the log."""
        form = {"action": "/s/list", "button": "button", "hidden": {"form_token": "token"}, "trap": TRAP_FIELD,
                "fields": [{"name": "email", "type": "email", "label": "label", "value": "", "required": True,
                            "autocomplete": "email"}]}
        with memory_ceiling():  # a layout that would eat the host's memory is found here, before any thread runs
            for lang in TEXT:
                self._page(lang, "heading", ["paragraph"], list_title="title", form=form,
                           links=[("/s/list", "link")], error="error")
            self._page("zh", BAD_LINK[0], BAD_LINK[1], status=400)

    # ---- plumbing ----------------------------------------------------------------------------------------------

    async def _with_store(self, work: Callable[[Store], Any]) -> Any:
        def run() -> Any:
            store = Store.open(self.config.db_path)
            try:
                return work(store)
            finally:
                store.close()

        return await run_in_threadpool(run)

    def _page(self, lang: str, heading: str, paragraphs: list[str], *, status: int = 200, list_title: str = "",
              form: dict[str, Any] | None = None, links: list[tuple[str, str]] | None = None,
              error: str = "") -> HTMLResponse:
        html = render_page("page.html.j2", {
            "lang": lang, "heading": heading, "paragraphs": paragraphs, "list_title": list_title, "form": form,
            "links": links or [], "error": error, "theme": self.config.theme,
        }, self.config.templates)
        return HTMLResponse(html, status_code=status)

    def unavailable(self) -> Response:
        """The answer to a request that failed on our side: bilingual, naming nothing, status 500."""
        try:
            return self._page("zh", UNAVAILABLE[0], UNAVAILABLE[1], status=500)
        except Exception:  # the page itself cannot be rendered (a broken layout folder): plain words then
            return PlainTextResponse("\n".join([UNAVAILABLE[0], *UNAVAILABLE[1]]) + "\n", status_code=500)

    def _bad_link(self, problem: BadToken | None = None) -> HTMLResponse:
        if isinstance(problem, TestLink):
            words = self._words(problem.mailing_list)
            return self._page(problem.mailing_list.lang, words["test_heading"], [words["test_link"]],
                              list_title=problem.mailing_list.title or problem.mailing_list.name)
        return self._page("zh", BAD_LINK[0], BAD_LINK[1], status=400)

    @staticmethod
    def _words(mailing_list: MailingList) -> dict[str, str]:
        return TEXT.get(mailing_list.lang, TEXT["en"])

    def _say(self, target: LinkTarget, key: str) -> str:
        return self._words(target.mailing_list)[key].format(
            title=target.mailing_list.title or target.mailing_list.name,
            addr=mask_address(target.subscriber.email),
        )

    def _signup_url(self, mailing_list: MailingList) -> str:
        return f"{self.config.base_url}/s/{mailing_list.name}"

    @staticmethod
    async def _form(request: Request) -> FormData | None:
        """The posted form, or None when the body is not a form we can read (broken multipart, too large)."""
        try:
            return await request.form(max_files=0, max_fields=20)
        except Exception as exc:  # Starlette raises MultiPartException, HTTPException or a decoding error
            log.info("unreadable form posted to %s: %s", TOKEN_IN_PATH.sub(r"/\1/…", request.url.path), exc)
            return None

    # ---- unsubscribe -------------------------------------------------------------------------------------------

    async def unsubscribe_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        try:
            target = await self._with_store(
                lambda store: link_target(store, self.config.secret, token, TokenKind.UNSUBSCRIBE))
        except BadToken as problem:
            return self._bad_link(problem)
        words = self._words(target.mailing_list)
        title = target.mailing_list.title or target.mailing_list.name
        if target.subscriber.status == SubscriberStatus.UNSUBSCRIBED:
            return self._page(target.mailing_list.lang, words["unsub_done_heading"],
                              [self._say(target, "unsub_already")], list_title=title)
        form = {"action": f"/u/{token}", "button": words["unsub_button"], "hidden": {}, "fields": [], "trap": ""}
        return self._page(target.mailing_list.lang, self._say(target, "unsub_heading"),
                          [self._say(target, "unsub_ask")], list_title=title, form=form)

    async def unsubscribe(self, request: Request) -> Response:
        """RFC 8058: a POST with `List-Unsubscribe=One-Click` (no cookies, no redirect) or the page's button."""
        token = request.path_params["token"]
        form = await self._form(request)
        if form is None:
            return self._bad_link()
        one_click = str(form.get("List-Unsubscribe", "")) == "One-Click"
        try:
            target, _ = await self._with_store(lambda store: unsubscribe_with_token(
                store, self.config.secret, token, UnsubscribeSource.ONE_CLICK if one_click else UnsubscribeSource.PAGE))
        except BadToken as problem:
            return self._bad_link(problem)
        words = self._words(target.mailing_list)
        return self._page(target.mailing_list.lang, words["unsub_done_heading"], [self._say(target, "unsub_done")],
                          list_title=target.mailing_list.title or target.mailing_list.name,
                          links=[(self._signup_url(target.mailing_list), words["unsub_undo"])])

    # ---- sign-up -----------------------------------------------------------------------------------------------

    async def _list(self, name: str) -> MailingList | None:
        try:
            return await self._with_store(lambda store: store.lists.get(name))  # type: ignore[no-any-return]
        except NotFoundError:
            return None

    def _signup_form(self, mailing_list: MailingList, *, status: int = 200, error: str = "", email: str = "",
                     name: str = "") -> HTMLResponse:
        words = self._words(mailing_list)
        nonce = secrets.token_urlsafe(16)
        form = {
            "action": f"/s/{mailing_list.name}",
            "button": words["signup_button"],
            "hidden": {"form_token": make_form_token(self.config.secret, mailing_list.name, int(time.time()), nonce)},
            "fields": [
                {"name": "email", "type": "email", "label": words["email_label"], "value": email, "required": True,
                 "autocomplete": "email"},
                {"name": "name", "type": "text", "label": words["name_label"], "value": name, "required": False,
                 "autocomplete": "name"},
            ],
            "trap": TRAP_FIELD,
        }
        title = mailing_list.title or mailing_list.name
        response = self._page(mailing_list.lang, words["signup_heading"].format(title=title),
                              [words["signup_intro"]], status=status, list_title=title, form=form, error=error)
        response.set_cookie(CSRF_COOKIE, nonce, max_age=FORM_MAX_AGE, path=f"/s/{mailing_list.name}",
                            httponly=True, samesite="strict", secure=self.secure_cookie)
        return response

    async def signup_page(self, request: Request) -> Response:
        mailing_list = await self._list(request.path_params["list"])
        if mailing_list is None:
            return self._page("zh", NO_LIST[0], NO_LIST[1], status=404)
        return self._signup_form(mailing_list)

    def _same_origin(self, request: Request) -> bool:
        """A browser names the page a form came from; it must be us (MAILER_BASE_URL, or the Host we serve)."""
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        ours = {urlsplit(self.config.base_url).netloc, request.headers.get("host", "")}
        return urlsplit(origin).netloc in ours

    async def signup(self, request: Request) -> Response:
        mailing_list = await self._list(request.path_params["list"])
        if mailing_list is None:
            return self._page("zh", NO_LIST[0], NO_LIST[1], status=404)
        words = self._words(mailing_list)
        title = mailing_list.title or mailing_list.name
        form = await self._form(request)
        if form is None:
            return self._signup_form(mailing_list, status=400, error=words["signup_bad_email"])
        email = str(form.get("email", "")).strip()[:254]
        name = str(form.get("name", "")).strip()[:200]
        valid_form = self._same_origin(request) and check_form_token(
            self.config.secret, mailing_list.name, str(form.get("form_token", "")),
            request.cookies.get(CSRF_COOKIE, ""), int(time.time()), FORM_MAX_AGE)
        if not valid_form:
            return self._page(mailing_list.lang, words["form_expired_heading"], [words["form_expired"]],
                              status=403, list_title=title,
                              links=[(f"/s/{mailing_list.name}", words["back_to_form"])])
        sent_page = self._page(mailing_list.lang, words["signup_sent_heading"],
                               [words["signup_sent"].format(addr=mask_address(email) if "@" in email else email,
                                                            title=title), words["signup_sent_hint"]],
                               list_title=title)
        if str(form.get(TRAP_FIELD, "")):
            log.info("sign-up to %s: honeypot filled, ignored", mailing_list.name)
            return sent_page  # a bot learns nothing
        if not mailing_list.from_addr:
            # Nothing is recorded and nothing counted: the form cannot work until ops sets a From address.
            log.error("sign-up to %s refused: the list has no From address (lists create --from), so no "
                      "confirmation can be sent", mailing_list.name)
            return self._page(mailing_list.lang, UNAVAILABLE[0], UNAVAILABLE[1], status=503, list_title=title)
        client = request.client.host if request.client else "unknown"
        now = self.clock()
        try:
            signup = await self._with_store(
                lambda store: request_signup(store, mailing_list.name, email, name, client, now, self.limits))
        except AddressError:
            return self._signup_form(mailing_list, status=400, error=words["signup_bad_email"], email=email,
                                     name=name)
        if signup.outcome == SignupOutcome.LIMITED:
            return self._page(mailing_list.lang, words["limited_heading"], [words["limited"]], status=429,
                              list_title=title)
        if signup.outcome == SignupOutcome.MAIL and signup.subscriber is not None:
            # Mailed after the answer is sent: a slow relay does not hold the browser, and the answer takes as long
            # for an address that gets a mail as for one that does not (timing must not tell who is subscribed).
            message = build_confirmation(mailing_list, signup.subscriber, self.config.secret, self.config.base_url,
                                         now, self.signer, signup.request_id, templates_dir=self.config.templates,
                                         theme=self.config.theme_for(mailing_list.name))
            self.pending += 1
            sent_page.background = BackgroundTask(self._send_confirmation, signup.subscriber.email, message)
        return sent_page

    async def _send_confirmation(self, email: str, message: BuiltMessage) -> None:
        try:
            try:
                reply = await send_one(smtp_settings(self.config), message)
                delivered = reply.code is not None and 200 <= reply.code < 300
                problem = f"{reply.code} {reply.text}"
            except MailerError as exc:
                delivered, problem = False, str(exc)
            if not delivered:
                # Not counted against the address: the person can simply send the form again.
                log.warning("confirmation mail to %s not sent: %s", mask_address(email), problem)
                await self._with_store(lambda store: store.signups.forget_last_mail(email))
        finally:
            self.pending -= 1

    # ---- confirm -----------------------------------------------------------------------------------------------

    async def _confirm(self, request: Request, apply: bool) -> Response:
        token = request.path_params["token"]
        now = self.clock()
        name: str | None = None  # a POST without the page's name field (a bare POST) takes the request's name
        if apply:
            form = await self._form(request)
            if form is None:
                return self._bad_link()
            name = str(form["name"]).strip()[:200] if "name" in form else None

        def look(store: Store) -> tuple[LinkTarget, ConfirmState, str]:
            target, state = confirm_with_token(store, self.config.secret, token, now, apply=apply, name=name)
            shown = "" if apply else requested_name(store, self.config.secret, token) or target.subscriber.name
            return target, state, shown

        try:
            target, state, shown_name = await self._with_store(look)
        except BadToken:
            return self._bad_link()
        words = self._words(target.mailing_list)
        title = target.mailing_list.title or target.mailing_list.name
        lang = target.mailing_list.lang
        again = [(self._signup_url(target.mailing_list), words["back_to_form"])]
        if state == ConfirmState.READY:
            # The name asked for is shown to the mailbox owner, who may change or clear it before confirming.
            fields = [{"name": "name", "type": "text", "label": words["name_label"], "value": shown_name,
                       "required": False, "autocomplete": "name"}]
            form = {"action": f"/c/{token}", "button": words["confirm_button"], "hidden": {}, "fields": fields,
                    "trap": ""}
            return self._page(lang, self._say(target, "confirm_heading"), [self._say(target, "confirm_ask")],
                              list_title=title, form=form)
        if state == ConfirmState.CONFIRMED:
            return self._page(lang, words["confirmed_heading"], [self._say(target, "confirmed")], list_title=title)
        if state == ConfirmState.EXPIRED:
            return self._page(lang, words["expired_heading"], [words["expired"]], status=400, list_title=title,
                              links=again)
        return self._page(lang, words["gone_heading"], [words["gone"]], status=400, list_title=title, links=again)

    async def confirm_page(self, request: Request) -> Response:
        return await self._confirm(request, apply=False)

    async def confirm(self, request: Request) -> Response:
        return await self._confirm(request, apply=True)

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")


def create_app(config: Config, limits: SignupLimits | None = None,
               clock: Callable[[], datetime] = utcnow) -> Starlette:
    web = WebApp(config, limits, clock)
    routes = [
        Route("/u/{token}", _by_method(web.unsubscribe_page, web.unsubscribe), methods=["GET", "POST"]),
        Route("/s/{list}", _by_method(web.signup_page, web.signup), methods=["GET", "POST"]),
        Route("/c/{token}", _by_method(web.confirm_page, web.confirm), methods=["GET", "POST"]),
        Route("/healthz", web.health, methods=["GET"]),
    ]

    async def harden(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.monotonic()
        try:
            response = await call_next(request)
        except Exception:
            # Answered here, not by Starlette's outermost error handler, whose bare 500 would skip the headers
            # below (and the page); the traceback goes to the log, with tokens redacted from the path.
            log.exception("%s %s failed", request.method, TOKEN_IN_PATH.sub(r"/\1/…", request.url.path))
            response = web.unavailable()
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        # Our own access log: a token in a path is as good as the subscriber's consent, so it is never written.
        path = TOKEN_IN_PATH.sub(lambda m: f"/{m.group(1)}/…", request.url.path)
        log.info("%s %s %s %.0fms", request.method, path, response.status_code, (time.monotonic() - started) * 1000)
        return response

    app = Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=harden)])
    app.router.redirect_slashes = False  # its redirect is built from the Host header, which a client chooses
    app.state.web = web
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


def serve(config: Config, host: str, port: int, trusted_proxies: str, ready: Callable[[str], None] | None = None,
          ) -> None:
    """Run the app on uvicorn until interrupted. Behind a reverse proxy, the client address comes from
    X-Forwarded-For only when the proxy is in `trusted_proxies` (the per-client sign-up limit relies on it)."""
    import uvicorn

    sock = listen_socket(host, port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), proxy_headers=True, forwarded_allow_ips=trusted_proxies,
        access_log=False,  # uvicorn's access log would write unsubscribe tokens; ours redacts them
        server_header=False, log_level="warning",
    ))
    if ready:
        ready(f"http://{host}:{sock.getsockname()[1]}")
    server.run(sockets=[sock])
