"""Database access: engine from settings, Alembic migrations, the shared JWT replay cache.

Embedded default (no ``DATABASE_URL``): a SQLite file ``DATA_DIR/vcf-cds.sqlite3`` in WAL
mode (readers never block the writer; concurrent writers wait up to ``busy_timeout``),
migrated to the newest schema when the app starts. Production: PostgreSQL through
``DATABASE_URL=postgresql+psycopg://user:password@host/db``; its schema is changed only
by ``vcf-cds db upgrade`` (a deployment step), never by a starting app.

The URL can hold a password: nothing here puts it in a message or a log.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, delete, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from cds_service.extras import require
from cds_service.settings import Settings, SettingsError
from cds_service.store.tables import ReplayEntry

log = logging.getLogger("cds_service.store.db")

SQLITE_FILE = "vcf-cds.sqlite3"
# How long a SQLite writer waits for another writer's lock, and a PostgreSQL client for
# a connection, before the call fails (and the hook answers without its audit record).
SQLITE_BUSY_TIMEOUT_S = 5.0
PG_CONNECT_TIMEOUT_S = 3
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


class DatabaseError(Exception):
    """The database cannot be used (unreachable, schema too old); the message says what to do."""


def database_url(settings: Settings) -> URL:
    """The configured URL, or ``sqlite:///<DATA_DIR>/vcf-cds.sqlite3`` (creating DATA_DIR, 0700).

    Raises :class:`SettingsError` for a URL SQLAlchemy cannot parse or a backend other
    than SQLite or PostgreSQL; the message never repeats the URL (it may hold a password).
    Raises :class:`cds_service.extras.MissingExtraError` for PostgreSQL without the
    ``postgresql`` extra (psycopg) installed.
    """
    if settings.database_url is None:
        data_dir = ensure_data_dir(settings)
        return URL.create("sqlite", database=str(data_dir / SQLITE_FILE))
    try:
        url = make_url(settings.database_url.get_secret_value())
    except ArgumentError:
        raise SettingsError("setting VCF_CDS_DATABASE_URL: not a SQLAlchemy database URL") from None
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise SettingsError(f"setting VCF_CDS_DATABASE_URL: backend '{url.get_backend_name()}' is not "
                            f"supported (use {' or '.join(SUPPORTED_BACKENDS)})")
    if url.get_backend_name() == "postgresql":
        if url.get_driver_name() != "psycopg":
            raise SettingsError("setting VCF_CDS_DATABASE_URL: use the psycopg driver (postgresql+psycopg://...)")
        require("psycopg", extra="postgresql", feature="a PostgreSQL VCF_CDS_DATABASE_URL")
    return url


def ensure_data_dir(settings: Settings) -> Path:
    """Create ``DATA_DIR`` (mode 0700: it holds the audit key) if needed; return its absolute path.

    Raises :class:`SettingsError` when it cannot be created.
    """
    path = settings.data_dir.expanduser().resolve()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"setting VCF_CDS_DATA_DIR: cannot create {path}: {exc.strerror}") from None
    return path


def make_engine(url: URL) -> Engine:
    """An engine for ``url`` with this service's connection settings.

    SQLite: WAL journal, foreign keys on, ``busy_timeout`` 5 s. PostgreSQL: 3 s connect
    timeout; no liveness ping before each use (it would add a round trip to every hook):
    after a server restart the first write fails (one audit failure counted, or a 503 the
    client retries) and SQLAlchemy then replaces the whole pool.
    """
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL never corrupts the database and loses nothing when the process
    # dies; only the last commits before a power cut can be lost. It spares an fsync on
    # every audit write, which is on the hook's path.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("cds_service.store").joinpath("migrations")))
    return cfg


def head_revision() -> str:
    """The newest migration's revision id (what ``vcf-cds db upgrade`` brings a database to)."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # only if the package shipped without its migrations
        raise DatabaseError("no migrations found in cds_service/store/migrations")
    return head


class Database:
    """The service's database: an engine plus migration helpers.

    Attributes:
        engine: the SQLAlchemy engine (pooled; share one per process).
        embedded: True for the default SQLite file in DATA_DIR.
    """

    def __init__(self, engine: Engine, *, embedded: bool) -> None:
        self.engine = engine
        self.embedded = embedded

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Open the configured database (see module doc). Does not connect yet."""
        return cls(make_engine(database_url(settings)), embedded=settings.database_url is None)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def upgrade(self) -> None:
        """Migrate the schema to the newest revision (Alembic ``upgrade head``); idempotent.

        Raises :class:`DatabaseError` when the database cannot be reached or migrated.
        """
        cfg = _alembic_config()
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot migrate the {self.backend} database ({type(exc).__name__})") from None

    def revision(self) -> str | None:
        """The schema revision the database is at (None: never migrated).

        Raises :class:`DatabaseError` when the database cannot be reached.
        """
        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot reach the {self.backend} database ({type(exc).__name__})") from None

    def ping(self) -> None:
        """``SELECT 1``: raise :class:`DatabaseError` when the database does not answer
        (the ``/readyz`` check; quick, unlike :meth:`check_schema`)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot reach the {self.backend} database ({type(exc).__name__})") from None

    def check_schema(self) -> None:
        """Raise :class:`DatabaseError` unless the schema is at the newest revision."""
        current, head = self.revision(), head_revision()
        if current != head:
            raise DatabaseError(f"the {self.backend} database schema is at revision {current or 'none'}, "
                                f"this version needs {head}: run 'vcf-cds db upgrade'")

    def insert(self, table: Any) -> Any:
        """A dialect INSERT for ``table`` (a Table or mapped class) offering
        ``on_conflict_do_nothing`` / ``on_conflict_do_update`` (SQLite >= 3.24, PostgreSQL)."""
        return (postgresql if self.backend == "postgresql" else sqlite).insert(table)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside one transaction: committed on exit, rolled back on error."""
        with self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        """Close pooled connections (at shutdown, and in a child process after fork)."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()


def open_database(settings: Settings, *, strict: bool = False) -> Database:
    """The database at start-up: the embedded default is migrated to the newest schema
    (raising :class:`DatabaseError` if that fails); a configured ``DATABASE_URL`` is only
    checked. For the app (``strict=False``) a database that is down or behind is logged,
    not fatal, so hooks are still answered; command-line tools pass ``strict=True`` and
    get the :class:`DatabaseError`. No connection stays open: gunicorn forks after this.
    """
    database = Database.from_settings(settings)
    if database.embedded:
        database.upgrade()
    else:
        try:
            database.check_schema()
        except DatabaseError as exc:
            if strict:
                database.dispose()
                raise
            log.error("%s; audit records and feedback fail until it is fixed", exc)
    database.dispose()
    return database


class DatabaseReplayCache:
    """JWT ``jti`` replay cache shared by every worker through the database.

    Implements the ``ReplayCache`` protocol: :meth:`remember` records a token id until it
    expires and tells whether it was new, atomically across processes and hosts (one
    ``INSERT ... ON CONFLICT`` statement; RFC 7519 §4.1.7 "jti", RFC 7523 §3 item 7).
    """

    def __init__(self, database: Database) -> None:
        self.db = database

    def remember(self, key: str, expires_at: float) -> bool:
        """Record token id ``key`` (already namespaced by issuer) until ``expires_at`` (POSIX seconds).

        Returns True when first seen (or seen before but expired: the old entry is
        replaced), False when it was seen before and has not expired (a replay).
        Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot be written:
        the app then falls back to a per-process cache (``replay.FallbackReplayCache``).
        """
        table = ReplayEntry.__table__
        stmt = self.db.insert(table).values(key_hash=_key_hash(key), expires_at=float(expires_at))
        # The row is replaced only when expired; a live row makes the statement a no-op.
        stmt = stmt.on_conflict_do_update(index_elements=[table.c.key_hash],
                                          set_={"expires_at": stmt.excluded.expires_at},
                                          where=table.c.expires_at <= time.time())
        # RETURNING, not rowcount: psycopg reports no row count for INSERT ... ON CONFLICT.
        with self.db.transaction() as conn:
            return conn.execute(stmt.returning(table.c.key_hash)).first() is not None

    def purge_expired(self, now: float | None = None) -> int:
        """Delete entries that expired before ``now`` (default: the current time); return how many."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            return conn.execute(delete(ReplayEntry).where(ReplayEntry.expires_at <= now)).rowcount


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
