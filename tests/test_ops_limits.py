"""The ops console against a crowd (issue 14's trial): many sign-ins of one client at once get no more password
checks than the limit allows, and scrypt checks run one at a time process-wide. Real HTTP (httpx against uvicorn),
the requests sent together with asyncio."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from mailer.config import Config, load_config
from mailer.errors import ConfigError
from mailer.passwords import hash_password, verify_password
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


# ---- the credential at start ------------------------------------------------------------------------------------


def _hash_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "ops.hash"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _scrypt_hash(password: str, log_n: int, r: int = 8, p: int = 1) -> str:
    """A valid scrypt hash in the same text form, as another tool may write it (no memory cap of ours)."""
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**log_n, r=r, p=p, dklen=32, maxmem=2**30)
    b64 = lambda data: base64.b64encode(data).decode().rstrip("=")  # noqa: E731
    return f"$scrypt$ln={log_n},r={r},p={p}${b64(salt)}${b64(digest)}"


def test_a_hash_mailer_cannot_verify_is_refused_at_start(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    path = _hash_file(tmp_path, _scrypt_hash("pw", log_n=18))
    with pytest.raises(ConfigError, match="ln=18, r=8, p=1 need 257 MiB a check, more than the 256 MiB"):
        load_config({"MAILER_OPS_PASSWORD_FILE": str(path)}, cwd=tmp_path)
    doctor = run_cli("doctor", env={"MAILER_OPS_PASSWORD_FILE": str(path)})
    assert doctor.returncode == 1 and doctor.stderr.count("\n") == 1 and "MiB" in doctor.stderr
    stored = _scrypt_hash("pw", log_n=17)  # 128 MiB: the most OWASP asks, still taken and verified
    assert load_config({"MAILER_OPS_PASSWORD_FILE": str(_hash_file(tmp_path, stored))}, cwd=tmp_path)
    assert verify_password("pw", stored) and not verify_password("pW", stored)


def test_a_readable_hash_file_a_blank_password_or_both_are_one_line(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    stored = hash_password("s3cret-pass", log_n=10)
    for mode, who in ((0o644, "others"), (0o640, "its group")):
        path = _hash_file(tmp_path, stored, mode)
        with pytest.raises(ConfigError, match=f"readable by {who}.*chmod 600"):
            load_config({"MAILER_OPS_PASSWORD_FILE": str(path)}, cwd=tmp_path)
    path = _hash_file(tmp_path, stored)
    both = {"MAILER_OPS_PASSWORD_FILE": str(path), "MAILER_OPS_PASSWORD": "old-plain"}
    with pytest.raises(ConfigError, match="both set"):
        load_config(both, cwd=tmp_path)
    for blank in (" ", "\t\n"):
        with pytest.raises(ConfigError, match="MAILER_OPS_PASSWORD is blank"):
            load_config({"MAILER_OPS_PASSWORD": blank}, cwd=tmp_path)
    for env in (both, {"MAILER_OPS_PASSWORD": " "}):
        result = run_cli("serve", "--port", "1", env=env)
        assert result.returncode != 0 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_wrong_metrics_tokens_count_as_failed_sign_ins(config: Config, store: Store) -> None:
    for live in _serve(config, store, ops_password=PASSWORD, ops_metrics_token="scrape-me"):
        with live.client() as client:
            for i in range(LOGIN_FAILURES):
                wrong = client.get("/ops/metrics", headers={"authorization": f"Bearer guess-{i}"})
                assert wrong.status_code == 401
            right = client.get("/ops/metrics", headers={"authorization": "Bearer scrape-me"})
            assert right.status_code == 429  # as the right password after five wrong ones
            live.clock[0] = timedelta(minutes=16)
            assert client.get("/ops/metrics", headers={"authorization": "Bearer scrape-me"}).status_code == 200
