"""HTTP endpoints (CDS Hooks 2.0 §Discovery, §Calling a CDS Service). No clinical logic.

Every error is a FHIR OperationOutcome (the CDS Hooks 3.0 ballot convention) with the
right status; nothing below this module knows about HTTP.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

from .audit import record_outcome, record_rejection
from .errors import RequestError, operation_outcome
from .explain_page import render_options
from .observability import bind_request_id, observe_outcome
from .pipeline import discovery, evaluate

log = logging.getLogger("cds_service.api")
bp = Blueprint("cds", __name__)

_HTTP_ISSUE = {400: "invalid", 404: "not-found", 405: "not-supported", 413: "too-long", 415: "not-supported"}


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), status=status,
                    mimetype="application/json")


def _error(status: int, code: str, diagnostic: str) -> Response:
    return _json(operation_outcome(status, code, diagnostic), status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _state() -> dict:
    return current_app.extensions["vcf_cds"]


@bp.get("/cds-services")
def list_services() -> Response:
    return _json(discovery(_state()["knowledge"]))


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    st = _state()
    started = time.perf_counter()
    if service_id not in st["knowledge"].services:
        return _error(404, "not-found", f"no CDS service with id '{service_id}'")
    raw = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        return _error(400, "too-long", "request JSON is nested too deeply")
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, "structure", f"request body is not valid JSON ({type(exc).__name__})")
    bind_request_id(body)
    try:
        outcome = evaluate(st["knowledge"], st["schemas"], body, service_id=service_id,
                           options=render_options(st), fhir_client=st["fhir_client"],
                           **st["settings"].request_limits)
    except RequestError as exc:
        log.info("service %s: %d %s", service_id, exc.status, exc.code)
        record_rejection(st, service_id, body, exc, started)
        return _json(exc.to_operation_outcome(), exc.status)
    observe_outcome(outcome)
    log.info("service %s: 200 in %.1f ms, %d cards, %d ratings", service_id,
             (time.perf_counter() - started) * 1000, len(outcome.rendered.response["cards"]),
             len(outcome.rendered.response.get("systemActions", ())))
    record_outcome(st, service_id, outcome, started)
    return _json(outcome.rendered.response)


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    text = {404: "no such endpoint", 405: "method not allowed on this endpoint",
            413: "request body is larger than this service accepts"}.get(status, exc.name)
    resp = _error(status, _HTTP_ISSUE.get(status, "processing"), text)
    if status == 405 and getattr(exc, "valid_methods", None):
        resp.headers["Allow"] = ", ".join(exc.valid_methods)
    return resp


@bp.app_errorhandler(Exception)
def unexpected(exc: Exception) -> Response:
    # Never a stack trace to the client; the type only (no values, which may hold PHI) to the log.
    log.error("unhandled %s while serving %s %s", type(exc).__name__, request.method, request.path)
    return _error(500, "exception", "internal error; the request was not evaluated")
