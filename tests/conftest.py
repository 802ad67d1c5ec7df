"""Shared fixtures: a real SMTP server on 127.0.0.1, real SQLite files, the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import mailer.capture
from mailer.capture import CaptureServer
from mailer.config import Config, ensure_secret
from mailer.store import Store
from mailer.subscriptions import create_list

REPO = Path(__file__).resolve().parent.parent


def _port_block() -> Iterator[int]:
    """Ports for this test process to listen on: a block of its own, below the kernel's ephemeral range
    (32768-60999), so pytest-xdist's workers never take each other's port between choosing one and binding it (a
    port the kernel picks for `bind(0)` may be picked again for the other worker before the first one binds). The
    block moves with the run (PYTEST_XDIST_TESTRUNUID), so two runs at once rarely share one either."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    run = sum(os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid())).encode()) % 6
    start = 20000 + (run * 8 + (int(worker) % 8 if worker.isdigit() else 0)) * 150
    while True:
        yield from range(start, start + 150)


_PORTS = _port_block()


def free_port(host: str = "127.0.0.1") -> int:
    """A port of this process's block that nothing listens on now (see _port_block)."""
    for _ in range(150):
        port = next(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this test process's block")


mailer.capture.free_port = free_port  # CaptureServer, LiveWeb and the tests all choose ports this way
SAMPLE_ISSUE = REPO / "issues" / "sample.md"
SAMPLE_CSV = REPO / "subscribers" / "sample.csv"
# The wire checker of ../shared (beside the clone in CI; /work/shared on the development machine).
CHECK_EML = next(
    (
        p
        for p in (REPO.parent / "shared" / "tools" / "check_eml.py", Path("/work/shared/tools/check_eml.py"))
        if p.exists()
    ),
    REPO.parent / "shared" / "tools" / "check_eml.py",
)


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


def _cli_environment(tmp_path: Path, env: dict[str, str] | None) -> dict[str, str]:
    """The environment a test's `mailer` runs with: this one without MAILER_*, a database in tmp_path, no colour, and
    wide lines, then the test's own variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full_env.update({"MAILER_DB": str(tmp_path / "mailer.db"), "NO_COLOR": "1", "COLUMNS": "200"})
    full_env.update(env or {})
    return full_env


@pytest.fixture
def run_cli_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run `python -m mailer ARGS` in tmp_path with a database there; returns CompletedProcess (text). For what needs
    a process of its own: signals, workers, another PYTHONPATH, a command that runs until stopped."""

    def run(
        *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailer", *args],
            cwd=tmp_path,
            env=_cli_environment(tmp_path, env),
            text=True,
            capture_output=True,
            input=input,
            timeout=timeout,
        )

    return run


@pytest.fixture
def run_cli(tmp_path: Path, run_cli_process):  # type: ignore[no-untyped-def]
    """Run `mailer ARGS` in tmp_path with a database there, in this process (see run_mailer). Returns
    CompletedProcess (text), as run_cli_process does, which it hands over to when this process cannot stand in: a
    test with a running event loop, another PYTHONPATH, or worker processes."""

    def run(
        *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        if _needs_a_process(args, env):
            return run_cli_process(*args, env=env, input=input, timeout=timeout)
        return run_mailer(tmp_path, args, _cli_environment(tmp_path, env), input)

    return run


def run_mailer(
    cwd: Path, args: Sequence[str], variables: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`mailer ARGS` as `main(argv, env)` in this process, with its streams captured and the working folder and
    environment variables a process of its own would have (both put back after)."""
    from mailer.cli import Environment, main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_cwd, saved_env = Path.cwd(), dict(os.environ)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(variables)
    try:
        code = main(
            list(args),
            Environment(
                stdin=io.StringIO(input or ""), stdout=stdout, stderr=stderr, variables=variables, program_name="mailer"
            ),
        )
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["mailer", *args], int(code), stdout.getvalue(), stderr.getvalue())


def _needs_a_process(args: tuple[str, ...], env: dict[str, str] | None) -> bool:
    try:
        asyncio.get_running_loop()
        return True  # main runs its own event loop, and installs signal handlers: only in a main thread
    except RuntimeError:
        pass
    return "PYTHONPATH" in (env or {}) or "--workers" in args


class LiveWeb:
    """`mailer serve`'s app on uvicorn in a thread, on a free port of 127.0.0.1 (real HTTP, real sockets)."""

    def __init__(self, make_app: Callable[[str], Any]) -> None:
        import threading

        import uvicorn

        from mailer.capture import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = make_app(self.url)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, lifespan="off")
        )
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


def send_issue(run_cli, issue: Path, list_name: str, smtp: CaptureServer, base_url: str, *extra: str):  # type: ignore[no-untyped-def]
    """`mailer send ISSUE --list L --yes` to the capture server, with links to `base_url`; asserts it worked."""
    result = run_cli(
        "send",
        str(issue),
        "--list",
        list_name,
        "--yes",
        "--smtp-port",
        str(smtp.port),
        *extra,
        env={"MAILER_BASE_URL": base_url},
    )
    assert result.returncode == 0, result.stderr
    return result


def write_issue(folder: Path, name: str, subject: str, body: str, **meta: str) -> Path:
    """An issue file with this front matter (subject, then `meta`) and body."""
    lines = ["---", f'subject: "{subject}"', *(f'{key}: "{value}"' for key, value in meta.items()), "---", body]
    path = folder / f"{name}.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def dkim_signed_web(config: Config, smtp: CaptureServer, tmp_path: Path) -> Iterator[tuple[Any, Callable[[], None]]]:
    """`mailer serve` with a DKIM key (made in tmp_path) on a live server: (an httpx client of it, a wait for the mails
    it sends in the background). `dkim_verifies(data, tmp_path)` checks a message it sent against that key."""
    import httpx

    from mailer.dkim import generate_key
    from mailer.web import create_app

    generate_key("news2026", "example.org", tmp_path / "keys")
    key = tmp_path / "keys" / "news2026._domainkey.example.org.pem"
    holder: list[Any] = []

    def make(url: str) -> object:
        signed = web_config(config, smtp, url).with_overrides(
            dkim_key=str(key), dkim_selector="news2026", dkim_domain="example.org"
        )
        holder.append(create_app(signed))
        return holder[0]

    def settle() -> None:
        import time

        deadline = time.monotonic() + 10
        while holder[0].state.web.pending and time.monotonic() < deadline:
            time.sleep(0.01)

    with LiveWeb(make) as live, httpx.Client(base_url=live.url, timeout=10) as http:
        yield http, settle


def dkim_verifies(data: bytes, tmp_path: Path) -> bool:
    """The message carries a DKIM signature first that dkimpy verifies against the key dkim_signed_web made."""
    import dkim as dkimpy

    from mailer.dkim import Signer

    signer = Signer.from_file(tmp_path / "keys" / "news2026._domainkey.example.org.pem", "news2026", "example.org")

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        if name.decode().rstrip(".") == "news2026._domainkey.example.org":
            return f"v=DKIM1; k=rsa; p={signer.public_key}".encode()
        return None

    return data.startswith(b"DKIM-Signature:") and bool(dkimpy.verify(data, dnsfunc=dns))
