"""mailer doctor: one ok / warning / error line per check, exit 1 on any error; SMTP probed against real aiosmtpd
servers on 127.0.0.1 (plain, STARTTLS with a trustme certificate, with a login)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

import mailer.doctor
from mailer.capture import CaptureServer, free_port
from mailer.config import Config, ensure_secret
from mailer.dkim import Signer, generate_key
from mailer.doctor import Level, check_base_url, check_dkim, check_smtp, run_checks
from mailer.smtp import SMTPSettings
from mailer.store import Store
from mailer.subscriptions import create_list

SELECTOR, DOMAIN = "news2026", "example.org"


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    generate_key(SELECTOR, DOMAIN, directory)
    return directory


@pytest.fixture
def key(key_dir: Path) -> Path:
    return key_dir / f"{SELECTOR}._domainkey.{DOMAIN}.pem"


@pytest.fixture
def good_config(tmp_path: Path, key: Path) -> Config:
    """An initialised database with one list sending as bulletin@news.example.org, https base URL, DKIM set."""
    config = ensure_secret(
        Config(
            db_path=tmp_path / "mailer.db",
            base_url="https://news.example.org",
            dkim_key=str(key),
            dkim_selector=SELECTOR,
            dkim_domain=DOMAIN,
        )
    )
    store = Store.open(config.db_path, must_exist=False)
    store.init()
    create_list(store, "bulletin", "Bulletin", "Bulletin <bulletin@news.example.org>", "", "en")
    store.close()
    return config


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(tmp_path: Path, ca: trustme.CA) -> Iterator[CaptureServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with CaptureServer(tmp_path / "tls-outbox", tls=context) as server:
        yield server


def levels(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [str(f.level) for f in findings]


def relay(server: CaptureServer, **changes: object) -> SMTPSettings:
    return replace(SMTPSettings(host="127.0.0.1", port=server.port, timeout=5), **changes)  # type: ignore[arg-type]


# ---- through the CLI -----------------------------------------------------------------------------------------------


def test_a_good_configuration_is_all_ok_lines_and_exit_0(run_cli, key: Path, smtp_server: CaptureServer) -> None:
    env = {
        "MAILER_BASE_URL": "https://news.example.org",
        "MAILER_DKIM_KEY": str(key),
        "MAILER_DKIM_SELECTOR": SELECTOR,
        "MAILER_DKIM_DOMAIN": DOMAIN,
        "MAILER_SMTP_PORT": str(smtp_server.port),
    }
    assert run_cli("init", env=env).returncode == 0
    assert run_cli("lists", "create", "bulletin", "--from", "Bulletin <bulletin@example.org>", env=env).returncode == 0

    result = run_cli("doctor", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert all(line.startswith("ok: ") for line in lines), lines
    text = "\n".join(lines)
    for expected in (
        "database",
        "signing secret",
        "https://news.example.org is https",
        f"2048-bit RSA; signs as d={DOMAIN} s={SELECTOR}",
        "aligned with DKIM d=example.org (strict)",
        f"SMTP 127.0.0.1:{smtp_server.port} reachable",
    ):
        assert expected in text
    assert smtp_server.received == []  # a probe, never a message


def test_errors_are_reported_one_line_each_and_exit_1(run_cli, key: Path) -> None:
    env = {
        "MAILER_BASE_URL": "http://news.example.org",
        "MAILER_DKIM_KEY": str(key),
        "MAILER_DKIM_SELECTOR": SELECTOR,
        "MAILER_DKIM_DOMAIN": DOMAIN,
        "MAILER_SMTP_PORT": str(free_port()),
    }
    run_cli("init", env=env)
    run_cli("lists", "create", "bulletin", "--from", "Bulletin <bulletin@example.net>", env=env)

    result = run_cli("doctor", env=env)

    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert all(line.split(": ", 1)[0] in ("ok", "warning", "error") for line in lines), lines
    assert any(line.startswith("warning: MAILER_BASE_URL http://news.example.org is not https") for line in lines)
    assert any(
        line.startswith("error: list bulletin: From domain example.net is not aligned with DKIM domain example.org")
        for line in lines
    )
    assert any(line.startswith("error: cannot connect to SMTP server 127.0.0.1:") for line in lines)
    assert "Traceback" not in result.stderr


def test_no_database_and_no_secret_are_errors(tmp_path: Path) -> None:
    config = Config(db_path=tmp_path / "missing.db", base_url="https://news.example.org")
    findings = mailer.doctor.check_database(config)[0] + [mailer.doctor.check_secret(config)]
    assert levels(findings) == ["error", "error"]
    assert "run: mailer init" in findings[0].message
    assert "mailer init" in findings[1].message


# ---- base URL and DKIM ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "level"),
    [
        ("https://news.example.org", "ok"),
        ("http://news.example.org", "warning"),
        ("http://127.0.0.1:8025", "warning"),
        ("https://localhost", "warning"),
    ],
)
def test_base_url(url: str, level: str) -> None:
    assert check_base_url(Config(base_url=url)).level == level


def test_dkim_not_configured_is_a_warning_and_half_configured_an_error(key: Path) -> None:
    findings, domain = check_dkim(Config())
    assert levels(findings) == ["warning"] and domain is None and "mailer dkim keygen" in findings[0].message
    findings, domain = check_dkim(Config(dkim_key=str(key)))
    assert levels(findings) == ["error"] and "MAILER_DKIM_SELECTOR" in findings[0].message


def test_a_key_readable_by_others_is_an_error(tmp_path: Path, key: Path) -> None:
    loose = tmp_path / key.name
    loose.write_bytes(key.read_bytes())
    os.chmod(loose, 0o640)
    findings, _ = check_dkim(Config(dkim_key=str(loose), dkim_selector=SELECTOR, dkim_domain=DOMAIN))
    assert levels(findings) == ["error"]
    assert f"chmod 600 {loose}" in findings[0].message


def test_a_key_made_for_another_selector_is_a_warning(key: Path) -> None:
    findings, _ = check_dkim(Config(dkim_key=str(key), dkim_selector="other", dkim_domain=DOMAIN))
    assert levels(findings) == ["ok", "warning"]
    assert f"made for selector {SELECTOR}" in findings[1].message


def test_a_1024_bit_key_is_a_warning(tmp_path: Path) -> None:
    small = generate_key("old", DOMAIN, tmp_path, bits=1024)
    findings, _ = check_dkim(Config(dkim_key=str(small.path), dkim_selector="old", dkim_domain=DOMAIN))
    assert levels(findings) == ["warning"] and "1024 bits" in findings[0].message


def test_the_published_record_is_compared_with_the_key(key: Path, tmp_path: Path) -> None:
    config = Config(dkim_key=str(key), dkim_selector=SELECTOR, dkim_domain=DOMAIN)
    signer = Signer.from_file(key, SELECTOR, DOMAIN)
    other = Signer.from_file(generate_key("x", DOMAIN, tmp_path).path, "x", DOMAIN)
    asked = []

    def published(record: str | None):  # type: ignore[no-untyped-def]
        def lookup(name: str) -> str | None:
            asked.append(name)
            return record

        return lookup

    def broken(name: str) -> str:
        raise TimeoutError("resolver timed out")

    assert levels(check_dkim(config, published(f"v=DKIM1; k=rsa; p={signer.public_key}"))[0]) == ["ok", "ok"]
    assert asked == [f"{SELECTOR}._domainkey.{DOMAIN}"]
    mismatch = check_dkim(config, published(f"v=DKIM1; k=rsa; p={other.public_key}"))[0]
    assert levels(mismatch) == ["ok", "error"] and "is not the key in" in mismatch[1].message
    missing = check_dkim(config, published(None))[0]
    assert levels(missing) == ["ok", "error"] and signer.record in missing[1].message
    assert levels(check_dkim(config, broken)[0]) == ["ok", "warning"]


async def test_alignment_is_checked_for_every_list(good_config: Config) -> None:
    store = Store.open(good_config.db_path)
    create_list(store, "other", "Other", "Other <news@example.net>", "", "en")
    create_list(store, "nofrom", "No From", "", "", "en")
    store.close()

    findings = await run_checks(good_config, [])

    by_list = {f.message.split(":")[0]: f for f in findings if f.message.startswith("list ")}
    assert by_list["list bulletin"].level == Level.OK and "(relaxed)" in by_list["list bulletin"].message
    assert by_list["list other"].level == Level.ERROR
    assert by_list["list nofrom"].level == Level.WARNING


# ---- SMTP and TLS --------------------------------------------------------------------------------------------------


async def test_starttls_negotiated_with_a_trusted_certificate(
    tls_server: CaptureServer, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    finding = await check_smtp(relay(tls_server, tls="starttls", ca_file=str(ca_file)))
    assert finding.level == Level.OK, finding
    assert "STARTTLS negotiated" in finding.message


async def test_an_untrusted_certificate_is_an_error(tls_server: CaptureServer) -> None:
    finding = await check_smtp(relay(tls_server, tls="starttls"))
    assert finding.level == Level.ERROR
    assert "certificate" in finding.message.lower()


async def test_starttls_offered_but_not_used(tls_server: CaptureServer, monkeypatch: pytest.MonkeyPatch) -> None:
    on_loopback = await check_smtp(relay(tls_server))
    assert on_loopback.level == Level.OK and "also offers STARTTLS" in on_loopback.message
    monkeypatch.setattr(mailer.doctor, "is_loopback", lambda host: False)  # as if the relay were across a network
    remote = await check_smtp(relay(tls_server))
    assert remote.level == Level.WARNING
    assert "offers STARTTLS but MAILER_SMTP_TLS=none" in remote.message


async def test_no_tls_to_a_remote_relay_is_a_warning(
    smtp_server: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mailer.doctor, "is_loopback", lambda host: False)
    finding = await check_smtp(relay(smtp_server))
    assert finding.level == Level.WARNING and "offers no TLS" in finding.message


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_login_accepted_and_refused(tmp_path: Path) -> None:
    with CaptureServer(tmp_path / "auth", users={"editor": "s3cret"}) as server:
        accepted = await check_smtp(relay(server, user="editor", password="s3cret"))
        refused = await check_smtp(relay(server, user="editor", password="wrong"))
    assert accepted.level == Level.OK and "login as editor accepted" in accepted.message
    assert refused.level == Level.ERROR and "login" in refused.message and "wrong" not in refused.message
