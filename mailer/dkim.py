"""DKIM (RFC 6376): key generation, the DNS TXT record to publish, and a Signer that signs finished message bytes.

Owns the private key and the DNS lookup of a published record; the only module that imports cryptography and
dkimpy. `Signer.sign` does no I/O (the key is loaded once per campaign by `load_signer`). The RSA operation runs
in OpenSSL: dkimpy's pure-Python RSA costs ~6.7 ms a message, this ~0.25 ms; tests check that both produce the
same signature and that dkimpy verifies ours."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailer.config import Config
from mailer.errors import ConfigError, MailerError

# Header fields covered by the signature, in this order when present. RFC 8058 section 4: List-Unsubscribe and
# List-Unsubscribe-Post MUST be signed for one-click unsubscribe to be honoured.
SIGNED_HEADERS = (
    "from",
    "reply-to",
    "to",
    "subject",
    "date",
    "message-id",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
)
# Listed once more than they occur ("oversigned", RFC 6376 section 8.15): a second From, Subject or
# List-Unsubscribe added in transit or by a replayer then breaks the signature instead of being displayed.
OVERSIGNED = ("from", "reply-to", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post")
KEY_BITS = 2048
MIN_KEY_BITS = 1024  # RFC 8301: verifiers MUST NOT accept less
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_WSP_RUN = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")
_FIELD_SPLIT = re.compile(rb"\r\n(?![ \t])")
_BARE_LF = re.compile(rb"(?<!\r)\n")
TXT_CHUNK = 255  # a DNS character-string holds at most 255 octets (RFC 1035 3.3)


class DKIMError(MailerError):
    """A key or a DKIM setting that cannot be used; a person can fix it."""


def check_dns_name(value: str, what: str) -> str:
    """A selector or domain fit for `s=` / `d=` and a DNS name (IDN domains become their A-label form)."""
    name = value.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise DKIMError(f"DKIM {what} {value!r} is not a valid DNS name") from None
    if not _NAME_RE.match(name):
        raise DKIMError(f"DKIM {what} {value!r} is not a valid DNS name")
    return name


def record_name(selector: str, domain: str) -> str:
    return f"{check_dns_name(selector, 'selector')}._domainkey.{check_dns_name(domain, 'domain')}"


def default_key_path(directory: Path, selector: str, domain: str) -> Path:
    """The key file keygen writes: named after the DNS record it belongs to, so doctor can tell a mismatch."""
    return directory / f"{record_name(selector, domain)}.pem"


def public_key_b64(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    """The `p=` value: base64 of the DER SubjectPublicKeyInfo (what opendkim-genkey publishes)."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def txt_value(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    return f"v=DKIM1; k=rsa; p={public_key_b64(key)}"


def txt_record(selector: str, domain: str, key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    """`S._domainkey.D IN TXT "..." "..."`: the value split into strings of at most 255 octets."""
    value = txt_value(key)
    chunks = [value[i : i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)]
    return f"{record_name(selector, domain)} IN TXT " + " ".join(f'"{chunk}"' for chunk in chunks)


@dataclass(frozen=True)
class GeneratedKey:
    path: Path
    record: str


def generate_key(selector: str, domain: str, directory: Path, bits: int = KEY_BITS) -> GeneratedKey:
    """Write a new RSA private key (PKCS#1 PEM, mode 0600, never over an existing file) and return its TXT record."""
    path = default_key_path(directory, selector, domain)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DKIMError(f"cannot create the folder {directory}: {exc.strerror}") from None
    if path.exists():
        raise DKIMError(f"{path} already exists; remove it or choose another selector")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DKIMError(f"{path} already exists; remove it or choose another selector") from None
    except OSError as exc:
        raise DKIMError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return GeneratedKey(path, txt_record(selector, domain, key))


def parse_private_key(pem: bytes, origin: str = "DKIM key") -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        reason = "it is encrypted" if isinstance(exc, TypeError) else "it is not a PEM private key"
        raise DKIMError(f"{origin} cannot be used: {reason}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DKIMError(f"{origin} is not an RSA key (mailer signs with rsa-sha256)")
    if key.key_size < MIN_KEY_BITS:
        raise DKIMError(f"{origin} has {key.key_size} bits; receivers reject DKIM keys under {MIN_KEY_BITS}")
    return key


def read_key_file(path: Path) -> bytes:
    """The PEM bytes of a DKIM key file, which like every secret must not be readable by others (0600)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            who = "others" if mode & 0o007 else "its group"
            raise ConfigError(f"DKIM key {path} is readable by {who} (mode {mode:o}); run: chmod 600 {path}")
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"DKIM key {path} does not exist; create one with: mailer dkim keygen") from None
    except PermissionError:
        raise ConfigError(f"DKIM key {path} is not readable by this user") from None
    except IsADirectoryError:
        raise ConfigError(f"DKIM key {path} is a directory, not a key file") from None


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, unfold, runs of WSP to one space, no WSP around the colon; with CRLF."""
    return name.lower().rstrip() + b":" + _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" \t") + b"\r\n"


def relaxed_lines(body: bytes) -> bytes:
    """RFC 6376 3.4.4 but for the end: no WSP at line ends, runs of WSP to one space. Line by line, so the form of
    a body is that of its lines' form joined: the start of a message and its fixed end can be done apart."""
    return _WSP_RUN.sub(b" ", _TRAILING_WSP.sub(b"\r\n", body)) if _needs_wsp_fix(body) else body


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: no WSP at line ends, runs of WSP to one space, no empty lines at the end."""
    body = relaxed_lines(body)
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def _needs_wsp_fix(body: bytes) -> bool:
    """Whether the body has a tab, a run of spaces or a space at a line end. mailer's own bodies (base64 or
    quoted-printable) have none, and a base64 body has only a few spaces (in part headers): visiting them with
    find() costs ~5 us where two substring searches over 50 KB cost ~70 us."""
    if b"\t" in body:
        return True
    pos = body.find(b" ")
    for _ in range(64):
        if pos == -1:
            return False
        if body[pos + 1 : pos + 2] in (b" ", b"\r"):
            return True
        pos = body.find(b" ", pos + 1)
    return b"  " in body or b" \r\n" in body


def _fold_tags(tags: list[tuple[str, str]]) -> str:
    """`DKIM-Signature: v=1; ...; bh=...;` folded under 78 columns at the spaces between and within tags."""
    lines = ["DKIM-Signature:"]
    for word in ("; ".join(f"{tag}={value}" for tag, value in tags) + ";").split(" "):
        if len(lines[-1]) + 1 + len(word) > 76:
            lines.append(" " + word)
        else:
            lines[-1] += " " + word
    return "\r\n".join(lines)


def _b_tag(signature: str) -> str:
    """b= on lines of its own (as dkimpy does: some receivers mishandle a b= that shares a line), base64 broken
    anywhere: FWS inside b= is allowed and every verifier strips it."""
    chunks = [signature[i : i + 72] for i in range(0, len(signature), 72)] or [""]
    return "\r\n b=" + "\r\n ".join(chunks) + "\r\n"


class Signer:
    """Signs message bytes with one key, selector and domain: rsa-sha256, relaxed/relaxed (RFC 6376).

    Build it once (parsing the key is the expensive part), then `sign(data)` returns the message with its
    DKIM-Signature header first. Picklable, so worker processes get their own copy."""

    canonicalization = "relaxed/relaxed"
    algorithm = "rsa-sha256"

    def __init__(self, private_key_pem: bytes, selector: str, domain: str, origin: str = "DKIM key") -> None:
        self.private_key_pem = private_key_pem
        self.selector = check_dns_name(selector, "selector")
        self.domain = check_dns_name(domain, "domain")
        self.origin = origin
        self.key = parse_private_key(private_key_pem, origin)
        self._padding = padding.PKCS1v15()
        self._hash = hashes.SHA256()

    @classmethod
    def from_file(cls, path: Path, selector: str, domain: str) -> Signer:
        return cls(read_key_file(Path(path)), selector, domain, origin=f"DKIM key {path}")

    def __getstate__(self) -> dict[str, Any]:
        return {"pem": self.private_key_pem, "selector": self.selector, "domain": self.domain, "origin": self.origin}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["pem"], state["selector"], state["domain"], state["origin"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Signer(selector={self.selector!r}, domain={self.domain!r}, bits={self.key.key_size})"

    @property
    def public_key(self) -> str:
        """The `p=` value of the DNS record that verifies this signer's signatures."""
        return public_key_b64(self.key)

    @property
    def record(self) -> str:
        return txt_record(self.selector, self.domain, self.key)

    def header_names(self, fields: list[tuple[bytes, bytes]]) -> list[str]:
        """The h= list: each signed header as often as it occurs, then once more for the oversigned ones."""
        counts: dict[str, int] = {}
        for name, _ in fields:
            key = name.decode("ascii", "replace").strip().lower()
            counts[key] = counts.get(key, 0) + 1
        names = [name for name in SIGNED_HEADERS for _ in range(counts.get(name, 0))]
        if "from" not in names:
            raise DKIMError("cannot sign a message without a From header")
        return names + [name for name in OVERSIGNED if counts.get(name)]

    def sign(self, data: bytes, timestamp: int | None = None) -> bytes:
        """The message with a DKIM-Signature header prepended (line ends normalised to CRLF)."""
        data = _crlf(data)
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep and head.endswith(b"\r\n"):
            head = head[:-2]
        return self._signature_header(head, hashlib.sha256(relaxed_body(body)).digest(), timestamp) + data

    def for_tail(self, tail: bytes) -> TailSigner:
        """A signer of messages that all end with `tail` (a campaign's attachments and closing boundaries)."""
        return TailSigner(self, tail)

    def _signature_header(self, head: bytes, body_digest: bytes, timestamp: int | None) -> bytes:
        fields = _parse_fields(head)
        names = self.header_names(fields)
        body_hash = base64.b64encode(body_digest).decode("ascii")
        folded = _fold_tags(
            [
                ("v", "1"),
                ("a", self.algorithm),
                ("c", self.canonicalization),
                ("d", self.domain),
                ("i", f"@{self.domain}"),
                ("q", "dns/txt"),
                ("s", self.selector),
                ("t", str(int(time.time()) if timestamp is None else int(timestamp))),
                ("h", " : ".join(names)),
                ("bh", body_hash),
            ]
        )
        # RFC 6376 3.7: the signed header fields (the last unused instance of each name, from the bottom up),
        # then this header itself with b= empty and without its trailing CRLF.
        to_hash = [relaxed_header(name, value) for name, value in _select(fields, names)]
        to_hash.append(relaxed_header(b"dkim-signature", (folded + " b=").encode("ascii")[15:])[:-2])
        signature = self.key.sign(b"".join(to_hash), self._padding, self._hash)
        return (folded + _b_tag(base64.b64encode(signature).decode("ascii"))).encode("ascii")


class TailSigner:
    """Signs messages that end with the same bytes, given without them: their relaxed form is computed once, and
    per message only the hash reads it (SHA-256 runs at ~2 GB/s here, the canonicalisation in Python far slower).
    A body hash is that of the whole body: `relaxed_lines(start) + relaxed_body(tail)` equals `relaxed_body(start
    + tail)` when the start ends a line and the tail has a non-empty line; otherwise it signs the message whole."""

    def __init__(self, signer: Signer, tail: bytes) -> None:
        self.signer = signer
        self.tail = _crlf(tail)
        self.canonical = relaxed_body(self.tail)

    def __call__(self, start: bytes, timestamp: int | None = None) -> bytes:
        start = _crlf(start)
        head, sep, body = start.partition(b"\r\n\r\n")
        if not (sep and self.canonical and (body.endswith(b"\r\n") or not body)):
            return self.signer.sign(start + self.tail, timestamp)
        body_hash = hashlib.sha256(relaxed_lines(body))
        body_hash.update(self.canonical)
        return b"".join((self.signer._signature_header(head, body_hash.digest(), timestamp), start, self.tail))


def _crlf(data: bytes) -> bytes:
    # Two single-byte counts (memchr speed) instead of a CRLF search: equal unless some line end is bare.
    return _BARE_LF.sub(b"\r\n", data) if data.count(b"\r") != data.count(b"\n") else data


def _parse_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    fields = []
    for raw in _FIELD_SPLIT.split(head):
        name, colon, value = raw.partition(b":")
        if not colon:
            raise DKIMError("cannot sign: the message header has a line that is not a header field")
        fields.append((name, value))
    return fields


def _select(fields: list[tuple[bytes, bytes]], names: list[str]) -> list[tuple[bytes, bytes]]:
    selected = []
    next_index: dict[str, int] = {}
    lowered = [name.strip().lower().decode("ascii", "replace") for name, _ in fields]
    for name in names:
        i = next_index.get(name, len(fields))
        while i > 0:
            i -= 1
            if lowered[i] == name:
                selected.append(fields[i])
                break
        next_index[name] = i
    return selected


def load_signer(config: Config) -> Signer | None:
    """The signer of MAILER_DKIM_KEY / _SELECTOR / _DOMAIN (key read and parsed once), or None without DKIM."""
    key, selector, domain = config.dkim_key, config.dkim_selector, config.dkim_domain
    if not (key or selector or domain):
        return None
    missing = [
        name
        for name, value in (
            ("MAILER_DKIM_KEY", key),
            ("MAILER_DKIM_SELECTOR", selector),
            ("MAILER_DKIM_DOMAIN", domain),
        )
        if not value
    ]
    if missing:
        raise ConfigError(f"DKIM is half configured: set {' and '.join(missing)} too (or unset all three)")
    return Signer.from_file(Path(key).expanduser(), selector, domain)


# Second-level registries where the organisational domain has three labels (example.com.cn, example.co.uk).
# An approximation of the Public Suffix List, enough for DMARC relaxed alignment of common sender domains.
# Written as words (SIM905 prefers a literal, which ruff format sets one name a line: 47 lines of this module).
_MULTI_LABEL_SUFFIXES = frozenset(
    """
    com.cn net.cn org.cn gov.cn edu.cn ac.cn com.hk org.hk edu.hk com.tw org.tw edu.tw idv.tw com.sg
    edu.sg com.my co.jp ne.jp or.jp ac.jp go.jp co.kr or.kr ac.kr co.uk org.uk ac.uk gov.uk me.uk co.nz
    org.nz ac.nz com.au net.au org.au edu.au gov.au co.in org.in ac.in com.br org.br com.mx co.za
    com.tr co.il com.ar
    """.split()  # noqa: SIM905
)


def organisational_domain(domain: str) -> str:
    """The registered domain under its public suffix (approximated): news.example.com.cn -> example.com.cn."""
    labels = domain.lower().rstrip(".").split(".")
    keep = 3 if len(labels) >= 3 and ".".join(labels[-2:]) in _MULTI_LABEL_SUFFIXES else 2
    return ".".join(labels[-keep:])


def alignment(from_domain: str, dkim_domain: str) -> str | None:
    """DMARC alignment of a From domain with a DKIM d= domain: "strict", "relaxed" or None (DMARC fails)."""
    a, b = from_domain.lower().rstrip("."), dkim_domain.lower().rstrip(".")
    if a == b:
        return "strict"
    return "relaxed" if organisational_domain(a) == organisational_domain(b) else None


def record_tags(txt: str | bytes) -> dict[str, str]:
    """The tags of a published DKIM TXT record (its strings already joined)."""
    text = txt.decode("ascii", "replace") if isinstance(txt, bytes) else txt
    tags = {}
    for item in text.split(";"):
        tag, eq, value = item.partition("=")
        if eq:
            tags[tag.strip()] = "".join(value.split())
    return tags


def dns_txt(name: str) -> bytes | None:
    """The TXT record at `name` (its strings joined) from the system resolver, via dkimpy's DNS plug-in."""
    from dkim.dnsplug import get_txt

    found: bytes | None = get_txt(name)
    return found
