"""Database tables (SQLAlchemy 2 ORM): the audit trail, card feedback and the JWT replay cache.

The schema is created and changed only by the Alembic migrations in
``cds_service/migrations/versions``; ``tests/test_db.py`` checks that the migrated
schema and these classes agree. Times are stored as naive UTC (SQLite has no time
zone type) and come back as timezone-aware UTC datetimes.

No column holds a patient identifier, a name or a token: the patient appears only as
an HMAC (``AuditCall.patient_hmac``, see :mod:`cds_service.store.audit`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# 64-bit ids on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator):
    """An aware datetime stored as naive UTC; read back with ``tzinfo=UTC``.

    Raises ValueError on a naive datetime, so local time can never be stored by mistake.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware (UTC) datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    # Named constraints, so later migrations can drop or alter them on every database.
    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class AuditCall(Base):
    """One call of a CDS service (CDS Hooks 2.0 §Calling a CDS Service) that reached evaluation.

    ``status`` is the HTTP status sent (200, or 400/412 for a rejected request, then
    ``issue_code`` is the OperationOutcome issue code and there are no orders or cards).
    ``latency_ms`` is the time to evaluate, in milliseconds, without the audit write.
    """

    __tablename__ = "audit_call"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    called_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    service_id: Mapped[str] = mapped_column(String(64))
    hook_instance: Mapped[str | None] = mapped_column(String(128), index=True)
    patient_hmac: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    issue_code: Mapped[str | None] = mapped_column(String(32))
    latency_ms: Mapped[float] = mapped_column(Float)
    knowledge_version: Mapped[str] = mapped_column(String(32))


class AuditOrder(Base):
    """One selected order of a call: its code, the ACR variant and rating, the PAMA rating.

    ``scenario`` is the variant choice status (selected, red-flag, missing, conflict,
    excluded, none) or None for an order outside the criteria; ``consult_id`` the
    ``pama-rating-consult-id`` sent with the rating (None when the order was not rated).
    ``evidence`` is what the "Why this advice?" page shows about the order: codes and where
    in the record they came from, never a name or a resource id (shape:
    :func:`cds_service.store.explanation.order_evidence`; None for rows written before migration 0002).
    """

    __tablename__ = "audit_order"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    call_id: Mapped[int] = mapped_column(BigId, ForeignKey("audit_call.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    code_system: Mapped[str | None] = mapped_column(String(128))
    code: Mapped[str | None] = mapped_column(String(64))
    procedure: Mapped[str | None] = mapped_column(String(64))
    variant: Mapped[str | None] = mapped_column(String(32))
    scenario: Mapped[str | None] = mapped_column(String(16))
    acr_category: Mapped[str | None] = mapped_column(String(8))
    provenance: Mapped[str | None] = mapped_column(String(16))
    pama_rating: Mapped[str | None] = mapped_column(String(24))
    consult_id: Mapped[str | None] = mapped_column(String(64))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AuditCard(Base):
    """One card sent: its uuid, kind (not-appropriate, red-flag, ...; render.py), indicator,
    summary and the uuids of its suggestions (a JSON list). ``order_position`` is the
    ``AuditOrder.position`` of the order the card is about; None for a card about the whole
    call (red flags) and for rows written before migration 0002."""

    __tablename__ = "audit_card"

    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    call_id: Mapped[int] = mapped_column(BigId, ForeignKey("audit_call.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    indicator: Mapped[str] = mapped_column(String(8))
    summary: Mapped[str] = mapped_column(String(160))
    suggestions: Mapped[list[str]] = mapped_column(JSON)
    order_position: Mapped[int | None] = mapped_column(Integer)


class Feedback(Base):
    """One CDS Hooks 2.0 §Feedback entry as received.

    ``dedup_key`` (unique) is a hash of the entry's content, so the same feedback sent
    twice is stored once. ``flag`` is None for feedback on a card this service issued,
    ``unknown-card`` when no such card was issued by ``service_id``, ``unknown-suggestion``
    when an accepted suggestion id is not one of the card's.
    """

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    service_id: Mapped[str] = mapped_column(String(64))
    card_uuid: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON)
    override_system: Mapped[str | None] = mapped_column(String(512))
    override_code: Mapped[str | None] = mapped_column(String(256))
    override_display: Mapped[str | None] = mapped_column(String(512))
    user_comment: Mapped[str | None] = mapped_column(Text)
    outcome_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    flag: Mapped[str | None] = mapped_column(String(32))


class ReplayEntry(Base):
    """A JWT ``jti`` already seen (RFC 7519 §4.1.7), until ``expires_at`` (POSIX seconds).

    ``key_hash`` is the SHA-256 hex of the issuer-namespaced token id, so keys of any
    length fit one fixed-size primary key.
    """

    __tablename__ = "jwt_replay"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
