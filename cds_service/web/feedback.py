"""``POST /cds-services/{id}/feedback`` (CDS Hooks 2.0 §Feedback): what clinicians did with cards.

Body: ``{"feedback": [{"card": uuid, "outcome": "accepted"|"overridden",
"acceptedSuggestions": [{"id": uuid}], "overrideReason": {"reason": Coding,
"userComment": str}, "outcomeTimestamp": RFC 3339 date-time}]}``.

Answers: 200 ``{"received", "stored", "duplicates", "flagged"}`` (counts); 400
OperationOutcome naming the first invalid member (the whole request is refused, nothing
stored); 404 unknown service; 503 OperationOutcome with ``Retry-After`` when the database
cannot store it, so the client retries instead of losing the feedback.

The same entry sent twice is stored once (``feedback.dedup_key``). Feedback on a card this
service never issued, or accepting a suggestion the card did not carry, is stored and
flagged (``unknown-card`` / ``unknown-suggestion``) rather than refused: the client's
record of what the clinician did is kept, and the report counts it apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from flask import Blueprint, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from cds_service.web.hooks import cds_state, error_response, json_response, read_service_body
from cds_service.store.db import Database
from cds_service.protocol.errors import RequestError, operation_outcome
from cds_service.store.tables import AuditCall, AuditCard, Feedback

log = logging.getLogger("cds_service.web.feedback")
bp = Blueprint("cds_feedback", __name__)

RETRY_AFTER_S = 30
MAX_ENTRIES = 1000
FLAG_UNKNOWN_CARD = "unknown-card"
FLAG_UNKNOWN_SUGGESTION = "unknown-suggestion"
_UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# RFC 3339 §5.6 date-time: the offset is required ("Z" or +hh:mm); T and Z may be lower case.
_RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"

Uuid = Annotated[str, StringConstraints(pattern=_UUID_PATTERN)]


def _text(limit: int) -> Any:
    return Annotated[str, StringConstraints(min_length=1, max_length=limit)]


class _Wire(BaseModel):
    # Unknown members (including ``extension``) are allowed and ignored, as the spec asks.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class FeedbackCoding(_Wire):
    """CDS Hooks 2.0 Coding (§Data Types): ``system`` and ``code`` required."""

    system: _text(512)
    code: _text(256)
    display: _text(512) | None = None


class OverrideReason(_Wire):
    """§Feedback OverrideReason: the reason chosen from the card's list and/or a comment."""

    reason: FeedbackCoding | None = None
    userComment: _text(4000) | None = None


class AcceptedSuggestion(_Wire):
    """§Feedback AcceptedSuggestion: ``id`` is the accepted suggestion's uuid."""

    id: Uuid


class FeedbackEntry(_Wire):
    """One §Feedback entry. Rules beyond the types: ``acceptedSuggestions`` (non-empty) is
    required with ``accepted`` and not allowed with ``overridden``; ``overrideReason`` only
    with ``overridden``; ``outcomeTimestamp`` an RFC 3339 date-time with offset."""

    card: Uuid
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: Annotated[str, StringConstraints(pattern=_RFC3339_PATTERN)]

    @field_validator("outcomeTimestamp")
    @classmethod
    def _real_instant(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value.upper())
        except ValueError:
            raise ValueError("not a valid date-time (RFC 3339, e.g. 2021-12-11T10:05:31Z)") from None
        return value

    @model_validator(mode="after")
    def _outcome_rules(self) -> FeedbackEntry:
        if self.outcome == "accepted":
            if not self.acceptedSuggestions:
                raise ValueError("acceptedSuggestions (at least one {\"id\": ...}) is required when outcome is accepted")
            if self.overrideReason is not None:
                raise ValueError("overrideReason is only sent with outcome overridden")
        elif self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only sent with outcome accepted")
        return self

    @property
    def outcome_at(self) -> datetime:
        """``outcomeTimestamp`` as an aware UTC datetime."""
        return datetime.fromisoformat(self.outcomeTimestamp.upper()).astimezone(timezone.utc)


class FeedbackRequest(_Wire):
    """The §Feedback request body: ``{"feedback": [FeedbackEntry, ...]}`` (at least one)."""

    feedback: list[FeedbackEntry] = Field(min_length=1, max_length=MAX_ENTRIES)


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
    cannot be read or written (nothing of the request is then stored).
    """
    now = now or datetime.now(timezone.utc)
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


def _validation_outcome(exc: ValidationError) -> dict[str, Any]:
    """The first problem as an OperationOutcome naming its place (``feedback[0].outcome``);
    pydantic's messages never quote the input here (``include_input=False``)."""
    err = exc.errors(include_input=False)[0]
    where = ""
    for part in err["loc"]:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    where = where or "request body"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "string_pattern_mismatch":
        message = "must be an RFC 3339 date-time with offset" if where.endswith("Timestamp") else "must be a UUID"
    elif err["type"] in ("model_type", "dict_type"):
        message = "must be a JSON object"
    code = "required" if err["type"] == "missing" or "is required" in message else "invalid"
    return operation_outcome(400, code, f"{where}: {message}", [where])


@bp.post("/cds-services/<service_id>/feedback")
def post_feedback(service_id: str) -> Response:
    st = cds_state()
    try:
        body = read_service_body(service_id)
    except RequestError as exc:
        return json_response(exc.to_operation_outcome(), exc.status)
    try:
        parsed = FeedbackRequest.model_validate(body)
    except ValidationError as exc:
        return json_response(_validation_outcome(exc), 400)
    try:
        result = store_feedback(st["db"], service_id, parsed.feedback)
    except SQLAlchemyError as exc:
        log.error("feedback for %s not stored (%s); client told to retry", service_id, type(exc).__name__)
        resp = error_response(503, "transient", "feedback could not be stored now; send it again later")
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp
    log.info("feedback for %s: %d received, %d stored, %d duplicates, %d flagged", service_id,
             result.received, result.stored, result.duplicates, result.flagged)
    return json_response({"received": result.received, "stored": result.stored, "duplicates": result.duplicates,
                  "flagged": result.flagged})
