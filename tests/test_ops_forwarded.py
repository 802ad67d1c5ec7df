"""Who the ops console says did something (issue 14's trial, finding 6): behind `mailer serve`'s X-Forwarded-For
handling a header that names no IP address leaves the peer as the client, for the audit and the sign-in limit;
and actions from the command line are audited too, as "cli (user@host)". Real uvicorn with serve's settings."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from mailer.capture import free_port
from mailer.config import Config
from mailer.models import SuppressionReason
from mailer.store import Store
from mailer.web import create_app, server_config
from mailer.web.ops_auth import LOGIN_FAILURES
from tests.synthetic import fill_campaign
from tests.test_ops_web import PASSWORD, Console, csrf_of

FORGED = "admin@corp (from the office VPN) <b>x</b>"


@pytest.fixture
def served(config: Config, store: Store) -> Iterator[Console]:
    """The console on uvicorn with `mailer serve`'s settings (127.0.0.1, the test client, is a trusted proxy)."""
    campaign = fill_campaign(store, "big", 200)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = server_config(create_app(config.with_overrides(base_url=url, ops_password=PASSWORD)), "127.0.0.1")
    settings.host, settings.port = "127.0.0.1", port
    server = uvicorn.Server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Console(url, store, [], campaign)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _sign_in(client: httpx.Client, password: str = PASSWORD) -> httpx.Response:
    token = re.search(r'name="form_token" value="([^"]+)"', client.get("/ops/login").text)
    assert token
    return client.post("/ops/login", data={"user": "ops", "password": password, "form_token": token.group(1)})


def test_a_forwarded_for_that_is_no_address_leaves_the_peer_in_the_audit(served: Console) -> None:
    for header, who in ((FORGED, "ops (127.0.0.1)"), ("10.0.0.9", "ops (10.0.0.9)")):
        with httpx.Client(base_url=served.url, headers={"x-forwarded-for": header}) as client:
            assert _sign_in(client).status_code == 303
            page = client.get(f"/ops/campaigns/{served.campaign}")
            action = "pause" if who.endswith("127.0.0.1)") else "resume"
            assert client.post(f"/ops/campaigns/{served.campaign}/{action}", data={"csrf": csrf_of(page)}).is_redirect
            assert served.store.audit.of_campaign(served.campaign)[0].actor == who


def test_rotating_forged_headers_do_not_dodge_the_sign_in_limit(served: Console) -> None:
    for i in range(LOGIN_FAILURES):
        with httpx.Client(base_url=served.url, headers={"x-forwarded-for": f"{FORGED} {i}"}) as client:
            assert _sign_in(client, "guess").status_code == 401
    with httpx.Client(base_url=served.url, headers={"x-forwarded-for": "not-an-ip"}) as client:
        assert _sign_in(client).status_code == 429


def test_actions_from_the_command_line_are_audited_as_cli(store: Store, run_cli) -> None:  # type: ignore[no-untyped-def]
    campaign = fill_campaign(store, "big", 20)
    for args in (("campaigns", "pause", str(campaign)), ("campaigns", "resume", str(campaign))):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
    assert [e.action for e in store.audit.of_campaign(campaign)] == ["resume", "pause"]
    assert all(re.fullmatch(r"cli \(.+@.+\)", e.actor) for e in store.audit.of_campaign(campaign))
    email = next(iter(store.deliveries.log(campaign))).email
    assert run_cli("unsubscribe", email, "--list", "big").returncode == 0
    store.suppressions.add(email, SuppressionReason.BOUNCED, "550 5.1.1 no such user")
    assert run_cli("suppressions", "remove", email).returncode == 0
    assert [e.action for e in store.audit.of_address(email)] == ["lift-suppression", "unsubscribe"]
