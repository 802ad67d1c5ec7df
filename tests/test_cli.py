"""The command contract: help and examples for every command, README commands exist, usage errors, exit codes."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from mailer.cli.app import app
from tests.conftest import REPO, run_mailer


def _walk(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found.extend(_walk(sub, (*path, name)))
    return found


ROOT = typer.main.get_command(app)
COMMANDS = _walk(ROOT)
LEAVES = [(path, cmd) for path, cmd in COMMANDS if not hasattr(cmd, "commands")]  # typer vendors its own click


def _readme_commands() -> list[str]:
    """Command lines starting with `mailer ` in README's code blocks (also after `&&` or `.venv/bin/`)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", readme, flags=re.S | re.M):
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.strip().removeprefix(".venv/bin/")
                if part.startswith("mailer "):
                    lines.append(part)
    return lines


README_COMMANDS = _readme_commands()


def _mailer(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`mailer ARGS` in `cwd`, in this process (output and exit codes are all these tests read)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full_env.update({"NO_COLOR": "1", "COLUMNS": "200", "MAILER_DB": str(cwd / "mailer.db"), **(env or {})})
    return run_mailer(cwd, args, full_env)


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_the_app_has_the_commands_of_the_spec() -> None:
    paths = {" ".join(path) for path, _ in LEAVES}
    assert {
        "init",
        "lists create",
        "lists ls",
        "subs add",
        "subs import",
        "subs ls",
        "subs export",
        "subs remove",
        "render",
        "send",
        "campaigns ls",
        "log",
        "retry",
        "unsubscribe",
        "demo",
    } <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "mailer" for p, _ in COMMANDS])
def test_help_exits_0(tmp_path: Path, path: tuple[str, ...], command: Any) -> None:
    result = _mailer(tmp_path, *path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    assert result.stderr == ""
    assert not (tmp_path / "mailer.db").exists()  # asking for help creates nothing
    assert re.search(r"^\s*Example: mailer\b", result.stdout, flags=re.M), result.stdout


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_example_parses_as_its_command(path: tuple[str, ...], command: Any) -> None:
    examples = [line.strip() for line in (command.help or "").splitlines() if line.strip().startswith("Example:")]
    assert len(examples) == 1, f"{' '.join(path)}: no 'Example:' line in its help"
    words = shlex.split(examples[0].removeprefix("Example:"))
    assert words[0] == "mailer"
    assert tuple(words[1 : 1 + len(path)]) == path
    # click's own parser with the example's arguments: unknown options or bad values raise; nothing runs.
    with command.make_context(" ".join(words[: 1 + len(path)]), words[1 + len(path) :]) as ctx:
        assert ctx.command is command


def test_readme_shows_commands() -> None:
    assert len(README_COMMANDS) >= 10
    assert any(line.startswith("mailer send ") for line in README_COMMANDS)


@pytest.mark.parametrize("line", README_COMMANDS)
def test_every_readme_command_exists(tmp_path: Path, line: str) -> None:
    words = shlex.split(line, comments=True)
    # The whole command line with --help: an unknown command or option fails with exit 2 instead of showing help.
    result = _mailer(tmp_path, *words[1:], "--help")
    assert result.returncode == 0, f"{line}: {result.stderr}"
    assert result.stdout.startswith("Usage: ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["frobnicate"], "frobnicate"),
        (["lists", "frobnicate"], "frobnicate"),
        (["send"], "issue"),
        (["send", "issues/sample.md"], "--list"),
        (["subs", "add", "a@example.org"], "--list"),
        (["log"], "campaign"),
        (["send", "issues/sample.md", "--list", "bulletin", "--concurrency", "0"], "--concurrency"),
        (["log", "1", "--json", "--csv"], "--csv"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_usage_errors_exit_2_with_one_error_line(tmp_path: Path, args: list[str], says: str) -> None:
    result = _mailer(tmp_path, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in assert_one_error_line(result)
    assert result.stdout == ""


@pytest.mark.parametrize("args", [[], ["lists"], ["subs"]])
def test_a_group_alone_shows_its_help(tmp_path: Path, args: list[str]) -> None:
    result = _mailer(tmp_path, *args)
    assert result.returncode in (0, 2)
    assert "Traceback" not in result.stderr
    shown = result.stdout + result.stderr
    assert "Usage: " in shown
    assert "\nCommands:\n" in shown  # the help as help, not flattened into an error line


@pytest.mark.parametrize(
    "args",
    [
        ["lists", "ls"],
        ["subs", "ls", "--list", "bulletin"],
        ["campaigns", "ls"],
        ["log", "1"],
        ["send", str(REPO / "issues" / "sample.md"), "--list", "bulletin", "--dry-run"],
    ],
)
def test_a_missing_database_is_one_error_line(tmp_path: Path, args: list[str]) -> None:
    result = _mailer(tmp_path, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    line = assert_one_error_line(result)
    assert re.match(r"error: database .*mailer\.db does not exist", line), line
    assert not (tmp_path / "mailer.db").exists()


def test_db_option_overrides_the_environment(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    assert _mailer(tmp_path, "--db", str(other), "init").returncode == 0
    assert other.exists()
    assert not (tmp_path / "mailer.db").exists()


def test_init_is_idempotent_and_the_secret_is_private(tmp_path: Path) -> None:
    first = _mailer(tmp_path, "init")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("created")
    secret_file = tmp_path / "mailer.db.secret"
    secret = secret_file.read_bytes()
    assert len(secret.strip()) >= 32
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

    assert _mailer(tmp_path, "lists", "create", "bulletin", "--from", "B <b@example.org>").returncode == 0
    second = _mailer(tmp_path, "init")

    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("up to date")
    assert secret_file.read_bytes() == secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert "bulletin" in _mailer(tmp_path, "lists", "ls", "--json").stdout


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    assert _mailer(tmp_path, "init").returncode == 0
    (tmp_path / "mailer.db.secret").chmod(0o644)
    result = _mailer(tmp_path, "lists", "ls")
    assert result.returncode == 1
    assert "chmod 600" in assert_one_error_line(result)


def test_a_password_in_mailer_toml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mailer.toml").write_text('smtp_host = "127.0.0.1"\nsmtp_password = "hunter2-Qx"\n', encoding="utf-8")
    result = _mailer(tmp_path, "init")
    assert result.returncode == 1
    line = assert_one_error_line(result)
    assert "secret" in line
    assert "hunter2-Qx" not in result.stdout + result.stderr


def test_version(tmp_path: Path) -> None:
    result = _mailer(tmp_path, "--version")
    assert result.returncode == 0
    assert re.fullmatch(r"mailer \d+\.\d+\.\d+\n", result.stdout)


def test_init_migrates_a_schema_4_database_and_keeps_its_sign_ups(tmp_path: Path) -> None:
    import sqlite3

    from tests.test_store import RELEASED_STEPS, SCHEMA_1

    conn = sqlite3.connect(tmp_path / "mailer.db")
    conn.executescript(SCHEMA_1 + "".join(RELEASED_STEPS[v] for v in (2, 3, 4)) + "PRAGMA user_version = 4;")
    conn.execute("INSERT INTO lists (name, created) VALUES ('bulletin', 'now')")
    conn.execute(
        "INSERT INTO signup_requests (list_id, email, client, mailed, at) VALUES (1, 'a@example.org', "
        "'127.0.0.1', 1, 'now')"
    )
    conn.commit()
    conn.close()
    result = _mailer(tmp_path, "init")
    assert result.returncode == 0 and result.stdout.startswith("created"), result.stderr
    conn = sqlite3.connect(tmp_path / "mailer.db")
    assert conn.execute("SELECT email, name FROM signup_requests").fetchall() == [("a@example.org", "")]


# ---- what the system refuses: permissions, damaged or foreign databases, bad paths -------------------------------

_CAP_DAC = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root ignore file modes


def _without_root_powers() -> None:
    """In the child before exec: root gives up overriding file permissions, as an ordinary user has none."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _CAP_DAC:
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _mailer_as_user(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user for whom file modes count (CI and this machine run tests as root)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    full_env.update({"NO_COLOR": "1", "COLUMNS": "200", "MAILER_DB": str(cwd / "mailer.db")})
    return subprocess.run(
        [sys.executable, "-m", "mailer", *args],
        cwd=cwd,
        env=full_env,
        text=True,
        capture_output=True,
        timeout=60,
        preexec_fn=_without_root_powers if os.geteuid() == 0 else None,
    )


def _initialised(tmp_path: Path) -> Path:
    assert _mailer(tmp_path, "init").returncode == 0
    assert _mailer(tmp_path, "lists", "create", "bulletin", "--from", "B <b@example.org>").returncode == 0
    return tmp_path / "mailer.db"


def test_the_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    import sqlite3

    db = _initialised(tmp_path)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    reader = sqlite3.connect(db)  # held open, so the -wal and -shm files stay while another command writes
    reader.execute("SELECT COUNT(*) FROM lists").fetchone()
    try:
        assert _mailer(tmp_path, "lists", "create", "weekly").returncode == 0
        for name in ("mailer.db-wal", "mailer.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        reader.close()


@pytest.mark.parametrize(
    "args", [["lists", "ls"], ["lists", "create", "weekly"], ["subs", "ls", "--list", "bulletin"], ["init"]]
)
@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_database_is_one_error_line(tmp_path: Path, what: str, args: list[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    db = _initialised(home)
    (db if what == "file" else home).chmod(0o444 if what == "file" else 0o555)
    try:
        result = _mailer_as_user(home, *args)
    finally:
        home.chmod(0o755)
        db.chmod(0o600)
    if what == "file" and args[-1] in ("ls", "bulletin"):
        assert result.returncode == 0, result.stderr  # reading a read-only file works (SQLite needs no write)
        return
    assert result.returncode == 1, result.stdout
    line = assert_one_error_line(result)
    assert ("file is read-only" if what == "file" else f"folder {home} is not writable") in line, line


def test_a_damaged_database_is_one_error_line(tmp_path: Path) -> None:
    db = _initialised(tmp_path)
    rows = "".join(f"u{i}@example.org,Reader {i}\n" for i in range(3000))
    (tmp_path / "many.csv").write_text("email,name\n" + rows, encoding="utf-8")
    assert _mailer(tmp_path, "subs", "import", "many.csv", "--list", "bulletin").returncode == 0
    with db.open("r+b") as fh:  # damage pages in the middle; the header and schema stay readable
        for page in range(8, 30):
            fh.seek(page * 4096 + 100)
            fh.write(b"\xff" * 900)
    for args in (["subs", "ls", "--list", "bulletin"], ["subs", "export", "--list", "bulletin", "-o", "x.csv"]):
        result = _mailer(tmp_path, *args)
        assert result.returncode == 1
        assert "is damaged (database disk image is malformed)" in assert_one_error_line(result)
    assert not list(tmp_path.glob("*x.csv*"))  # no half an export
    (tmp_path / "photo.db").write_bytes(bytes(range(256)) * 8)
    result = _mailer(tmp_path, "--db", "photo.db", "lists", "ls")
    assert result.returncode == 1 and "is not a mailer database" in assert_one_error_line(result)


@pytest.mark.parametrize(
    "args",
    [
        ["lists", "ls"],
        ["init"],
        ["campaigns", "ls"],
        ["log", "1"],
        ["suppressions", "ls"],
        ["serve"],
        ["subs", "add", "a@example.org", "--list", "bulletin"],
        ["bounces", "scan", "."],
        ["send", str(REPO / "issues" / "sample.md"), "--list", "bulletin", "--dry-run"],
    ],
)
def test_a_database_of_a_newer_mailer_is_refused_by_every_command(tmp_path: Path, args: list[str]) -> None:
    import sqlite3

    db = _initialised(tmp_path)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    result = _mailer(tmp_path, *args)
    assert result.returncode == 1, result.stdout
    assert "was made by a newer mailer (schema 99" in assert_one_error_line(result)
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["log", "99999999999999999999999"], "no campaign '99999999999999999999999'"),
        (["log", "²"], "no campaign '²'"),
        (["subs", "export", "--list", "bulletin", "-o", "/nonexistent/x.csv"], "cannot write /nonexistent/x.csv"),
        (["render", str(REPO / "issues" / "sample.md"), "-o", "/dev/null/x"], "cannot write to /dev/null/x"),
        (["--db", "/proc/x.db", "init"], "cannot create the signing secret /proc/x.db.secret"),
        (["--db", "/proc/x.db", "lists", "ls"], "database /proc/x.db does not exist"),
        (["bounces", "scan", sys.executable], "is not a mail message, an mbox or a Maildir"),
    ],
)
def test_bad_paths_and_ids_are_one_error_line(tmp_path: Path, args: list[str], says: str) -> None:
    _initialised(tmp_path)
    result = _mailer(tmp_path, *args)
    assert result.returncode == 1, result.stdout
    assert says in assert_one_error_line(result)


@pytest.mark.parametrize(
    "url",
    [
        "https://news.example.org\r\nBcc: victim@example.net",
        "https://news.example.org\n",
        "https://news example.org",
        "https://news.example.org/\x1b[2J",
        "https://x.org?a=b",
        "https://news.example.org:99999",
    ],
)
@pytest.mark.parametrize("args", [["init"], ["lists", "ls"], ["serve", "--port", "1"]])
def test_a_base_url_unfit_for_a_header_is_refused_at_start(tmp_path: Path, url: str, args: list[str]) -> None:
    result = _mailer(tmp_path, *args, env={"MAILER_BASE_URL": url})
    assert result.returncode == 1
    line = assert_one_error_line(result)
    assert line.startswith("error: MAILER_BASE_URL") and "\r" not in line and "\x1b" not in line
    assert not (tmp_path / "mailer.db").exists()
