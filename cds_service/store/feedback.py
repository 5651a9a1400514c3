"""Stored CDS Hooks 2.0 §Feedback: what clinicians did with the cards.

The same entry sent twice is stored once (``feedback.dedup_key``). Feedback on a card this
service never issued, or accepting a suggestion the card did not carry, is stored and
flagged (``unknown-card`` / ``unknown-suggestion``) rather than refused: the client's
record of what the clinician did is kept, and the report counts it apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from cds_service.protocol.feedback import FeedbackEntry
from cds_service.store.db import Database
from cds_service.store.tables import AuditCall, AuditCard, Feedback

__all__ = ["FLAG_UNKNOWN_CARD", "FLAG_UNKNOWN_SUGGESTION", "StoreResult", "store_feedback"]

FLAG_UNKNOWN_CARD = "unknown-card"
FLAG_UNKNOWN_SUGGESTION = "unknown-suggestion"


@dataclass(frozen=True)
class StoreResult:
    """Counts of one feedback request: entries received, newly stored, already stored
    (duplicates), and flagged among the newly stored."""

    received: int
    stored: int
    duplicates: int
    flagged: int


def _row(service_id: str, entry: FeedbackEntry, known: dict[str, set[str]], now: datetime) -> dict[str, Any]:
    card = entry.card.lower()
    accepted = [s.id.lower() for s in entry.acceptedSuggestions or ()]
    reason = entry.overrideReason.reason if entry.overrideReason else None
    comment = entry.overrideReason.userComment if entry.overrideReason else None
    outcome_at = entry.outcome_at
    content = {"service": service_id, "card": card, "outcome": entry.outcome, "accepted": sorted(accepted),
               "reason": reason.model_dump() if reason else None, "comment": comment,
               "at": outcome_at.isoformat()}
    flag = None
    if card not in known:
        flag = FLAG_UNKNOWN_CARD
    elif not set(accepted) <= known[card]:
        flag = FLAG_UNKNOWN_SUGGESTION
    return {
        "dedup_key": hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest(),
        "service_id": service_id, "card_uuid": card, "outcome": entry.outcome, "accepted_suggestions": accepted,
        "override_system": reason.system if reason else None, "override_code": reason.code if reason else None,
        "override_display": reason.display if reason else None, "user_comment": comment,
        "outcome_at": outcome_at, "received_at": now, "flag": flag,
    }


def store_feedback(db: Database, service_id: str, entries: list[FeedbackEntry],
                   now: datetime | None = None) -> StoreResult:
    """Store validated feedback entries for ``service_id`` in one transaction.

    An entry whose content was stored before (same card, outcome, suggestions, reason,
    comment and instant) is skipped, also when two requests race: the unique
    ``dedup_key`` decides. Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database
    cannot be read or written (nothing of the request is then stored), and its subclass
    :class:`cds_service.store.db.DatabaseTimeout` when it does not answer within
    ``DB_TIMEOUT_SECONDS`` (the write is aborted, and lands only if its commit had reached the
    database: the client's retry is then a duplicate, stored once).
    """
    return db.bounded(_store, db, service_id, entries, now or datetime.now(UTC))


def _store(db: Database, service_id: str, entries: list[FeedbackEntry], now: datetime) -> StoreResult:
    cards = sorted({e.card.lower() for e in entries})
    # Read outside the write transaction, which then only inserts: it stays short, and a
    # SQLite transaction never has to upgrade a read lock (that fails at once when busy).
    with db.engine.connect() as conn:
        issued = conn.execute(
            select(AuditCard.uuid, AuditCard.suggestions).join(AuditCall, AuditCall.id == AuditCard.call_id)
            .where(AuditCard.uuid.in_(cards), AuditCall.service_id == service_id)).all()
    known = {uuid: set(suggestions or ()) for uuid, suggestions in issued}
    rows = [_row(service_id, e, known, now) for e in entries]
    stored = flagged = 0
    with db.transaction() as conn:
        for row in rows:
            stmt = db.insert(Feedback).values(**row).on_conflict_do_nothing(index_elements=["dedup_key"])
            if conn.execute(stmt.returning(Feedback.id)).first() is not None:
                stored += 1
                flagged += row["flag"] is not None
    return StoreResult(len(rows), stored, len(rows) - stored, flagged)
