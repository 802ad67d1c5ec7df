"""What every form of `mailer serve` that changes something checks (the sign-up form, "send me my link", the
preferences page): a signed token in a hidden field bound to a cookie (double submit), and that the browser says
the form came from us (Origin).

Checks only: the endpoints decide what a form means."""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from mailer.tokens import check_form_token, make_form_token

FORM_MAX_AGE = 2 * 3600  # a form older than this asks for a reload


class FormGuard:
    """The CSRF protection of one kind of form: its cookie (name and path) and what the token is bound to."""

    def __init__(self, secret: bytes, cookie: str, path: str, base_url: str) -> None:
        self.secret = secret
        self.cookie = cookie
        self.path = path
        self.base_url = base_url
        self.secure = base_url.startswith("https://")

    def issue(self, scope: str) -> tuple[str, str]:
        """(the hidden field's value, the cookie's nonce) for a new form bound to `scope`."""
        nonce = secrets.token_urlsafe(16)
        return make_form_token(self.secret, scope, int(time.time()), nonce), nonce

    def set_cookie(self, response: Response, nonce: str) -> None:
        response.set_cookie(
            self.cookie,
            nonce,
            max_age=FORM_MAX_AGE,
            path=self.path,
            httponly=True,
            samesite="strict",
            secure=self.secure,
        )

    def same_origin(self, request: Request) -> bool:
        """A browser names the page a form came from; it must be us (MAILER_BASE_URL, or the Host we serve)."""
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        ours = {urlsplit(self.base_url).netloc, request.headers.get("host", "")}
        return urlsplit(origin).netloc in ours

    def check(self, request: Request, form: FormData, scope: str) -> bool:
        """The post came from our form for `scope`, recently, in the browser that got it."""
        return self.same_origin(request) and check_form_token(
            self.secret,
            scope,
            str(form.get("form_token", "")),
            request.cookies.get(self.cookie, ""),
            int(time.time()),
            FORM_MAX_AGE,
        )
