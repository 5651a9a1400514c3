"""Database access: engine from settings, Alembic migrations, the shared JWT replay cache.

Embedded default (no ``DATABASE_URL``): a SQLite file ``DATA_DIR/vcf-cds.sqlite3`` in WAL
mode (readers never block the writer; concurrent writers wait up to ``busy_timeout``),
migrated to the newest schema when the app starts. Production: PostgreSQL through
``DATABASE_URL=postgresql+psycopg://user:password@host/db``; its schema is changed only
by ``vcf-cds db upgrade`` (a deployment step), never by a starting app.

The URL can hold a password: nothing here puts it in a message or a log.

Bounds on the request path (the app's database, :func:`open_database` without ``strict``):
every database step of a hook call, a feedback request or ``/readyz`` runs through
:meth:`Database.bounded`, on the request's own thread, and is ended once it has run
``DB_TIMEOUT_SECONDS`` (default 1 s): the caller gets :class:`DatabaseTimeout` and falls back
(replay check on this process only, audit record counted as not written, feedback 503 with
Retry-After). A step past its bound is aborted, not left to finish: its transaction is
rolled back, unless its commit had already reached the database. SQLite ends its own waits:
the bounded engine's ``busy_timeout`` is ``DB_TIMEOUT_SECONDS``. PostgreSQL: a watchdog
thread per process (:class:`_Watchdog`) shuts down the sockets of a database whose step
outlived its bound, so the blocked call raises in the request thread; a connection opened
within a step is given what is left of the bound. After a timeout the database is given
:data:`COOLDOWN_SECONDS` before it is tried again (calls fail fast meanwhile). PostgreSQL
connections also get a connect timeout, TCP keepalives, ``statement_timeout``
(``DB_STATEMENT_TIMEOUT_SECONDS``), ``lock_timeout`` (``DB_TIMEOUT_SECONDS``) and
``idle_in_transaction_session_timeout``. The request path's pool does not ping a connection
before lending it (a round trip per call): a step that finds its pooled connection lost (a
server restart) is run once more on a fresh one (:meth:`Database.bounded`); command-line tools
keep the ping. Command-line tools are not bounded; their SQLite waits :data:`SQLITE_BUSY_TIMEOUT_S` for
another writer's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
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
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from cds_service.extras import require
from cds_service.settings import Settings, SettingsError
from cds_service.store.tables import ReplayEntry

log = logging.getLogger("cds_service.store.db")

SQLITE_FILE = "vcf-cds.sqlite3"
# How long a SQLite writer of a command-line tool waits for another writer's lock (on the
# request path: DB_TIMEOUT_SECONDS).
SQLITE_BUSY_TIMEOUT_S = 5.0
# libpq's smallest connect timeout (it treats 1 as 2).
PG_CONNECT_TIMEOUT_S = 2
# TCP keepalive: a peer that vanished (host down, link cut) is noticed within about 20 s
# even on an idle pooled connection; TCP_USER_TIMEOUT does the same for unacknowledged data.
PG_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 5, "keepalives_count": 3,
                "tcp_user_timeout": 15_000}
PG_IDLE_IN_TRANSACTION_TIMEOUT_S = 30
COOLDOWN_SECONDS = 2.0
# How often the watchdog looks at the PostgreSQL steps in flight (or a quarter of the bound,
# when smaller): a step is ended at most this long after its bound.
WATCH_INTERVAL_S = 0.25
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

    SQLite: WAL journal, foreign keys on, ``busy_timeout`` ``lock_timeout`` seconds (default
    :data:`SQLITE_BUSY_TIMEOUT_S`): how long a write waits for another writer's lock before it
    fails with "database is locked". PostgreSQL: 2 s connect
    timeout, TCP keepalives (:data:`PG_KEEPALIVE`), and, when given (seconds),
    ``statement_timeout`` and ``lock_timeout`` on every connection plus
    ``idle_in_transaction_session_timeout``. Without ``statement_timeout`` (command-line
    tools) the pool pings a connection before lending it, which spares the first command after
    a server restart its failure; with it (the request path, whose steps run through
    :meth:`Database.bounded` and are retried once on a lost connection) it does not: the ping
    was a round trip on every call, about 0.1 ms of CPU here and as much in the server.
    """
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": lock_timeout or SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_pre_ping=statement_timeout is None, pool_timeout=PG_CONNECT_TIMEOUT_S,
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
        # Steps in flight: request thread id -> time.monotonic() at the step's start. Each
        # thread writes only its own entry, one dict operation at a time (atomic under the
        # GIL): no lock on the request path. Read by the watchdog.
        self._steps: dict[int, float] = {}
        self._second_tries: set[int] = set()  # threads running a step again after a lost connection
        self._cut_steps: set[float] = set()  # start times of the steps the watchdog cut (its own)
        # Every DB-API connection this engine opened, so a hung step can have its sockets cut.
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._watched = engine.dialect.name == "postgresql" and timeout is not None
        if engine.dialect.name == "postgresql":  # SQLite has no socket to cut (nor weak references)
            # First among the connect listeners: the SETs of make_engine can hang too.
            event.listen(engine, "connect", lambda dbapi_connection, _record: self._connections.add(dbapi_connection),
                         insert=True)
        if timeout is not None:
            _WATCHDOG.register(self)
            if self._watched:
                event.listen(engine, "do_connect", self._connect_within_bound)

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
        """``step(*args)`` on the calling thread, ended once it has run ``timeout`` seconds
        (unbounded: simply called).

        Common path: two plain dict writes around the call, no lock, no thread hand-off. The
        bound: SQLite's lock waits end by themselves (``busy_timeout`` = ``timeout``); on
        PostgreSQL the process's watchdog shuts down this engine's sockets once a step has
        run ``timeout`` seconds (noticed within :data:`WATCH_INTERVAL_S`, or a quarter of
        ``timeout``), so the blocked call fails, and a connection opened within the step gets
        only what is left of the bound. A step past its bound is aborted, not left to finish:
        its transaction is rolled back unless its commit had already reached the database
        (then the write lands: a late audit record is kept, a late feedback write is a
        duplicate of the client's retry, stored once). A nested call runs within the outer bound.
        A step that fails because its pooled connection was lost (the server restarted; the
        request path's pool does not ping before lending) runs once more on a fresh connection
        within the same bound (:meth:`second_try` tells it so).

        Raises what ``step`` raises, or :class:`DatabaseTimeout` when the step failed after
        running its bound (the database is then left alone for :data:`COOLDOWN_SECONDS`, and
        calls meanwhile raise it at once).
        """
        if self.timeout is None:
            return step(*args)
        started = time.monotonic()
        if started < self._retry_at:
            raise DatabaseTimeout(f"the {self.backend} database did not answer a moment ago")
        steps, me = self._steps, threading.get_ident()
        if me in steps:
            return step(*args)
        if self._watched and _WATCHDOG.thread is None:
            _WATCHDOG.start()
        steps[me] = started
        try:
            return self._run_reconnecting(step, args, started)
        except SQLAlchemyError as exc:
            if not isinstance(exc, DatabaseTimeout) and time.monotonic() - started < self.timeout:
                raise  # a refusal within the bound (constraint, read-only, connection refused)
            self._timed_out(started)
            raise DatabaseTimeout(f"the {self.backend} database did not answer within {self.timeout:g} s") from None
        finally:
            del steps[me]

    def _run_reconnecting(self, step: Callable[..., _T], args: tuple[Any, ...], started: float) -> _T:
        """``step(*args)``, run once more when it failed on a lost connection (the server
        restarted since the pool lent it) with time left in its bound and no cool-down on."""
        try:
            return step(*args)
        except DBAPIError as exc:
            now = time.monotonic()
            # A cut by the watchdog is a lost connection too: it comes late, or starts the cool-down.
            if not exc.connection_invalidated or now - started >= (self.timeout or 0) or now < self._retry_at:
                raise
        # SQLAlchemy has dropped that connection and those the pool lent before it.
        me = threading.get_ident()
        self._second_tries.add(me)
        try:
            return step(*args)
        finally:
            self._second_tries.discard(me)

    def second_try(self) -> bool:
        """Whether the calling thread's step is running again after its connection was lost
        (:meth:`bounded`): a write of the first try may then have landed (its commit reached
        the server before the answer was lost), so a unique key found taken may be its own."""
        return threading.get_ident() in self._second_tries

    def _timed_out(self, started: float) -> None:
        """Start the cool-down after a step that began at ``started`` ran out of its bound
        (logged once per cool-down)."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        self._retry_at = now + COOLDOWN_SECONDS
        log.error("the %s database did not answer within %g s (a step running for %.1f s); not tried again for %g s",
                  self.backend, self.timeout, now - started, COOLDOWN_SECONDS)

    def _end_late_steps(self, now: float) -> None:
        """The watchdog's look at this database at ``now``: once a step has run its bound,
        start the cool-down and cut every connection of the engine (the step blocked on one
        of them then fails; so does any other step using one, which only a threaded worker
        can have). Each late step is cut once."""
        timeout = self.timeout
        assert timeout is not None  # only bounded databases are watched
        running = set(self._steps.values())  # one C-level copy: safe against the request threads
        late = {started for started in running if now - started >= timeout} - self._cut_steps
        self._cut_steps = (self._cut_steps | late) & running
        if late:
            self._timed_out(min(late))
            self.cut_connections()

    def _connect_within_bound(self, dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        """``do_connect`` listener of a bounded PostgreSQL engine: within a step, connect on a
        helper thread and wait only for what is left of the step's bound (a connection cannot
        be cut before it exists, and libpq's connect timeout is 2 s at least); a connection
        that comes later is closed. Outside a step (start-up checks), SQLAlchemy connects as usual."""
        started = self._steps.get(threading.get_ident())
        if started is None or self.timeout is None:
            return None
        left = started + self.timeout - time.monotonic()
        if left <= 0:
            raise DatabaseTimeout(f"the {self.backend} database did not answer within {self.timeout:g} s")
        connected: Future[Any] = Future()

        def connect() -> None:
            try:
                connected.set_result(dialect.connect(*cargs, **cparams))
            except BaseException as exc:
                connected.set_exception(exc)

        threading.Thread(target=connect, name="db-connect", daemon=True).start()
        try:
            return connected.result(timeout=left)
        except FutureTimeout:
            connected.add_done_callback(_close_connection)
            raise DatabaseTimeout(f"the {self.backend} database did not answer within {self.timeout:g} s") from None

    @property
    def pending(self) -> int:
        """Database steps of this process running through :meth:`bounded` now."""
        return len(self._steps)

    def cut_connections(self) -> int:
        """Shut down the socket of every PostgreSQL connection of this engine (a blocked
        read then fails in the thread waiting on it, and the pool replaces the connection);
        returns how many. SQLite has no socket: its waits end with ``busy_timeout``."""
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
        # On a second try after a lost connection, a live entry may be the first try's own.
        return conn.execute(self._replay_upsert, replay_params(key, expires_at)).first() is not None or self.second_try()

    @cached_property
    def _replay_upsert(self) -> Any:
        return replay_upsert(self.insert)

    def insert(self, table: Any) -> Any:
        """A dialect INSERT for ``table`` (a Table or mapped class) offering
        ``on_conflict_do_nothing`` / ``on_conflict_do_update`` (SQLite >= 3.24, PostgreSQL)."""
        return (postgresql if self.backend == "postgresql" else sqlite).insert(table)

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement commits by itself: for a write that is one
        statement, which is atomic alone; it spares the BEGIN and COMMIT round trips of
        :meth:`transaction` (two of the four a PostgreSQL audit write took)."""
        with self._autocommit_engine.connect() as conn:
            yield conn

    @cached_property
    def _autocommit_engine(self) -> Engine:
        return self.engine.execution_options(isolation_level="AUTOCOMMIT")

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
        # Through an unbounded engine: a migration may wait out another process's lock for
        # SQLITE_BUSY_TIMEOUT_S, where a request's step gives up after DB_TIMEOUT_SECONDS.
        with Database.from_settings(settings) as migrating:
            migrating.upgrade()
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


def _close_connection(connected: Future[Any]) -> None:
    """Close a connection that arrived after its step had given up on it."""
    if connected.exception() is None:
        with contextlib.suppress(Exception):
            connected.result().close()


class _Watchdog:
    """The process's watch over bounded database steps: a daemon thread, started by the first
    PostgreSQL step (threads do not survive gunicorn's fork: after a fork the child starts
    its own), that looks at the steps in flight every :data:`WATCH_INTERVAL_S` (or a quarter
    of the smallest bound) and has a database whose step ran out of its bound cut its
    connections (:meth:`Database._end_late_steps`). It ends when no watched database is left.
    Its lock is never taken on the request path."""

    def __init__(self) -> None:
        self.databases: weakref.WeakSet[Database] = weakref.WeakSet()
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._after_fork)

    def register(self, database: Database) -> None:
        """Watch ``database`` (a bounded one) from now on, for as long as it lives."""
        with self._lock:
            self.databases.add(database)

    def start(self) -> None:
        """Start the thread unless it runs (idempotent, thread-safe)."""
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        interval = self._tick(None)
        while interval is not None:
            time.sleep(interval)
            interval = self._tick(time.monotonic())

    def _tick(self, now: float | None) -> float | None:
        """End the late steps at ``now`` (None: only look); return the seconds until the next
        look, or None (and the thread ends) when no database is watched. The databases are
        referenced only here, never over the sleep, so they can still be collected."""
        with self._lock:
            watched = [db for db in self.databases if db._watched]
            if not watched:
                self.thread = None
                return None
        if now is not None:
            for database in watched:
                database._end_late_steps(now)
        return min(WATCH_INTERVAL_S, *(db.timeout / 4 for db in watched if db.timeout is not None))

    def _after_fork(self) -> None:
        # The parent's threads are gone in the child, and so are their steps.
        self._lock = threading.Lock()
        self.thread = None
        for database in list(self.databases):
            database._steps.clear()
            database._cut_steps.clear()


_WATCHDOG = _Watchdog()
