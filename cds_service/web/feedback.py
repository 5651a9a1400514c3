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

import logging
from typing import Any

from flask import Blueprint, Response
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from cds_service.protocol.errors import RequestError, operation_outcome
from cds_service.protocol.feedback import FeedbackRequest
from cds_service.store.feedback import store_feedback
from cds_service.web.hooks import error_response, json_response, read_service_body
from cds_service.web.state import current_state

log = logging.getLogger("cds_service.web.feedback")
bp = Blueprint("cds_feedback", __name__)

RETRY_AFTER_S = 30


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
    st = current_state()
    try:
        body = read_service_body(service_id)
    except RequestError as exc:
        return json_response(exc.to_operation_outcome(), exc.status)
    try:
        parsed = FeedbackRequest.model_validate(body)
    except ValidationError as exc:
        return json_response(_validation_outcome(exc), 400)
    try:
        result = store_feedback(st.database, service_id, parsed.feedback)
    except SQLAlchemyError as exc:
        log.error("feedback for %s not stored (%s); client told to retry", service_id, type(exc).__name__)
        resp = error_response(503, "transient", "feedback could not be stored now; send it again later")
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp
    log.info("feedback for %s: %d received, %d stored, %d duplicates, %d flagged", service_id,
             result.received, result.stored, result.duplicates, result.flagged)
    return json_response({"received": result.received, "stored": result.stored, "duplicates": result.duplicates,
                  "flagged": result.flagged})
