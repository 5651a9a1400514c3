"""Database access: engine from settings, Alembic migrations, the shared JWT replay cache.

Embedded default (no ``DATABASE_URL``): a SQLite file ``DATA_DIR/vcf-cds.sqlite3`` in WAL
mode (readers never block the writer; concurrent writers wait up to ``busy_timeout``),
migrated to the newest schema when the app starts. Production: PostgreSQL through
``DATABASE_URL=postgresql+psycopg://user:password@host/db``; its schema is changed only
by ``vcf-cds db upgrade`` (a deployment step), never by a starting app.

The URL can hold a password: nothing here puts it in a message or a log.

Bounds on the request path (the app's database, :func:`open_database` without ``strict``):
every database step of a hook call, a feedback request or ``/readyz`` runs through
:meth:`Database.bounded`, which stops waiting after ``DB_TIMEOUT_SECONDS`` (default 1 s) and
raises :class:`DatabaseTimeout`; the callers then fall back (replay check on this process
only, audit record counted as not written, feedback 503 with Retry-After). After a timeout
the database is given :data:`COOLDOWN_SECONDS` before it is tried again (calls fail fast
meanwhile), and a step still running :data:`CUT_AFTER_SECONDS` past its bound has its
connections shut down, so no thread stays stuck on a database that hangs. PostgreSQL
connections also get a connect timeout, TCP keepalives, ``statement_timeout``
(``DB_STATEMENT_TIMEOUT_SECONDS``), ``lock_timeout`` (``DB_TIMEOUT_SECONDS``) and
``idle_in_transaction_session_timeout``; the pool pings a connection before lending it.
SQLite waits :data:`SQLITE_BUSY_TIMEOUT_S` for another writer's lock.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, bindparam, create_engine, delete, event
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
# libpq's smallest connect timeout (it treats 1 as 2).
PG_CONNECT_TIMEOUT_S = 2
# TCP keepalive: a peer that vanished (host down, link cut) is noticed within about 20 s
# even on an idle pooled connection; TCP_USER_TIMEOUT does the same for unacknowledged data.
PG_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 5, "keepalives_count": 3,
                "tcp_user_timeout": 15_000}
PG_IDLE_IN_TRANSACTION_TIMEOUT_S = 30
COOLDOWN_SECONDS = 2.0
CUT_AFTER_SECONDS = 5.0
# Database steps waiting for a thread in one process; beyond it a step fails at once.
MAX_PENDING_STEPS = 64
# /readyz on the embedded database: not ready below this much free space in DATA_DIR.
MIN_FREE_BYTES = 1024 * 1024
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
_T = TypeVar("_T")


class DatabaseError(Exception):
    """The database cannot be used (unreachable, schema too old); the message says what to do."""


class DatabaseTimeout(SQLAlchemyError):
    """The database did not answer within ``DB_TIMEOUT_SECONDS`` (or did not, a moment ago:
    it is left alone for :data:`COOLDOWN_SECONDS`). A ``SQLAlchemyError``, so every caller
    that handles a database failure handles this one too."""


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


def make_engine(url: URL, *, statement_timeout: float | None = None, lock_timeout: float | None = None) -> Engine:
    """An engine for ``url`` with this service's connection settings.

    SQLite: WAL journal, foreign keys on, ``busy_timeout`` 5 s. PostgreSQL: 2 s connect
    timeout, TCP keepalives (:data:`PG_KEEPALIVE`), a ping before a pooled connection is lent
    (one round trip, well under a millisecond on a LAN; it spares the first call after a
    server restart its failure), and, when given (seconds), ``statement_timeout`` and
    ``lock_timeout`` on every connection plus ``idle_in_transaction_session_timeout``.
    """
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_timeout=PG_CONNECT_TIMEOUT_S,
                           connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S, **PG_KEEPALIVE})
    if statement_timeout is not None:
        settings = {"statement_timeout": statement_timeout, "lock_timeout": lock_timeout or statement_timeout,
                    "idle_in_transaction_session_timeout": PG_IDLE_IN_TRANSACTION_TIMEOUT_S}

        def set_timeouts(dbapi_connection: Any, _record: Any) -> None:
            # SET, not the URL's "options": that one may already carry the search_path.
            with dbapi_connection.cursor() as cur:
                for name, seconds in settings.items():
                    cur.execute(f"SET {name} = {int(seconds * 1000)}")
            dbapi_connection.commit()

        event.listen(engine, "connect", set_timeouts)
    return engine


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

    def __init__(self, engine: Engine, *, embedded: bool, timeout: float | None = None,
                 data_dir: Path | None = None) -> None:
        self.engine = engine
        self.embedded = embedded
        self.timeout = timeout
        self.data_dir = data_dir
        self._retry_at = 0.0
        self._pending = 0
        self._lock = threading.Lock()
        # Every DB-API connection this engine opened, so a hung step can have its sockets cut.
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        if engine.dialect.name == "postgresql":  # SQLite has no socket to cut (nor weak references)
            event.listen(engine, "connect", lambda dbapi_connection, _record: self._connections.add(dbapi_connection))

    @classmethod
    def from_settings(cls, settings: Settings, *, bounded: bool = False) -> Database:
        """Open the configured database (see module doc). Does not connect yet.

        ``bounded``: the request path's database: steps run through :meth:`bounded` stop
        waiting after ``DB_TIMEOUT_SECONDS``, and PostgreSQL statements and lock waits are
        limited server-side too. Command-line tools (migrations, purge, report) are not bounded.
        """
        url = database_url(settings)
        if not bounded:
            return cls(make_engine(url), embedded=settings.database_url is None)
        engine = make_engine(url, statement_timeout=settings.db_statement_timeout_seconds,
                             lock_timeout=settings.db_timeout_seconds)
        data_dir = Path(url.database).parent if url.get_backend_name() == "sqlite" and url.database else None
        return cls(engine, embedded=settings.database_url is None, timeout=settings.db_timeout_seconds,
                   data_dir=data_dir)

    def bounded(self, step: Callable[..., _T], *args: Any) -> _T:
        """``step(*args)``, waited on for at most ``timeout`` seconds (unbounded: called here).

        Runs on a thread of the process's database pool; past the bound the caller gets
        :class:`DatabaseTimeout` while the step may still finish (a late audit record still
        lands; a late feedback write is a duplicate of the client's retry, stored once).
        A step still running :data:`CUT_AFTER_SECONDS` later has every connection of this
        engine shut down under it. Raises what ``step`` raises, or :class:`DatabaseTimeout`
        (also at once during the cool-down after a timeout, or with too many steps pending).
        """
        if self.timeout is None:
            return step(*args)
        with self._lock:
            if time.monotonic() < self._retry_at:
                raise DatabaseTimeout(f"the {self.backend} database did not answer a moment ago")
            if self._pending >= MAX_PENDING_STEPS:
                raise DatabaseTimeout(f"{self._pending} database steps already waiting")
            self._pending += 1

        def run() -> _T:
            try:
                return step(*args)
            finally:
                with self._lock:
                    self._pending -= 1

        future = _db_pool().submit(contextvars.copy_context().run, run)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            with self._lock:
                self._retry_at = time.monotonic() + COOLDOWN_SECONDS
            if self.backend == "postgresql":  # SQLite's waits end by themselves (busy_timeout)
                timer = threading.Timer(CUT_AFTER_SECONDS, lambda: None if future.done() else self.cut_connections())
                timer.daemon = True
                timer.start()
            log.error("the %s database did not answer within %g s; not tried again for %g s", self.backend,
                      self.timeout, COOLDOWN_SECONDS)
            raise DatabaseTimeout(f"the {self.backend} database did not answer within {self.timeout:g} s") from None

    @property
    def pending(self) -> int:
        """Database steps of this process submitted through :meth:`bounded` and not finished
        (including those whose caller stopped waiting)."""
        with self._lock:
            return self._pending

    def cut_connections(self) -> int:
        """Shut down the socket of every PostgreSQL connection of this engine (a blocked
        read then fails, its thread ends, and the pool replaces the connection); returns how
        many. SQLite has no socket: its waits end with ``busy_timeout``."""
        cut = 0
        for connection in list(self._connections):
            fd = getattr(getattr(connection, "pgconn", None), "socket", -1)
            try:
                if fd is None or fd < 0:
                    continue
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
                cut += 1
            except Exception:  # a closed connection (psycopg raises on .socket) or fd: nothing to cut
                continue
        if cut:
            log.error("cut %d connection(s) to the %s database that did not answer", cut, self.backend)
        return cut

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
        """The ``/readyz`` check: raise :class:`DatabaseError` unless the database takes a
        write. A committed one-row write (the readiness row of the replay table, stored
        already expired), within the bound of :meth:`bounded`: a read-only database, a full
        disk or a database that hangs all fail it. For the embedded SQLite file, less than
        :data:`MIN_FREE_BYTES` free beside it fails it too (SQLite may still rewrite pages
        it holds on a full disk, and then fail the first call that needs a new one).
        """
        if self.data_dir is not None:
            try:
                free = shutil.disk_usage(self.data_dir).free
            except OSError as exc:
                raise DatabaseError(f"cannot check the free space of the data directory ({type(exc).__name__})") from None
            if free < MIN_FREE_BYTES:
                raise DatabaseError(f"the data directory has less than {MIN_FREE_BYTES} bytes free")
        try:
            self.bounded(self._probe_write)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"the {self.backend} database takes no write ({type(exc).__name__})") from None

    def _probe_write(self) -> None:
        table = ReplayEntry.__table__
        stmt = self.insert(table).values(key_hash=_key_hash("vcf-cds readiness probe"), expires_at=0.0)
        stmt = stmt.on_conflict_do_update(index_elements=[table.c.key_hash], set_={"expires_at": 0.0})
        with self.transaction() as conn:
            conn.execute(stmt)

    def check_schema(self) -> None:
        """Raise :class:`DatabaseError` unless the schema is at the newest revision."""
        current, head = self.revision(), head_revision()
        if current != head:
            raise DatabaseError(f"the {self.backend} database schema is at revision {current or 'none'}, "
                                f"this version needs {head}: run 'vcf-cds db upgrade'")

    def remember_token(self, conn: Connection, key: str, expires_at: float) -> bool:
        """Record token id ``key`` until ``expires_at`` (POSIX seconds) on ``conn``, inside the
        caller's transaction: one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` statement
        (RFC 7519 §4.1.7 "jti"), built and compiled once per database.

        Returns True when first seen (or seen before but expired: the old entry is replaced),
        False when a live entry exists (a replay). Atomic across processes and hosts: of two
        transactions recording the same key, the second waits for the first on the primary
        key and, once it commits, finds the live entry (False); if the first rolls back, the
        second records it. Raises ``sqlalchemy.exc.SQLAlchemyError`` when it cannot write.
        """
        return conn.execute(self._replay_upsert, replay_params(key, expires_at)).first() is not None

    @cached_property
    def _replay_upsert(self) -> Any:
        return replay_upsert(self.insert)

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
    database = Database.from_settings(settings, bounded=not strict)
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
        Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot be written, or
        :class:`DatabaseTimeout` when it does not answer within its bound: the app then falls back
        to a per-process cache (``replay.FallbackReplayCache``).
        """
        return self.db.bounded(self._remember, key, expires_at)

    def _remember(self, key: str, expires_at: float) -> bool:
        with self.db.transaction() as conn:
            return self.db.remember_token(conn, key, expires_at)

    def purge_expired(self, now: float | None = None) -> int:
        """Delete entries that expired before ``now`` (default: the current time); return how many."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            return conn.execute(delete(ReplayEntry).where(ReplayEntry.expires_at <= now)).rowcount


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def replay_upsert(dialect_insert: Callable[[Any], Any]) -> Any:
    """The statement recording a token id (``jwt_replay``), for ``dialect_insert`` (SQLite's or
    PostgreSQL's ``insert``): ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING key_hash``, a row
    back when the id is new or its old entry had expired, none for a live entry (a replay).
    Parameters: :func:`replay_params`."""
    table = ReplayEntry.__table__
    stmt = dialect_insert(table).values(key_hash=bindparam("key_hash"), expires_at=bindparam("expires_at"))
    # The row is replaced only when expired; a live row makes the statement a no-op.
    # RETURNING, not rowcount: psycopg reports no row count for INSERT ... ON CONFLICT.
    return stmt.on_conflict_do_update(index_elements=[table.c.key_hash], set_={"expires_at": stmt.excluded.expires_at},
                                      where=table.c.expires_at <= bindparam("now")).returning(table.c.key_hash)


def replay_params(key: str, expires_at: float) -> dict[str, Any]:
    """The parameters of :func:`replay_upsert` for token id ``key`` (issuer-namespaced) kept
    until ``expires_at`` (POSIX seconds)."""
    return {"key_hash": _key_hash(key), "expires_at": float(expires_at), "now": time.time()}


_DB_POOL: tuple[int, ThreadPoolExecutor] | None = None
_DB_POOL_LOCK = threading.Lock()


def _db_pool() -> ThreadPoolExecutor:
    """The process's database threads (threads do not survive gunicorn's fork: one pool per
    process, made on first use). Four: a sync worker runs one request at a time; the
    spare threads carry steps that outlived their bound."""
    global _DB_POOL
    with _DB_POOL_LOCK:
        if _DB_POOL is None or _DB_POOL[0] != os.getpid():
            _DB_POOL = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="db"))
        return _DB_POOL[1]
