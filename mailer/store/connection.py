"""The SQLite connection every repository shares: opening a database file (private, WAL, version checked),
re-entrant write transactions (a full disk and a lock held past the busy timeout raised as errors of their own), and
the one-line explanation of an SQLite failure.

Must not know any table but through schema.py; rows are read and written by the repositories."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from mailer.errors import MailerError
from mailer.store.schema import SCHEMA_VERSION, schema_version

if TYPE_CHECKING:
    from mailer.store import Store


class StoreWriteError(MailerError):
    """The database could not be written (disk full, I/O error): what the transaction held was not recorded."""


class StoreBusy(MailerError):
    """Another process held the database's write lock past the busy timeout (30 s): nothing of the transaction
    was recorded. Transient: the same command goes on once the other process lets go."""


def connect(path: Path, *, must_exist: bool) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) to a mailer database at `path`, created 0600 when
    `must_exist` is false. A database of a newer mailer is refused before anything is written to it."""
    if must_exist and not path.exists():
        raise MailerError(f"database {path} does not exist; run: mailer init (or pass --db)")
    try:
        if not must_exist and not path.exists():
            _create_private(path)
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            conn.close()
            raise MailerError(
                f"database {path} was made by a newer mailer (schema {version}; this one knows "
                f"{SCHEMA_VERSION}): upgrade mailer to use it"
            )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
    except sqlite3.Error as exc:
        raise MailerError(describe_database_error(path, exc)) from None
    except OSError as exc:
        raise MailerError(f"cannot create database {path}: {exc.strerror}") from None
    if must_exist and version < SCHEMA_VERSION:
        conn.close()
        if version == 0:
            raise MailerError(f"database {path} is not initialised; run: mailer init")
        raise MailerError(f"database {path} is from an older mailer (schema {version}); run: mailer init to migrate it")
    return conn


def _create_private(path: Path) -> None:
    """An empty database file readable by its owner only: it holds every subscriber's address. SQLite gives the
    -wal and -shm files it makes beside it the same mode."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def describe_database_error(path: Path, exc: sqlite3.Error) -> str:
    """One line a person can act on for an SQLite failure on the database at `path`."""
    text = str(exc)
    folder = path.parent if str(path.parent) else Path(".")
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        if not folder.is_dir():
            return f"cannot open database {path}: folder {folder} does not exist"
        if not os.access(folder, os.W_OK):
            return (
                f"cannot use database {path}: its folder {folder} is not writable (SQLite keeps {path.name}-wal "
                f"and {path.name}-shm beside it, even to read)"
            )
        if path.exists() and not os.access(path, os.W_OK):
            return f"cannot use database {path}: the file is read-only (mailer writes to it, even to read: WAL)"
        return f"cannot open database {path}: {text}"
    if "not a database" in text:
        return f"{path} is not a mailer database ({text}); check --db / MAILER_DB"
    if "malformed" in text:
        return (
            f"database {path} is damaged ({text}); restore it from a backup, or try: "
            f"sqlite3 {path} .recover | sqlite3 recovered.db"
        )
    if "disk is full" in text or "database or disk is full" in text:
        return f"database {path}: the disk is full; free some space and run the command again"
    return f"database {path}: {text}"


_WRITE_FAILURES = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR}
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, re-entrant (an inner block joins the outer one). A disk that is full or failing
    ends as StoreWriteError with everything of the transaction rolled back."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF in _BUSY:
                    raise self._busy(exc) from None
                raise
            self.outer = True
        return self.conn

    def __exit__(self, exc_type: object, exc: BaseException | None, _: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as error:
                exc = error
        # SQLite may have rolled back already (it does for SQLITE_FULL and SQLITE_IOERR); a second ROLLBACK fails.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF in _WRITE_FAILURES:
            raise StoreWriteError(f"cannot write to database {self.path}: {exc}") from None
        if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF in _BUSY:
            raise self._busy(exc) from None
        if exc_type is None and exc is not None:
            raise exc

    def _busy(self, exc: sqlite3.OperationalError) -> StoreBusy:
        return StoreBusy(f"database {self.path} stayed locked by another process for 30 s ({exc})")


class Repository:
    """One kind of row of the database, on the store's shared connection and clock."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn
