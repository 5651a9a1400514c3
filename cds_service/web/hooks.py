"""HTTP endpoints (CDS Hooks 2.0 §Discovery, §Calling a CDS Service). No clinical logic.

Every error is a FHIR OperationOutcome (the CDS Hooks 3.0 ballot convention) with the
right status; nothing below this module knows about HTTP.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import orjson
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


# A number orjson writes otherwise than ``json.dumps``: below 1e-4 it writes "0.00001" and "2.5e-7"
# where Python's float repr writes "1e-05" and "2.5e-07". Matched as a value (after ':', ',' or
# '['); a string that happens to look alike only costs the slower, identical encoding.
_SMALL_FLOAT = re.compile(rb"[:,\[]-?(?:0\.0000|[0-9.]+e-)")


def encode_json(payload: Any) -> bytes:
    """``payload`` as compact UTF-8 JSON: the bytes of ``json.dumps(payload, ensure_ascii=False,
    separators=(",", ":"))``, encoded by orjson where that gives the same bytes.

    orjson writes keys in insertion order, non-ASCII as UTF-8 and the same string escapes; it
    refuses what ``json.dumps`` handles otherwise (keys that are not strings, integers beyond
    64 bits, lone surrogates, nesting past its limit of 254 levels, a dataclass or datetime),
    and writes floats below 1e-4 differently. Those payloads are encoded with ``json.dumps``,
    so the response is the same whichever encoder ran; a payload holding a lone surrogate
    comes out ASCII, with every non-ASCII character escaped. NaN and infinities (which no decoded
    request holds) are the exception: orjson writes ``null`` where ``json.dumps`` writes ``NaN``.

    Raises:
        TypeError, ValueError: from ``json.dumps``, for a payload it cannot encode either.
    """
    try:
        out = orjson.dumps(payload, option=orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        out = None
    if out is None or _SMALL_FLOAT.search(out):
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate, which the request can only have sent escaped ("\ud800"; in
            # an OperationOutcome's diagnostics, say): written back escaped, as it came.
            return json.dumps(payload, separators=(",", ":")).encode("ascii")
    return out


def decode_json(raw: bytes) -> Any:
    """The JSON value of ``raw`` (UTF-8, or UTF-16/32 and a BOM as ``json.loads`` reads them), as
    ``json.loads`` decodes it: decoded by orjson, and by ``json.loads`` when orjson refuses.

    orjson refuses what ``json.loads`` also refuses here (malformed JSON, ``NaN`` and
    ``Infinity``) and some it reads (a BOM, UTF-16/32, numbers beyond 64 bits or a double,
    lone surrogate escapes, nesting past 1024 levels): ``json.loads`` then gives today's
    answer or error.

    Raises:
        ValueError: not JSON (``NaN`` and ``Infinity`` included); UnicodeDecodeError for bytes
            that are no Unicode text; RecursionError when nested too deeply for ``json.loads``.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw, parse_constant=_reject_constant)


def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as a compact JSON response (:func:`encode_json`)."""
    return Response(encode_json(payload), status=status, mimetype="application/json")


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
        return decode_json(raw)
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
