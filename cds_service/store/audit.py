"""Audit trail of service calls: what the service said, for whom (as a keyed hash), how fast.

One record per call that reached evaluation (CDS Hooks 2.0 §Calling a CDS Service):
time, service id, hookInstance, latency, knowledge version, HTTP status; for each selected
order its code, ACR variant, rating, PAMA consult id and the evidence its "Why this
advice?" page shows (:func:`cds_service.store.explanation.order_evidence`); for each card its
uuid, kind, indicator, summary, suggestion uuids and the order it is about. The patient id is stored only as
HMAC-SHA256(key, fhirServer + newline + patientId); no names, no tokens, no resources.

The hook must not fail or wait on the database: :func:`record_outcome` and
:func:`record_rejection` never raise and wait at most ``DB_TIMEOUT_SECONDS`` for the write
(:meth:`cds_service.store.db.Database.bounded`; a write that outlives the bound is aborted,
and lands only if its commit had reached the database); a failed or late write is counted in the trail's :class:`FailureCounter` (and the
``vcf_cds_audit_write_failures_total`` metric) and logged without patient data.

With client authentication on, the call's ``jti`` replay entry is written in the same
transaction as its audit record (one database step per call, see :func:`write_record`): a
``jti`` another process recorded first makes the call a 401 and leaves no record; a call
refused with 400/412 consumes its ``jti`` too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, bindparam, column, delete, exists, func, insert, select, true
from sqlalchemy.dialects import postgresql

from cds_service.decision.knowledge import Knowledge
from cds_service.decision.outcome import Outcome
from cds_service.observability import count_audit_write_failure
from cds_service.protocol.errors import RequestError
from cds_service.security.replay import PendingToken
from cds_service.settings import Settings, SettingsError
from cds_service.store.db import Database, DatabaseReplayCache, ensure_data_dir, replay_params, replay_upsert
from cds_service.store.explanation import order_evidence
from cds_service.store.tables import AuditCall, AuditCard, AuditOrder, Base, Feedback, ReplayEntry

log = logging.getLogger("cds_service.store.audit")

KEY_FILE = "audit-hmac.key"
_HOOK_INSTANCE_MAX = 128
_SUMMARY_MAX = 160  # audit_card.summary (CDS Hooks keeps a summary under 140 characters)


def load_hmac_key(settings: Settings) -> bytes:
    """The secret keying patient id hashes.

    ``AUDIT_HMAC_KEY`` when set. Otherwise, for the embedded default database only, a
    random 256-bit key generated once into ``DATA_DIR/audit-hmac.key`` (mode 0600) and
    reused: hashes stay comparable across restarts. With ``DATABASE_URL`` set the key
    must be configured, so every host hashes the same patient alike.

    Raises :class:`SettingsError` when the key is required but missing, or the key file
    is unreadable or readable by group or others.
    """
    if settings.audit_hmac_key:
        return settings.audit_hmac_key.get_secret_value().encode("utf-8")
    if settings.database_url is not None:
        raise SettingsError("setting VCF_CDS_AUDIT_HMAC_KEY: required when VCF_CDS_DATABASE_URL is set "
                            "(at least 32 characters, the same on every host)")
    return _key_file(ensure_data_dir(settings) / KEY_FILE)


def _key_file(path: Path) -> bytes:
    if not path.exists():
        # Written to a private temporary file and linked into place, so a process
        # starting at the same moment never reads half a key, and the first writer wins.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    try:
        if path.stat().st_mode & 0o077:
            raise SettingsError(f"audit key file {path} is readable by group or others: chmod 600 it")
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"audit key file {path}: cannot read ({type(exc).__name__})") from None
    if len(key) < 32:
        raise SettingsError(f"audit key file {path}: shorter than 32 characters")
    return key.encode("ascii")


def patient_hash(key: bytes, fhir_server: str | None, patient_id: str) -> str:
    """HMAC-SHA256 hex of the patient: ids are only unique per FHIR server, so both count."""
    # surrogatepass: an id holding a lone surrogate (sent escaped) is hashed as sent, not refused.
    message = f"{fhir_server or ''}\n{patient_id}".encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class CallRecord:
    """Rows of one call, ready to insert: ``call`` (audit_call columns), ``orders`` and
    ``cards`` (audit_order / audit_card columns without ``call_id``)."""

    call: dict[str, Any]
    orders: list[dict[str, Any]] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)


def build_record(outcome: Outcome, *, service_id: str, latency_ms: float, knowledge_version: str,
                 key: bytes, at: datetime | None = None, knowledge: Knowledge | None = None) -> CallRecord:
    """The audit rows of a successful evaluation (HTTP 200). ``at`` defaults to now (UTC).
    With ``knowledge``, each order also keeps the evidence its "Why this advice?" page shows."""
    req, response = outcome.envelope, outcome.rendered.response
    orders = []
    for position, od in enumerate(outcome.decision.orders):
        coding = od.order_class.coding or _first_coding(od.raw)
        rating = od.rating
        orders.append({
            "position": position,
            "code_system": _clip(coding.get("system"), 128),
            "code": _clip(coding.get("code"), 64),
            "procedure": od.order_class.procedure.id if od.order_class.procedure else None,
            "variant": od.variant.id if od.variant else None,
            "scenario": od.choice.status if od.choice else None,
            "acr_category": rating.category if rating else None,
            "provenance": rating.provenance if rating else None,
            "pama_rating": od.pama,
            "consult_id": outcome.rendered.consult_ids.get(position),
            "evidence": order_evidence(knowledge, od) if knowledge is not None else None,
        })
    cards = [{"uuid": c["uuid"], "kind": outcome.rendered.card_kinds.get(c["uuid"], "unknown"),
              "indicator": c["indicator"], "summary": _clip(c["summary"], _SUMMARY_MAX),
              "suggestions": [s["uuid"] for s in c.get("suggestions", ()) if s.get("uuid")],
              "order_position": outcome.rendered.card_orders.get(c["uuid"])}
             for c in response["cards"]]
    call = _call_row(service_id, req.hook_instance, 200, None, latency_ms, knowledge_version, at)
    call["patient_hmac"] = patient_hash(key, req.fhir_server, req.patient_id)
    return CallRecord(call, orders, cards)


def _call_row(service_id: str, hook_instance: Any, status: int, issue_code: str | None,
              latency_ms: float, knowledge_version: str, at: datetime | None) -> dict[str, Any]:
    return {"called_at": at or datetime.now(UTC), "service_id": service_id,
            "hook_instance": _clip(hook_instance, _HOOK_INSTANCE_MAX), "patient_hmac": None,
            "status": status, "issue_code": issue_code, "latency_ms": round(latency_ms, 3),
            "knowledge_version": knowledge_version}


def _first_coding(raw: Mapping) -> Mapping:
    code = raw.get("code")
    if not isinstance(code, Mapping):
        code = {}
    return next((c for c in code.get("coding") or () if isinstance(c, dict)), {})


def _clip(value: Any, limit: int) -> str | None:
    # U+0000 and lone surrogates (a request may escape one, "\ud800") replaced: neither
    # database's text can hold them, and the record must be written anyway.
    if not isinstance(value, str):
        return None
    value = value[:limit].replace("\x00", "\ufffd")
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")


class TokenReplayed(Exception):
    """The call's ``jti`` is already recorded and live: a replay. Nothing of the call was written."""


# Built once: SQLAlchemy compiles each once per dialect and reuses it (its compiled cache).
_TABLES = Base.metadata.tables
_INSERT_CALL = insert(_TABLES[AuditCall.__tablename__])
_INSERT_ORDER = insert(_TABLES[AuditOrder.__tablename__])
_INSERT_CARD = insert(_TABLES[AuditCard.__tablename__])


def write_record(db: Database, record: CallRecord | None, token: tuple[str, float] | None = None) -> int | None:
    """Insert one call with its orders and cards, and the replay entry of the call's ``jti``
    (``token``: issuer-namespaced key, POSIX seconds to keep it), in one transaction. Returns
    the call id (None without ``record``: the replay entry alone).

    The replay entry comes first (:func:`cds_service.store.db.replay_upsert`): a replay raises
    :class:`TokenReplayed` and nothing of the call is written, so a refused call leaves no
    audit record; two calls racing with one ``jti`` are ordered by its primary key and the
    second one is refused. Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot
    be written (then nothing was written: neither the record nor the replay entry).

    PostgreSQL: one statement (:func:`_pg_write_statement`) on an autocommit connection
    (one round trip). SQLite, which has no data-modifying WITH: one transaction, one statement
    per table (orders and cards: one executemany each). On a second try after a lost
    connection (:meth:`cds_service.store.db.Database.second_try`) a ``jti`` found recorded is
    taken as the first try's, which landed: None is returned and nothing more is written.
    """
    if record is not None and db.backend == "postgresql":
        params = {**record.call, _ORDER_ROWS: record.orders, _CARD_ROWS: record.cards}
        if token is not None:
            params.update(replay_params(*token))
        with db.autocommit() as conn:  # one statement: atomic alone, no BEGIN / COMMIT round trips
            call_id = conn.execute(_pg_write_statement(token is not None), params).scalar()
        if call_id is None:
            if db.second_try():
                return None  # the first try's write landed before its connection was lost
            raise TokenReplayed
        return int(call_id)
    with db.transaction() as conn:
        if token is not None and not db.remember_token(conn, *token):
            raise TokenReplayed
        if record is None:
            return None
        inserted = conn.execute(_INSERT_CALL, record.call).inserted_primary_key
        assert inserted is not None  # a single-row INSERT always has one
        call_id = inserted[0]
        if record.orders:
            conn.execute(_INSERT_ORDER, [{**o, "call_id": call_id} for o in record.orders])
        if record.cards:
            conn.execute(_INSERT_CARD, [{**c, "call_id": call_id} for c in record.cards])
    return call_id


_ORDER_ROWS, _CARD_ROWS = "order_rows", "card_rows"


@functools.cache
def _pg_write_statement(with_token: bool) -> Any:
    """The PostgreSQL statement writing a whole :class:`CallRecord` (one round trip, compiled
    once), with data-modifying WITH queries::

        WITH fresh_token AS (INSERT INTO jwt_replay ... ON CONFLICT ... RETURNING key_hash),
             new_call AS (INSERT INTO audit_call SELECT <call> WHERE EXISTS (SELECT FROM fresh_token) RETURNING id),
             new_orders AS (INSERT INTO audit_order SELECT new_call.id, r.* FROM new_call, json_to_recordset(<orders>) r),
             new_cards AS (INSERT INTO audit_card ...)
        SELECT id FROM new_call

    No row back: the token was a replay and nothing was written. ``with_token=False``: no
    replay entry (client authentication off). Parameters: the call's columns,
    :func:`cds_service.store.db.replay_params`, and the orders and cards as JSON lists.
    """
    call_table = _TABLES[AuditCall.__tablename__]
    columns = [c for c in call_table.c if c.name != "id"]
    source = select(*[bindparam(c.name, type_=c.type) for c in columns])
    if with_token:
        fresh = replay_upsert(postgresql.insert).cte("fresh_token")
        source = source.where(exists(select(fresh.c.key_hash)))
    new_call = insert(call_table).from_select([c.name for c in columns], source).returning(call_table.c.id).cte("new_call")
    children = []
    for table, param in ((_TABLES[AuditOrder.__tablename__], _ORDER_ROWS), (_TABLES[AuditCard.__tablename__], _CARD_ROWS)):
        kept = [c for c in table.c if c.name not in ("id", "call_id")]
        rows = (func.json_to_recordset(bindparam(param, type_=JSON)).table_valued(*[column(c.name, c.type) for c in kept])
                .render_derived(name=param, with_types=True))
        rows_with_call = select(new_call.c.id, *[rows.c[c.name] for c in kept]).select_from(new_call).join(rows, true())
        children.append(insert(table).from_select(["call_id", *[c.name for c in kept]], rows_with_call).cte(f"new_{param}"))
    return select(new_call.c.id).add_cte(*children)


class FailureCounter:
    """How many audit records could not be written since start-up (this process); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    @property
    def value(self) -> int:
        """The count so far."""
        return self._value

    def increment(self) -> int:
        """Add one; return the new count."""
        with self._lock:
            self._value += 1
            return self._value


@dataclass(frozen=True, eq=False)
class AuditTrail:
    """Where the hook's audit records go: what :func:`record_outcome` and
    :func:`record_rejection` need (built once by ``create_app``).

    Attributes:
        database: the audit database.
        key: the secret keying patient id hashes (:func:`load_hmac_key`).
        knowledge: the loaded knowledge (its version is recorded; the evidence of each order
            is read from it).
        failures: failed writes so far.
    """

    database: Database
    key: bytes
    knowledge: Knowledge
    failures: FailureCounter = field(default_factory=FailureCounter)


def record_outcome(trail: AuditTrail, service_id: str, outcome: Outcome, started: float,
                   token: PendingToken | None = None) -> bool:
    """Write the audit record of an answered call (``started``: ``time.perf_counter()`` at
    request start), with the shared replay entry of its ``jti`` (``token``, when client
    authentication left it pending) in the same transaction (:func:`write_record`): one
    database step of at most ``DB_TIMEOUT_SECONDS`` per call.

    Returns False when the ``jti`` turns out to be a replay (another process or host recorded
    it first): the caller answers 401 and nothing of the call is kept. Never raises: a failed
    write is counted and logged (see module doc); the token then counts as not replayed,
    having been checked in this process (``security.replay.FallbackReplayCache``).
    """
    latency_ms = (time.perf_counter() - started) * 1000
    try:
        record: CallRecord | None = build_record(
            outcome, service_id=service_id, latency_ms=latency_ms, knowledge_version=trail.knowledge.version,
            key=trail.key, knowledge=trail.knowledge)
    except Exception as exc:  # a bug: the jti is still recorded
        _count_failure(trail, service_id, exc)
        record = None
    return _write(trail, service_id, record, token)


def record_rejection(trail: AuditTrail, service_id: str, body: Any, error: RequestError,
                     started: float, token: PendingToken | None = None) -> bool:
    """Write the audit record of a call refused with ``error`` (400/412): status, issue
    code and hookInstance when the body has one; no patient hash. The refused call consumes
    its ``jti`` all the same (``token``, as in :func:`record_outcome`). Returns False when the
    ``jti`` is a replay (the caller answers 401 instead). Never raises."""
    latency_ms = (time.perf_counter() - started) * 1000
    hook_instance = body.get("hookInstance") if isinstance(body, Mapping) else None
    call = _call_row(service_id, hook_instance, error.status, error.code, latency_ms, trail.knowledge.version, None)
    return _write(trail, service_id, CallRecord(call), token)


def _write(trail: AuditTrail, service_id: str, record: CallRecord | None, token: PendingToken | None) -> bool:
    if record is None and token is None:
        return True
    try:
        trail.database.bounded(write_record, trail.database, record,
                               (token.key, token.expires_at) if token is not None else None)
    except TokenReplayed:
        return False
    except Exception as exc:
        if record is not None:
            _count_failure(trail, service_id, exc)
        if token is not None:
            token.cache.shared_unavailable(exc)
    return True


def _count_failure(trail: AuditTrail, service_id: str, exc: Exception) -> None:
    failures = trail.failures.increment()
    count_audit_write_failure()
    # The exception type only: database messages repeat the statement's parameters.
    log.error("audit record of a %s call not written (%s); %d failures so far", service_id,
              type(exc).__name__, failures)


@dataclass(frozen=True)
class PurgeResult:
    """What :func:`purge` deleted (or, for a dry run, would delete): audit calls (with their
    orders and cards), feedback entries, expired JWT replay entries."""

    calls: int
    feedback: int
    replay_entries: int


def purge(db: Database, before: datetime, *, dry_run: bool = False, batch: int = 2000) -> PurgeResult:
    """Delete audit records of calls made before ``before`` and feedback received before it,
    plus JWT replay entries already expired (the retention rule, ``AUDIT_RETENTION_DAYS``).

    Calls go in batches of ``batch``, one short transaction each, so hooks writing their
    audit records meanwhile wait at most one batch. Raises ``SQLAlchemyError`` on failure
    (batches already committed stay deleted; running it again finishes the job).
    """
    now = time.time()
    if dry_run:
        with db.engine.connect() as conn:
            count = lambda stmt: conn.execute(stmt).scalar_one()  # noqa: E731
            return PurgeResult(
                count(select(func.count()).select_from(AuditCall).where(AuditCall.called_at < before)),
                count(select(func.count()).select_from(Feedback).where(Feedback.received_at < before)),
                count(select(func.count()).select_from(ReplayEntry).where(ReplayEntry.expires_at <= now)))
    calls = 0
    while True:
        with db.transaction() as conn:
            ids = conn.execute(select(AuditCall.id).where(AuditCall.called_at < before)
                               .order_by(AuditCall.id).limit(batch)).scalars().all()
            if not ids:
                break
            # Children first: the foreign keys cascade too, but not every SQLite connection has them on.
            conn.execute(delete(AuditOrder).where(AuditOrder.call_id.in_(ids)))
            conn.execute(delete(AuditCard).where(AuditCard.call_id.in_(ids)))
            calls += conn.execute(delete(AuditCall).where(AuditCall.id.in_(ids))).rowcount
    with db.transaction() as conn:
        feedback = conn.execute(delete(Feedback).where(Feedback.received_at < before)).rowcount
    return PurgeResult(calls, feedback, DatabaseReplayCache(db).purge_expired(now))
