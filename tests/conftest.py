"""Shared fixtures: a real SMTP server on 127.0.0.1, real SQLite files, the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.capture import CaptureServer
from mailer.config import Config, ensure_secret
from mailer.store import Store
from mailer.subscriptions import create_list

REPO = Path(__file__).resolve().parent.parent
SAMPLE_ISSUE = REPO / "issues" / "sample.md"
SAMPLE_CSV = REPO / "subscribers" / "sample.csv"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/*/expected.* files")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[CaptureServer]:
    """An aiosmtpd server on 127.0.0.1 that stores what it receives; `set_rule` makes it misbehave."""
    with CaptureServer(tmp_path / "outbox") as server:
        yield server


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return ensure_secret(Config(db_path=tmp_path / "mailer.db", base_url="https://news.example.org"))


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    """An initialised database with one list, `bulletin` (zh, From 简报 <bulletin@example.org>)."""
    db = Store.open(config.db_path, must_exist=False)
    db.init()
    create_list(db, "bulletin", "知识产权运营简报", "简报 <bulletin@example.org>", "editor@example.org", "zh")
    yield db
    db.close()


@pytest.fixture
def run_cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run `python -m mailer ARGS` in tmp_path with a database there; returns CompletedProcess (text)."""

    def run(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
        full_env.update({"MAILER_DB": str(tmp_path / "mailer.db"), "NO_COLOR": "1", "COLUMNS": "200"})
        full_env.update(env or {})
        return subprocess.run([sys.executable, "-m", "mailer", *args], cwd=tmp_path, env=full_env, text=True,
                              capture_output=True, input=input, timeout=timeout)

    return run
