"""Settings from `mailer.toml` in the working directory, overridden by MAILER_* environment variables.

Secrets (SMTP password, signing secret) come only from the environment or a 0600 file, never from mailer.toml,
and Config's repr never shows them."""

from __future__ import annotations

import difflib
import math
import os
import re
import secrets
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mailer.attachments import DEFAULT_LIMIT_BYTES
from mailer.errors import ConfigError
from mailer.models import Theme
from mailer.passwords import PasswordHashError, check_hash

TLS_MODES = ("starttls", "tls", "none")
SECRET_KEYS = {"smtp_password", "password", "secret", "signing_secret"}


@dataclass(frozen=True)
class Config:
    db_path: Path = Path("mailer.db")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_tls: str = "none"
    smtp_timeout: float = 30.0
    smtp_ca: str = ""  # PEM CA bundle that verifies the relay's TLS certificate instead of the system's
    base_url: str = "http://127.0.0.1:8025"
    secret: bytes = field(default=b"", repr=False)
    dkim_key: str = ""
    dkim_selector: str = ""
    dkim_domain: str = ""
    concurrency: int = 4
    retry_base: float = 60.0  # first backoff after a 4xx; doubles per attempt (Postfix: minimal_backoff_time)
    retry_max: float = 4 * 3600.0  # longest backoff (Postfix: maximal_backoff_time)
    retry_expiry: float = 3 * 86400.0  # give up on a recipient this long after its first try
    soft_bounce_limit: int = 3  # soft bounces (of distinct deliveries) before an address is suppressed
    # The editor's layouts: --templates, else `templates` in mailer.toml, else ./templates/ when it exists; None:
    # the built-in ones. A layout the folder lacks comes from the built-in ones.
    templates: Path | None = None
    theme: Theme = field(default_factory=Theme)  # [theme]
    list_themes: tuple[tuple[str, Theme], ...] = ()  # [lists.NAME.theme], each over [theme]
    warnings: tuple[str, ...] = field(default=(), compare=False)  # e.g. an unknown key in mailer.toml
    relay_grace: float = 60.0  # how long a relay that worked may be unreachable in a run (a restart) before it stops
    pause_after: int = 10  # identical permanent refusals in a row that pause a campaign as suspicious (0: never)
    lease_seconds: float = 60.0  # a sender's hold on its campaign, renewed while it runs
    stop_grace: float = 30.0  # after a stop, seconds workers have to finish their messages in flight before SIGKILL
    # The ops console (/ops/): off unless a password is set, plain (MAILER_OPS_PASSWORD) or as the scrypt hash that
    # `mailer ops passwd` makes, read from MAILER_OPS_PASSWORD_FILE. Both only from the environment.
    ops_user: str = "ops"
    ops_password: str = field(default="", repr=False)
    ops_password_hash: str = field(default="", repr=False)
    ops_metrics_token: str = field(default="", repr=False)  # a read-only bearer token for /ops/metrics alone
    timezone: str = ""  # of `--at` times when neither --tz nor the list says ("": UTC)
    attachment_limit: int = DEFAULT_LIMIT_BYTES  # bytes of attachments one message may carry

    @property
    def secret_path(self) -> Path:
        return self.db_path.with_name(self.db_path.name + ".secret")

    def theme_for(self, list_name: str) -> Theme:
        """The theme of a list's mail: its own [lists.NAME.theme] over [theme]."""
        return dict(self.list_themes).get(list_name, self.theme)

    def with_overrides(self, **changes: Any) -> Config:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_ENV = {
    "MAILER_DB": ("db_path", Path),
    "MAILER_SMTP_HOST": ("smtp_host", str),
    "MAILER_SMTP_PORT": ("smtp_port", int),
    "MAILER_SMTP_USER": ("smtp_user", str),
    "MAILER_SMTP_PASSWORD": ("smtp_password", str),
    "MAILER_SMTP_TLS": ("smtp_tls", str),
    "MAILER_SMTP_TIMEOUT": ("smtp_timeout", float),
    "MAILER_SMTP_CA": ("smtp_ca", str),
    "MAILER_RETRY_BASE": ("retry_base", float),
    "MAILER_RETRY_MAX": ("retry_max", float),
    "MAILER_RETRY_EXPIRY": ("retry_expiry", float),
    "MAILER_BASE_URL": ("base_url", str),
    "MAILER_SOFT_BOUNCE_LIMIT": ("soft_bounce_limit", int),
    "MAILER_RELAY_GRACE": ("relay_grace", float),
    "MAILER_PAUSE_AFTER": ("pause_after", int),
    "MAILER_LEASE_SECONDS": ("lease_seconds", float),
    "MAILER_STOP_GRACE": ("stop_grace", float),
    "MAILER_DKIM_KEY": ("dkim_key", str),
    "MAILER_DKIM_SELECTOR": ("dkim_selector", str),
    "MAILER_DKIM_DOMAIN": ("dkim_domain", str),
    "MAILER_OPS_USER": ("ops_user", str),
    "MAILER_OPS_PASSWORD": ("ops_password", str),
    "MAILER_OPS_METRICS_TOKEN": ("ops_metrics_token", str),
    "MAILER_ATTACHMENT_LIMIT": ("attachment_limit", int),
}

_TOML = {
    "db": ("db_path", Path),
    "smtp_host": ("smtp_host", str),
    "smtp_port": ("smtp_port", int),
    "smtp_user": ("smtp_user", str),
    "smtp_tls": ("smtp_tls", str),
    "smtp_timeout": ("smtp_timeout", float),
    "smtp_ca": ("smtp_ca", str),
    "base_url": ("base_url", str),
    "soft_bounce_limit": ("soft_bounce_limit", int),
    "dkim_key": ("dkim_key", str),
    "dkim_selector": ("dkim_selector", str),
    "dkim_domain": ("dkim_domain", str),
    "concurrency": ("concurrency", int),
    "retry_base": ("retry_base", float),
    "retry_max": ("retry_max", float),
    "retry_expiry": ("retry_expiry", float),
    "relay_grace": ("relay_grace", float),
    "pause_after": ("pause_after", int),
    "timezone": ("timezone", str),
    "attachment_limit": ("attachment_limit", int),
}


# The range of each number. A value outside it used to fail later, naming nothing: a NaN timeout was a traceback,
# port 70000 "connection refused", a port `true` in mailer.toml became port 1.
_WHOLE_RANGES = {
    "smtp_port": (1, 65535),
    "concurrency": (1, 64),
    "soft_bounce_limit": (1, 1_000_000),
    "pause_after": (0, 1_000_000),
}
# finite and above 0
_SECONDS = {"smtp_timeout", "retry_base", "retry_max", "retry_expiry", "lease_seconds", "stop_grace"}
_SECONDS_OR_NONE = {"relay_grace"}  # finite, 0 or more: 0 gives a relay no time at all


def _convert(source: str, key: str, kind: type, raw: Any, name: str) -> Any:
    """A setting as its type: TOML gives typed values, the environment text. Anything that is not a value of that
    type in its range is one ConfigError naming where it was set."""
    if name == "attachment_limit":
        return _byte_size(source, key, raw)
    if kind is str or kind is Path:
        if not isinstance(raw, str) or (kind is Path and not raw.strip()):
            raise ConfigError(f"{source}: {key} = {raw!r} must be {'a file name' if kind is Path else 'text'}")
        return kind(raw)
    try:
        if isinstance(raw, bool) or (kind is int and isinstance(raw, float)):
            raise ValueError(raw)
        value = kind(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{source}: {key} = {raw!r} is not {what}") from None
    if name in _WHOLE_RANGES:
        low, high = _WHOLE_RANGES[name]
        if not low <= value <= high:
            raise ConfigError(f"{source}: {key} = {raw!r} must be from {low} to {high}")
    elif name in _SECONDS and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{source}: {key} = {raw!r} must be a number of seconds above 0")
    elif name in _SECONDS_OR_NONE and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{source}: {key} = {raw!r} must be a number of seconds, 0 or more")
    return value


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|kib|k|mb|mib|m)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20}
MAX_ATTACHMENT_LIMIT = 100 * 2**20  # no relay a newsletter goes through takes more in one message


def _byte_size(source: str, key: str, raw: Any) -> int:
    """A size in bytes: a whole number, or text such as "10 MB" or "512 KB" (MB = 2**20 bytes, as mail clients
    count), from 1 KB to 100 MB."""
    found = _SIZE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif found:
        value = int(float(found.group(1)) * _UNITS[(found.group(2) or "").lower()])
    else:
        raise ConfigError(f'{source}: {key} = {raw!r} is not a size such as "10 MB" or "512 KB"')
    if not 2**10 <= value <= MAX_ATTACHMENT_LIMIT:
        raise ConfigError(f"{source}: {key} = {raw!r} must be from 1 KB to 100 MB")
    return value


def load_config(environ: dict[str, str] | None = None, cwd: Path | None = None, db_path: Path | None = None) -> Config:
    """Build the Config: defaults < mailer.toml < environment < explicit `db_path` (the --db option)."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    toml_path = (cwd or Path.cwd()) / "mailer.toml"
    if toml_path.is_file():
        try:
            data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: {exc}") from None
        values.update(_look(toml_path, data))
        values["warnings"] = tuple(unknown_keys(toml_path, data))
        smtp = data.get("smtp", {})
        if not isinstance(smtp, dict):
            raise ConfigError(f"{toml_path}: 'smtp' must be a table ([smtp] with host, port, ...)")
        flat = {**data, **{f"smtp_{k}": v for k, v in smtp.items()}}
        flat.pop("smtp", None)
        for key, raw in flat.items():
            if key in SECRET_KEYS or key.endswith("password"):
                raise ConfigError(f"{toml_path}: '{key}' is a secret; set it in the environment, not in mailer.toml")
            if key in _TOML:
                name, kind = _TOML[key]
                values[name] = _convert(str(toml_path), key, kind, raw, name)
    if values.get("templates") is None and ((cwd or Path.cwd()) / "templates").is_dir():
        values["templates"] = (cwd or Path.cwd()) / "templates"
    for var, (name, kind) in _ENV.items():
        if env.get(var):
            values[name] = _convert("environment", var, kind, env[var], name)
    if db_path is not None:
        values["db_path"] = Path(db_path)
    config = Config(**values)
    if config.smtp_tls not in TLS_MODES:
        raise ConfigError(f"MAILER_SMTP_TLS must be one of {', '.join(TLS_MODES)}, not {config.smtp_tls!r}")
    config = replace(config, base_url=check_base_url(config.base_url))
    if env.get("MAILER_OPS_PASSWORD") and not env["MAILER_OPS_PASSWORD"].strip():
        raise ConfigError("MAILER_OPS_PASSWORD is blank: set a password, or unset it to keep the console off")
    if env.get("MAILER_OPS_PASSWORD_FILE") and env.get("MAILER_OPS_PASSWORD"):  # else the old one keeps working
        raise ConfigError("MAILER_OPS_PASSWORD and MAILER_OPS_PASSWORD_FILE are both set: keep one of them")
    if env.get("MAILER_OPS_PASSWORD_FILE"):
        config = replace(config, ops_password_hash=read_ops_password_file(Path(env["MAILER_OPS_PASSWORD_FILE"])))
    if env.get("MAILER_SECRET"):
        return replace(config, secret=env["MAILER_SECRET"].encode("utf-8"))
    return replace(config, secret=read_secret_file(config.secret_path))


# Characters a URL never holds raw (RFC 3986 2.1 / 2.2): controls, space, and those it only percent-encodes.
_NOT_IN_URL = re.compile(r'[\x00-\x20\x7f-\x9f"<>\\^`{|}]')


def check_base_url(value: str) -> str:
    """The public base of the web endpoints, refused at start unless it is a plain http(s) URL: it is copied into
    every List-Unsubscribe header and link, where a CR/LF would start a new header and a space end the link."""
    where = "MAILER_BASE_URL (base_url in mailer.toml)"
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where} must start with http:// or https://, not {value!r}")
    bad = _NOT_IN_URL.search(value)
    if bad:
        raise ConfigError(
            f"{where} {value!r} contains {bad.group(0)!r} at position {bad.start()}: a URL has no "
            "spaces or control characters (percent-encode them)"
        )
    if not value.isascii():
        raise ConfigError(
            f"{where} {value!r} is not ASCII: write the host in its xn-- form and percent-encode the path"
        )
    parts = urlsplit(value)
    try:
        _ = parts.port  # parsed on access
    except ValueError:
        raise ConfigError(f"{where} {value!r} has an invalid port") from None
    if not parts.hostname or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"{where} {value!r} must be scheme://host[:port][/path], with no user, query or "
            "fragment (links are made by appending /u/TOKEN)"
        )
    return value.rstrip("/")


def unknown_keys(toml_path: Path, data: dict[str, Any]) -> list[str]:
    """A warning for each key of mailer.toml that nothing reads (a typo is otherwise silently ignored), naming the
    nearest known key."""
    smtp_keys = sorted(key.removeprefix("smtp_") for key in _TOML if key.startswith("smtp_"))
    found: list[str] = []

    def check(table: Any, known: list[str] | tuple[str, ...], where: str) -> None:
        if not isinstance(table, dict):
            return
        for key in table:
            if key in known or key in SECRET_KEYS or key.endswith("password"):  # secrets: refused elsewhere
                continue
            name = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f" (known here: {', '.join(known)})"
            found.append(f"{toml_path}: unknown setting '{name}' is ignored{hint}")

    check(data, sorted([*_TOML, "smtp", "templates", "theme", "lists"]), "")
    check(data.get("smtp"), smtp_keys, "smtp")
    check(data.get("theme"), THEME_KEYS, "theme")
    lists = data.get("lists")
    for name, table in lists.items() if isinstance(lists, dict) else ():
        check(table, ("theme",), f"lists.{name}")
        check(table.get("theme") if isinstance(table, dict) else None, THEME_KEYS, f"lists.{name}.theme")
    return found


MAX_LOGO_BYTES = 1_000_000  # a local logo is in each message: 1 MB to 10,000 readers is 10 GB through the relay
_COLOUR = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?")
THEME_KEYS = ("accent", "highlight", "logo", "logo_width", "footer")


def _look(toml_path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Config values for how mail and pages look: the layouts folder, [theme] and each [lists.NAME.theme]."""
    theme = _theme(toml_path, "theme", data.get("theme", {}), Theme())
    lists = data.get("lists", {})
    if not isinstance(lists, dict):
        raise ConfigError(f"{toml_path}: 'lists' must be a table: [lists.NAME.theme]")
    list_themes = []
    for name, table in lists.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{toml_path}: lists.{name} must be a table: [lists.{name}.theme]")
        if "theme" in table:
            list_themes.append((name, _theme(toml_path, f"lists.{name}.theme", table["theme"], theme)))
    return {
        "templates": _templates_folder(toml_path, data.get("templates")),
        "theme": theme,
        "list_themes": tuple(list_themes),
    }


def _theme(toml_path: Path, where: str, table: Any, base: Theme) -> Theme:
    """One theme table over `base`; a value that would break a layout is a ConfigError naming it."""
    if not isinstance(table, dict):
        raise ConfigError(f"{toml_path}: '{where}' must be a table ([{where}])")
    changes: dict[str, Any] = {}
    for key in ("accent", "highlight"):
        if key in table:
            raw = table[key]
            if not isinstance(raw, str) or not _COLOUR.fullmatch(raw.strip()):
                raise ConfigError(f"{toml_path}: {where}.{key} = {raw!r} is not a colour like '#163e6c'")
            digits = raw.strip().lower()[1:]
            # #rgb as #rrggbb: old Outlook reads only the six-digit form in a bgcolor attribute
            changes[key] = "#" + ("".join(d * 2 for d in digits) if len(digits) == 3 else digits)
    if "logo" in table:
        changes.update(_logo(toml_path, where, table["logo"]))
    if "logo_width" in table:
        raw = table["logo_width"]
        if not isinstance(raw, int) or isinstance(raw, bool) or not 16 <= raw <= 600:
            raise ConfigError(f"{toml_path}: {where}.logo_width = {raw!r} must be a number of pixels, 16 to 600")
        changes["logo_width"] = raw
    if "footer" in table:
        raw = table["footer"]
        lines = raw.splitlines() if isinstance(raw, str) else raw
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise ConfigError(f'{toml_path}: {where}.footer must be a list of lines: footer = ["...", "..."]')
        changes["footer"] = tuple(_one_line(line) for line in lines if line.strip())
    return replace(base, **changes)


def _one_line(text: str) -> str:
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def _logo(toml_path: Path, where: str, raw: Any) -> dict[str, Any]:
    """An https URL as it is; a local file (relative to mailer.toml) read now, to travel inside each message."""
    if not isinstance(raw, str):
        raise ConfigError(f"{toml_path}: {where}.logo = {raw!r} must be an https URL or the name of an image file")
    value = raw.strip()
    if not value:
        return {"logo": "", "logo_data": b""}
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value):
        if not value.lower().startswith("https://") or re.search(r"[\s\"'<>]", value):
            raise ConfigError(
                f"{toml_path}: {where}.logo = {raw!r}: use an https:// URL (mail clients block others) "
                "or a local image file"
            )
        return {"logo": value, "logo_data": b""}
    path = toml_path.parent / Path(value).expanduser()
    named = f"{toml_path}: {where}.logo = {raw!r}"
    try:
        # stat first: a device (/dev/zero) or a FIFO would be read forever, or block, by a plain read
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"{named}: {path} is not a file")
        with path.open("rb") as fh:
            data = fh.read(MAX_LOGO_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{named}: cannot read {path} ({exc.strerror})") from None
    if len(data) > MAX_LOGO_BYTES:
        raise ConfigError(
            f"{named}: {path} is {max(status.st_size, len(data)) / 1e6:.1f} MB; the logo travels "
            f"inside every message, so it may be at most {MAX_LOGO_BYTES // 1000} KB"
        )
    from mailer.render import image_type  # only for a local logo: commands that never render do not load Jinja

    try:
        image_type(data)
    except ValueError as exc:
        raise ConfigError(f"{named}: {exc}") from None
    return {"logo": path.name, "logo_data": data}


def _templates_folder(toml_path: Path, raw: Any) -> Path | None:
    """`templates = "layouts"` in mailer.toml: a folder, relative to mailer.toml's."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{toml_path}: templates = {raw!r} must be the name of a folder of layouts")
    folder = toml_path.parent / Path(raw).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{toml_path}: templates = {raw!r}: no such folder ({folder})")
    return folder


def read_ops_password_file(path: Path) -> str:
    """The console's password hash from MAILER_OPS_PASSWORD_FILE, checked now: a typo is one line at start, not a
    console nobody can sign in to."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        stored = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"MAILER_OPS_PASSWORD_FILE {path}: {getattr(exc, 'strerror', None) or exc}") from None
    _only_owner_reads(f"MAILER_OPS_PASSWORD_FILE {path}", path, mode)  # a hash anyone reads is attacked offline
    try:
        check_hash(stored)
    except PasswordHashError as exc:
        raise ConfigError(f"MAILER_OPS_PASSWORD_FILE {path}: {exc}") from None
    return stored


def read_secret_file(path: Path) -> bytes:
    """The signing secret kept beside the database, or b"" when `mailer init` has not made one yet."""
    if not path.exists():
        return b""
    _only_owner_reads(str(path), path, stat.S_IMODE(path.stat().st_mode))
    return path.read_bytes().strip()


def _only_owner_reads(name: str, path: Path, mode: int) -> None:
    if mode & 0o077:
        who = "others" if mode & 0o007 else "its group"
        raise ConfigError(f"{name} is readable by {who} (mode {mode:o}); run: chmod 600 {path}")


def ensure_secret(config: Config) -> Config:
    """Generate the signing secret once (0600 file beside the database) unless MAILER_SECRET is set."""
    if config.secret:
        return config
    path = config.secret_path
    if path.exists():
        return replace(config, secret=read_secret_file(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    except OSError as exc:
        raise ConfigError(
            f"cannot create the signing secret {path}: {exc.strerror} (is --db in a writable folder?)"
        ) from None
    return replace(config, secret=read_secret_file(path))
