"""The ops console against a crowd (issue 14's trial): many sign-ins of one client at once get no more password
checks than the limit allows, and scrypt checks run one at a time process-wide. Real HTTP (httpx against uvicorn),
the requests sent together with asyncio."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator

import httpx
import pytest

from mailer.config import Config
from mailer.passwords import hash_password
from mailer.store import Store
from mailer.web import ops_auth
from mailer.web.ops_auth import LOGIN_FAILURES
from tests.test_ops_web import PASSWORD, Console, _serve

CROWD = 60


@pytest.fixture
def console(config: Config, store: Store) -> Iterator[Console]:
    yield from _serve(config, store, ops_password=PASSWORD)


@pytest.fixture
def hashed(config: Config, store: Store) -> Iterator[Console]:
    yield from _serve(config, store, ops_password_hash=hash_password(PASSWORD, log_n=10))


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many scrypt checks the server ran, and the most at once (the real check, counted around)."""
    seen = {"total": 0, "now": 0, "most": 0}
    lock = threading.Lock()
    real = ops_auth.verify_password

    def counted(password: str, stored: str) -> bool:
        with lock:
            seen["total"] += 1
            seen["now"] += 1
            seen["most"] = max(seen["most"], seen["now"])
        try:
            return real(password, stored)
        finally:
            with lock:
                seen["now"] -= 1

    monkeypatch.setattr(ops_auth, "verify_password", counted)
    return seen


async def _form_sign_ins(url: str, passwords: list[str]) -> list[int]:
    clients = [httpx.AsyncClient(base_url=url, timeout=60) for _ in passwords]
    try:
        tokens = []
        for client in clients:  # each its own form token and cookie, fetched first, then all posted together
            page = await client.get("/ops/login")
            found = re.search(r'name="form_token" value="([^"]+)"', page.text)
            assert found
            tokens.append(found.group(1))
        posts = [
            client.post("/ops/login", data={"user": "ops", "password": pw, "form_token": token})
            for client, pw, token in zip(clients, passwords, tokens, strict=True)
        ]
        return [r.status_code for r in await asyncio.gather(*posts)]
    finally:
        for client in clients:
            await client.aclose()


async def _basic_guesses(url: str, passwords: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=200)) as client:
        got = await asyncio.gather(*(client.get("/ops/api/campaigns", auth=("ops", pw)) for pw in passwords))
        return [r.status_code for r in got]


@pytest.mark.parametrize("which", ["console", "hashed"])
def test_concurrent_sign_ins_get_no_more_checks_than_the_limit(which: str, request: pytest.FixtureRequest) -> None:
    live: Console = request.getfixturevalue(which)
    codes = asyncio.run(_form_sign_ins(live.url, ["guess"] * (CROWD - 1) + [PASSWORD]))
    assert 303 not in codes
    assert codes.count(401) == LOGIN_FAILURES and codes.count(429) == CROWD - LOGIN_FAILURES


def test_concurrent_basic_guesses_are_limited_and_hashed_one_at_a_time(hashed: Console, checks: dict[str, int]) -> None:
    codes = asyncio.run(_basic_guesses(hashed.url, [f"guess-{i}" for i in range(CROWD)]))
    assert codes.count(401) == LOGIN_FAILURES and codes.count(429) == CROWD - LOGIN_FAILURES
    assert checks["total"] == LOGIN_FAILURES and checks["most"] == 1


def test_a_right_password_does_not_count_against_the_limit(hashed: Console) -> None:
    for _ in range(LOGIN_FAILURES * 2):
        with hashed.client() as client:
            assert hashed.sign_in(client).status_code == 303
        with hashed.client() as client:
            assert client.get("/ops/api/campaigns", auth=("ops", PASSWORD)).status_code == 200
    with hashed.client() as client:
        for _ in range(LOGIN_FAILURES - 1):
            assert hashed.sign_in(client, password="guess").status_code == 401
        assert hashed.sign_in(client).status_code == 303
