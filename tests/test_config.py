"""Settings from mailer.toml and the environment: a value that is not of its type, or out of its range, is one
error line naming where it was set, never a traceback or a setting that quietly means something else."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.config import load_config
from mailer.errors import ConfigError


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("smtp_port = 70000", "smtp_port = 70000 must be from 1 to 65535"),
        ("smtp_port = 0", "smtp_port = 0 must be from 1 to 65535"),
        ("smtp_port = true", "smtp_port = True is not a whole number"),  # was port 1
        ("smtp_port = 25.5", "smtp_port = 25.5 is not a whole number"),  # was port 25
        ('smtp_port = "x"', "smtp_port = 'x' is not a whole number"),
        ("concurrency = 0", "concurrency = 0 must be from 1 to 64"),
        ("soft_bounce_limit = 0", "soft_bounce_limit = 0 must be from 1 to"),
        ("smtp_timeout = nan", "smtp_timeout = nan must be a number of seconds above 0"),
        ("smtp_timeout = inf", "must be a number of seconds above 0"),
        ("retry_base = -60", "retry_base = -60 must be a number of seconds above 0"),
        ('db = ""', "db = '' must be a file name"),  # was a traceback
        ("smtp_host = 25", "smtp_host = 25 must be text"),
        ("smtp = 5", "'smtp' must be a table"),  # was a traceback
        ("[smtp]\nport = 99999", "smtp_port = 99999 must be from 1 to 65535"),
        ('attachment_limit = "ten"', 'attachment_limit = \'ten\' is not a size such as "10 MB" or "512 KB"'),
        ("attachment_limit = 0", "attachment_limit = 0 must be from 1 KB to 100 MB"),
        ('attachment_limit = "2 GB"', "attachment_limit = '2 GB' is not a size"),
        ("attachment_limit = 10.5", "attachment_limit = 10.5 is not a size"),
        ("attachment_limit = true", "attachment_limit = True is not a size"),
    ],
)
def test_a_bad_value_in_mailer_toml_is_one_error_naming_it(tmp_path: Path, toml: str, says: str) -> None:
    (tmp_path / "mailer.toml").write_text(toml + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(environ={}, cwd=tmp_path)
    assert "mailer.toml" in str(err.value) and says in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("MAILER_SMTP_TIMEOUT", "nan", "must be a number of seconds above 0"),  # issue 11: was a traceback in send
        ("MAILER_SMTP_TIMEOUT", "0", "must be a number of seconds above 0"),
        ("MAILER_SMTP_PORT", "70000", "must be from 1 to 65535"),
        ("MAILER_SMTP_PORT", "25.0", "is not a whole number"),
        ("MAILER_SOFT_BOUNCE_LIMIT", "-1", "must be from 1 to"),
        ("MAILER_RETRY_EXPIRY", "-inf", "must be a number of seconds above 0"),
        ("MAILER_ATTACHMENT_LIMIT", "200MB", "must be from 1 KB to 100 MB"),
        ("MAILER_ATTACHMENT_LIMIT", "-1", "is not a size"),
    ],
)
def test_a_bad_value_in_the_environment_is_one_error_naming_it(tmp_path: Path, var: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={var: value}, cwd=tmp_path)
    assert var in str(err.value) and says in str(err.value), str(err.value)


def test_good_values_still_read(tmp_path: Path) -> None:
    (tmp_path / "mailer.toml").write_text("smtp_port = 2525\nsmtp_timeout = 5\nretry_base = 0.5\n", encoding="utf-8")
    config = load_config(environ={"MAILER_SOFT_BOUNCE_LIMIT": " 2 "}, cwd=tmp_path)
    assert (config.smtp_port, config.smtp_timeout, config.retry_base, config.soft_bounce_limit) == (2525, 5.0, 0.5, 2)


def test_the_attachment_limit_reads_as_bytes_or_a_size(tmp_path: Path) -> None:
    assert load_config(environ={}, cwd=tmp_path).attachment_limit == 10 * 2**20
    for written, limit in (('"2 MB"', 2 * 2**20), ('"1.5mb"', 3 * 2**19), ('"512 KB"', 2**19), ("1048576", 2**20)):
        (tmp_path / "mailer.toml").write_text(f"attachment_limit = {written}\n", encoding="utf-8")
        assert load_config(environ={}, cwd=tmp_path).attachment_limit == limit, written
    assert load_config(environ={"MAILER_ATTACHMENT_LIMIT": "5MB"}, cwd=tmp_path).attachment_limit == 5 * 2**20


def test_send_with_a_nan_timeout_is_one_error_line(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    issue = tmp_path / "issue.md"
    issue.write_text("---\nsubject: Hi\n---\nHello.\n", encoding="utf-8")
    result = run_cli(
        "send", str(issue), "--list", "bulletin", "--test", "me@example.org", env={"MAILER_SMTP_TIMEOUT": "nan"}
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: environment: MAILER_SMTP_TIMEOUT = 'nan' must be a number of seconds above 0"
    )
