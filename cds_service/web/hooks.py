"""HTTP endpoints (CDS Hooks 2.0 §Discovery, §Calling a CDS Service). No clinical logic.

Every error is a FHIR OperationOutcome (the CDS Hooks 3.0 ballot convention) with the
right status; nothing below this module knows about HTTP.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from cds_service.observability import bind_request_id, observe_outcome
from cds_service.pipeline import discovery, evaluate
from cds_service.protocol.errors import RequestError, operation_outcome
from cds_service.store.audit import record_outcome, record_rejection
from cds_service.web.explain import render_options
from cds_service.web.security import refuse_replay, take_pending_token
from cds_service.web.state import current_state

log = logging.getLogger("cds_service.web.hooks")
bp = Blueprint("cds", __name__)

_HTTP_ISSUE = {400: "invalid", 404: "not-found", 405: "not-supported", 413: "too-long", 415: "not-supported"}


def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as a compact JSON response."""
    return Response(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), status=status,
                    mimetype="application/json")


def error_response(status: int, code: str, diagnostic: str) -> Response:
    """An OperationOutcome response (``code``: FHIR IssueType, see :mod:`cds_service.protocol.errors`)."""
    return json_response(operation_outcome(status, code, diagnostic), status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_service_body(service_id: str) -> Any:
    """The decoded JSON body of a POST to service ``service_id``.

    Raises :class:`RequestError`: 404 unknown service; 400 body that cannot be read
    (malformed chunked encoding), is not JSON (NaN and Infinity included) or is nested too
    deeply for the decoder. Werkzeug raises 413 past
    ``MAX_CONTENT_LENGTH``.
    """
    if service_id not in current_state().knowledge.services:
        raise RequestError(404, "not-found", f"no CDS service with id '{service_id}'")
    try:
        raw = request.get_data(cache=False)
    except HTTPException:
        raise  # 413 past MAX_CONTENT_LENGTH
    except Exception as exc:
        # Only the client can make reading its body fail: malformed chunked framing (the WSGI
        # server's parse error) or a body cut short.
        raise RequestError(400, "structure", f"request body could not be read ({type(exc).__name__})") from None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise RequestError(400, "too-long", "request JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "structure", f"request body is not valid JSON ({type(exc).__name__})") from None


@bp.get("/cds-services")
def list_services() -> Response:
    return json_response(discovery(current_state().knowledge))


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    st = current_state()
    started = time.perf_counter()
    try:
        body = read_service_body(service_id)
    except RequestError as exc:
        return json_response(exc.to_operation_outcome(), exc.status)
    bind_request_id(body)
    try:
        outcome = evaluate(st.knowledge, st.schemas, body, service_id=service_id,
                           options=render_options(st), fhir_client=st.fhir_client,
                           **st.settings.request_limits)
    except RequestError as exc:
        log.info("service %s: %d %s", service_id, exc.status, exc.code)
        if not record_rejection(st.audit, service_id, body, exc, started, take_pending_token()):
            return refuse_replay()
        return json_response(exc.to_operation_outcome(), exc.status)
    observe_outcome(outcome)
    log.info("service %s: 200 in %.1f ms, %d cards, %d ratings", service_id,
             (time.perf_counter() - started) * 1000, len(outcome.rendered.response["cards"]),
             len(outcome.rendered.response.get("systemActions", ())))
    if not record_outcome(st.audit, service_id, outcome, started, take_pending_token()):
        return refuse_replay()
    return json_response(outcome.rendered.response)


@bp.app_errorhandler(HTTPException)
def httperror_response(exc: HTTPException) -> Response:
    status = exc.code or 500
    text = {404: "no such endpoint", 405: "method not allowed on this endpoint",
            413: "request body is larger than this service accepts"}.get(status, exc.name)
    resp = error_response(status, _HTTP_ISSUE.get(status, "processing"), text)
    valid_methods = getattr(exc, "valid_methods", None)
    if status == 405 and valid_methods:
        resp.headers["Allow"] = ", ".join(valid_methods)
    return resp


@bp.app_errorhandler(Exception)
def unexpected(exc: Exception) -> Response:
    # Never a stack trace to the client; the type only (no values, which may hold PHI) to the log.
    log.error("unhandled %s while serving %s %s", type(exc).__name__, request.method, request.path)
    return error_response(500, "exception", "internal error; the request was not evaluated")
