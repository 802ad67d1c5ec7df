"""`mailer doctor`: the configuration checked the way receivers and relays will judge it, one finding per line.

Reads the configuration, the database and the DKIM key, opens an SMTP session to each relay (and, when asked, looks
up the published DKIM record); it changes nothing and never sends a message. Findings are returned, not printed."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from mailer.addresses import is_loopback
from mailer.config import Config
from mailer.errors import MailerError, SMTPUnavailable
from mailer.message import parse_from
from mailer.smtp import SMTPSettings, ehlo_features, probe
from mailer.store import Store

DnsLookup = Callable[[str], "bytes | str | None"]
PROBE_TIMEOUT = 10.0
_KEYGEN_NAME = re.compile(r"^(?P<selector>.+)\._domainkey\.(?P<domain>.+)\.pem$")


class Level(StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def ok(message: str) -> Finding:
    return Finding(Level.OK, message)


def warning(message: str) -> Finding:
    return Finding(Level.WARNING, message)


def error(message: str) -> Finding:
    return Finding(Level.ERROR, message)


def check_database(config: Config) -> tuple[list[Finding], list[dict[str, str]]]:
    """The database opens at the current schema; also returns the lists (name, from) for the alignment check."""
    try:
        store = Store.open(config.db_path)
    except MailerError as exc:
        return [error(str(exc))], []
    try:
        lists = [{"name": row.name, "from": row.from_addr or ""} for row in store.lists.with_counts()]
    finally:
        store.close()
    return [ok(f"database {config.db_path} is initialised ({len(lists)} list{'s' if len(lists) != 1 else ''})")], lists


def check_secret(config: Config) -> Finding:
    if not config.secret:
        return error(
            "no signing secret for unsubscribe and confirmation links: run 'mailer init' (or set MAILER_SECRET)"
        )
    if len(config.secret) < 16:
        return warning(f"the signing secret is only {len(config.secret)} bytes; use 32 random bytes or more")
    return ok("signing secret set (links in messages are HMAC-signed)")


def check_base_url(config: Config) -> Finding:
    url = config.base_url
    host = urlsplit(url).hostname or ""
    if url == Config().base_url:
        return warning(
            f"MAILER_BASE_URL is not set (the default {url} is this machine): unsubscribe and "
            "confirmation links will not work for subscribers; set it to the public https address of "
            "'mailer serve'"
        )
    if is_loopback(host):
        return warning(
            f"MAILER_BASE_URL {url} is this machine: unsubscribe and confirmation links will not work for "
            "subscribers; set it to the public https address of 'mailer serve'"
        )
    if not url.startswith("https://"):
        return warning(
            f"MAILER_BASE_URL {url} is not https: Gmail and Yahoo expect an https one-click unsubscribe "
            "link (RFC 8058), and links in plain http look unsafe"
        )
    return ok(f"base URL {url} is https")


def check_ops_console(config: Config) -> Finding:
    """Whether `mailer serve` has its ops console under /ops/, and how to turn it on."""
    if not (config.ops_password or config.ops_password_hash):
        return ok(
            "ops console off (/ops/ answers 404); to turn it on: mailer ops passwd > ops.hash, then set "
            "MAILER_OPS_PASSWORD_FILE=ops.hash (user MAILER_OPS_USER, default ops) and run mailer serve"
        )
    how = "a password hash from MAILER_OPS_PASSWORD_FILE" if config.ops_password_hash else "MAILER_OPS_PASSWORD"
    if config.ops_password and len(config.ops_password) < 12:
        return warning(f"ops console on with a short MAILER_OPS_PASSWORD ({len(config.ops_password)} characters)")
    if not config.base_url.startswith("https://"):
        return warning(
            f"ops console on (/ops/, user {config.ops_user}, {how}), but MAILER_BASE_URL is not https: its session "
            "cookie is not marked Secure; serve it behind HTTPS"
        )
    return ok(f"ops console on at {config.base_url}/ops/ (user {config.ops_user}, {how})")


def check_dkim(config: Config, dns_lookup: DnsLookup | None = None) -> tuple[list[Finding], str | None]:
    """Key present, private (0600), parseable, 2048 bits, named for its selector; with `dns_lookup`, published.

    Returns the findings and the signing domain (None when there is no usable key)."""
    if not (config.dkim_key or config.dkim_selector or config.dkim_domain):
        return [
            warning(
                "DKIM is not configured: Gmail and Yahoo require DKIM aligned with From for bulk mail; "
                "create a key with 'mailer dkim keygen --selector S --domain D' and set MAILER_DKIM_KEY, "
                "MAILER_DKIM_SELECTOR and MAILER_DKIM_DOMAIN"
            )
        ], None
    from mailer.dkim import load_signer, record_name, record_tags

    try:
        signer = load_signer(config)
    except MailerError as exc:
        return [error(str(exc))], None
    assert signer is not None
    findings = []
    bits = signer.key.key_size
    where = f"DKIM key {config.dkim_key}"
    if bits < 2048:
        findings.append(warning(f"{where} has {bits} bits; use 2048 (mailer dkim keygen makes 2048-bit keys)"))
    else:
        findings.append(
            ok(
                f"{where} is readable, private (0600), {bits}-bit RSA; signs as "
                f"d={signer.domain} s={signer.selector}"
                + ("" if dns_lookup else " (check its DNS record with: mailer doctor --dns)")
            )
        )
    named = _KEYGEN_NAME.match(Path(config.dkim_key).name)
    if named and (named["selector"].lower(), named["domain"].lower()) != (signer.selector, signer.domain):
        findings.append(
            warning(
                f"{where} was made for selector {named['selector']} of {named['domain']}, but "
                f"MAILER_DKIM_SELECTOR={signer.selector} and MAILER_DKIM_DOMAIN={signer.domain}: "
                "receivers will look up the wrong public key"
            )
        )
    name = record_name(signer.selector, signer.domain)
    if dns_lookup is None:
        return findings, signer.domain
    try:
        published = dns_lookup(name)
    except Exception as exc:  # resolver libraries raise a zoo of exceptions (timeouts, SERVFAIL, no resolver)
        findings.append(warning(f"DNS lookup of {name} failed: {exc or type(exc).__name__}"))
        return findings, signer.domain
    if not published:
        findings.append(
            error(
                f"no DKIM record at {name}: receivers cannot verify the signature; publish the "
                f"record 'mailer dkim keygen' printed: {signer.record}"
            )
        )
    elif record_tags(published).get("p") != signer.public_key:
        findings.append(
            error(
                f"the key published at {name} is not the key in {config.dkim_key}: every signature "
                "will fail; publish this key's record or use the matching key file"
            )
        )
    else:
        findings.append(ok(f"{name} publishes this key"))
    return findings, signer.domain


def check_alignment(lists: list[dict[str, str]], dkim_domain: str) -> list[Finding]:
    """DMARC: the From domain of each list must share its organisational domain with the DKIM d= domain."""
    from mailer.dkim import alignment

    findings = []
    for row in lists:
        if not row["from"]:
            findings.append(
                warning(
                    f"list {row['name']}: no From address; set one with "
                    f'mailer lists create {row["name"]} --from "Name <addr>"'
                )
            )
            continue
        try:
            _, addr = parse_from(row["from"])
        except MailerError as exc:
            findings.append(error(f"list {row['name']}: {exc}"))
            continue
        from_domain = addr.rpartition("@")[2].lower()
        how = alignment(from_domain, dkim_domain)
        if how is None:
            findings.append(
                error(
                    f"list {row['name']}: From domain {from_domain} is not aligned with DKIM domain "
                    f"{dkim_domain}: DMARC fails; sign with MAILER_DKIM_DOMAIN={from_domain}"
                )
            )
        else:
            findings.append(
                ok(f"list {row['name']}: From domain {from_domain} aligned with DKIM d={dkim_domain} ({how})")
            )
    return findings


async def check_smtp(relay: SMTPSettings) -> Finding:
    """Reachable with the configured TLS mode and login (exactly as `mailer send` connects), and TLS offered."""
    relay = replace(relay, timeout=min(relay.timeout, PROBE_TIMEOUT))
    where = f"SMTP {relay.host}:{relay.port}"
    try:
        await probe(relay)
    except MailerError as exc:
        return error(str(exc))
    login = f", login as {relay.user} accepted" if relay.user else ""
    if relay.tls == "tls":
        return ok(f"{where} reachable over TLS{login}")
    if relay.tls == "starttls":
        return ok(f"{where} reachable, STARTTLS negotiated{login}")
    try:
        features = await ehlo_features(relay)
    except SMTPUnavailable as exc:
        return warning(f"{where} answered once, then not again: {exc}")
    offered = "starttls" in features
    if is_loopback(relay.host):  # nothing crosses a network
        return ok(
            f"{where} reachable (plain text on this machine{login}"
            + ("; it also offers STARTTLS" if offered else "")
            + ")"
        )
    if offered:
        return warning(
            f"{where} offers STARTTLS but MAILER_SMTP_TLS=none: set MAILER_SMTP_TLS=starttls so "
            "messages and the password cross the network encrypted"
        )
    return warning(f"{where} offers no TLS: messages cross the network in plain text")


async def run_checks(
    config: Config,
    relays: Sequence[SMTPSettings],
    dns_lookup: DnsLookup | None = None,
) -> list[Finding]:
    """Every check, in the order a person fixes things: database, secret, base URL, ops console, DKIM, alignment,
    SMTP."""
    findings, lists = check_database(config)
    findings.append(check_secret(config))
    findings.append(check_base_url(config))
    findings.append(check_ops_console(config))
    dkim_findings, dkim_domain = check_dkim(config, dns_lookup)
    findings += dkim_findings
    if dkim_domain:
        findings += check_alignment(lists, dkim_domain)
    for relay in relays:
        findings.append(await check_smtp(relay))
    return findings
