"""Settings from `mailer.toml` in the working directory, overridden by MAILER_* environment variables.

Secrets (SMTP password, signing secret) come only from the environment or a 0600 file, never from mailer.toml,
and Config's repr never shows them."""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mailer.errors import ConfigError

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

    @property
    def secret_path(self) -> Path:
        return self.db_path.with_name(self.db_path.name + ".secret")

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
    "MAILER_DKIM_KEY": ("dkim_key", str),
    "MAILER_DKIM_SELECTOR": ("dkim_selector", str),
    "MAILER_DKIM_DOMAIN": ("dkim_domain", str),
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
}


def _convert(source: str, key: str, kind: type, raw: Any) -> Any:
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key} = {raw!r} is not a valid {kind.__name__}") from None


def load_config(
    environ: dict[str, str] | None = None, cwd: Path | None = None, db_path: Path | None = None
) -> Config:
    """Build the Config: defaults < mailer.toml < environment < explicit `db_path` (the --db option)."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    toml_path = (cwd or Path.cwd()) / "mailer.toml"
    if toml_path.is_file():
        try:
            data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: {exc}") from None
        values["templates"] = _templates_folder(toml_path, data.get("templates"))
        flat = {**data, **{f"smtp_{k}": v for k, v in data.get("smtp", {}).items()}}
        flat.pop("smtp", None)
        for key, raw in flat.items():
            if key in SECRET_KEYS or key.endswith("password"):
                raise ConfigError(f"{toml_path}: '{key}' is a secret; set it in the environment, not in mailer.toml")
            if key in _TOML:
                name, kind = _TOML[key]
                values[name] = _convert(str(toml_path), key, kind, raw)
    if values.get("templates") is None and ((cwd or Path.cwd()) / "templates").is_dir():
        values["templates"] = (cwd or Path.cwd()) / "templates"
    for var, (name, kind) in _ENV.items():
        if env.get(var):
            values[name] = _convert(var, var, kind, env[var])
    if db_path is not None:
        values["db_path"] = Path(db_path)
    config = Config(**values)
    if config.smtp_tls not in TLS_MODES:
        raise ConfigError(f"MAILER_SMTP_TLS must be one of {', '.join(TLS_MODES)}, not {config.smtp_tls!r}")
    if not config.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"MAILER_BASE_URL must start with http:// or https://, not {config.base_url!r}")
    config = replace(config, base_url=config.base_url.rstrip("/"))
    if env.get("MAILER_SECRET"):
        return replace(config, secret=env["MAILER_SECRET"].encode("utf-8"))
    return replace(config, secret=read_secret_file(config.secret_path))


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


def read_secret_file(path: Path) -> bytes:
    """The signing secret kept beside the database, or b"" when `mailer init` has not made one yet."""
    if not path.exists():
        return b""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        who = "others" if mode & 0o007 else "its group"
        raise ConfigError(f"{path} is readable by {who} (mode {mode:o}); run: chmod 600 {path}")
    return path.read_bytes().strip()


def ensure_secret(config: Config) -> Config:
    """Generate the signing secret once (0600 file beside the database) unless MAILER_SECRET is set."""
    if config.secret:
        return config
    path = config.secret_path
    if path.exists():
        return replace(config, secret=read_secret_file(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32))
    return replace(config, secret=read_secret_file(path))
