"""Shared fixtures: a real SMTP server on 127.0.0.1, real SQLite files, the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailer.capture import CaptureServer
from mailer.config import Config, ensure_secret
from mailer.store import Store
from mailer.subscriptions import create_list

REPO = Path(__file__).resolve().parent.parent
SAMPLE_ISSUE = REPO / "issues" / "sample.md"
SAMPLE_CSV = REPO / "subscribers" / "sample.csv"
# The wire checker of ../shared (beside the clone in CI; /work/shared on the development machine).
CHECK_EML = next((p for p in (REPO.parent / "shared" / "tools" / "check_eml.py",
                              Path("/work/shared/tools/check_eml.py")) if p.exists()),
                 REPO.parent / "shared" / "tools" / "check_eml.py")


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


class LiveWeb:
    """`mailer serve`'s app on uvicorn in a thread, on a free port of 127.0.0.1 (real HTTP, real sockets)."""

    def __init__(self, make_app: Callable[[str], Any]) -> None:
        import threading

        import uvicorn

        from mailer.capture import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = make_app(self.url)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveWeb:
        import time

        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def web_config(config: Config, smtp: CaptureServer, url: str) -> Config:
    """The test config pointed at the capture SMTP server, with links to the live web server."""
    return config.with_overrides(smtp_host="127.0.0.1", smtp_port=smtp.port, base_url=url)
