"""OpenAPI 3.1 description of the service's HTTP endpoints, served at ``GET /openapi.json``.

Built from what the service really checks and sends, so it cannot drift: the request body
schema is the CDS Hooks 2.0 request envelope plus the order-select context schema
(``protocol/schemas/*.json``, the ones :func:`cds_service.protocol.request.parse_envelope`
validates with); the response schemas are generated from the wire models the pipeline checks
every response with (:mod:`cds_service.protocol.models`, CDS Hooks 2.0 §Discovery and §CDS
Service Response; errors as FHIR OperationOutcome, :class:`cds_service.protocol.errors.OperationOutcome`);
the service ids come from the loaded knowledge. The document is public (no authentication);
the hook, discovery and feedback endpoints it describes need the CDS Hooks client JWT.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any
from weakref import WeakKeyDictionary

from flask import Blueprint, Response

from cds_service.decision.knowledge import Knowledge
from cds_service.protocol.errors import OperationOutcome
from cds_service.protocol.feedback import FeedbackRequest
from cds_service.protocol.models import CdsDiscovery, CdsResponse, wire_json_schemas
from cds_service.protocol.request import RequestSchemas
from cds_service.security.links import PATH as EXPLAIN_PATH
from cds_service.web.state import AppState, current_state

bp = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"
_OUTCOME = {"$ref": _REF.format(model="OperationOutcome")}
_PUBLIC: list[dict[str, Any]] = []  # no security requirement


def openapi_document(knowledge: Knowledge, schemas: RequestSchemas, *, metrics: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict) for this service's endpoints; ``metrics``:
    whether ``GET /metrics`` is served (the ``METRICS_ENABLED`` setting)."""
    envelope = _embedded(schemas.request.schema)
    # One body schema for both services: order-select's context, or order-sign's (no selections).
    context = {"anyOf": [_embedded(schemas.order_select_context.schema), _embedded(schemas.order_sign_context.schema)]}
    feedback = FeedbackRequest.model_json_schema(ref_template=_REF)
    feedback_defs = feedback.pop("$defs", {})
    service_id = {"name": "service_id", "in": "path", "required": True,
                  "schema": {"type": "string", "enum": sorted(knowledge.services)}}
    try:
        version = metadata.version("vcf-cds-hooks")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        version = "0"

    def errors(*statuses: int) -> dict[str, Any]:
        return {str(s): {"description": _ERROR_TEXT[s], "content": {"application/json": {"schema": _OUTCOME}}}
                for s in statuses}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vcf-cds-hooks",
            "version": version,
            "description": "CDS Hooks 2.0 service (FHIR R4) rating spine imaging and vertebral augmentation orders "
                           "against the ACR Appropriateness Criteria for vertebral compression fractures.",
        },
        "security": [{"cdsClientJwt": []}],
        "paths": {
            "/cds-services": {
                "get": {
                    "operationId": "discovery",
                    "summary": "CDS Hooks 2.0 Discovery",
                    "responses": {"200": _ok("the services offered", "CdsDiscovery"), **errors(401)},
                },
            },
            "/cds-services/{service_id}": {
                "post": {
                    "operationId": "callService",
                    "summary": "Call a CDS Service (CDS Hooks 2.0 §Calling a CDS Service)",
                    "parameters": [service_id],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "allOf": [envelope, {"properties": {"context": context}}]}}}},
                    "responses": {"200": _ok("cards and systemActions", "CdsResponse"),
                                  **errors(400, 401, 404, 412, 413)},
                },
            },
            "/cds-services/{service_id}/feedback": {
                "post": {
                    "operationId": "feedback",
                    "summary": "What the clinician did with cards (CDS Hooks 2.0 §Feedback)",
                    "parameters": [service_id],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": feedback}}},
                    "responses": {"200": _ok("how many entries were received, stored, already stored "
                                             "(duplicates) and flagged", "FeedbackCounts"),
                                  **errors(400, 401, 404, 413, 503)},
                },
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": _PUBLIC,
                    "responses": {"200": {"description": "OpenAPI 3.1 document",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}},
                },
            },
            EXPLAIN_PATH: {
                "get": {
                    "operationId": "explain",
                    "summary": "The \"Why this advice?\" page a card links to (HTML)",
                    "description": "Public: the signed, expiring token is the credential. No detail is given "
                                   "of why a link is refused.",
                    "security": _PUBLIC,
                    "parameters": [{"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
                                    "description": "the signed link token from the card's link"}],
                    "responses": {str(status): {"description": text, "content": {"text/html": {"schema": {"type": "string"}}}}
                                  for status, text in _EXPLAIN_TEXT.items()},
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process answers HTTP",
                    "security": _PUBLIC,
                    "responses": {"200": {"description": "alive", "content": {"application/json": {"schema": _HEALTH}}}},
                },
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: knowledge loaded and every readiness check (the database) passes",
                    "security": _PUBLIC,
                    "responses": {
                        "200": {"description": "ready", "content": {"application/json": {"schema": _READINESS}}},
                        "503": {"description": "not ready; each failed check is named",
                                "content": {"application/json": {"schema": _READINESS}}},
                    },
                },
            },
            **({"/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text exposition format); keep on the internal network",
                    "security": _PUBLIC,
                    "responses": {"200": {"description": "every metric of every worker",
                                          "content": {"text/plain": {"schema": {"type": "string"}}}}},
                },
            }} if metrics else {}),
        },
        "components": {
            "securitySchemes": {"cdsClientJwt": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "CDS Hooks 2.0 §Trusting CDS Clients: a JWT signed by a trusted CDS Client, "
                               "aud = the exact URL called, a fresh jti per call."}},
            "schemas": {**wire_json_schemas(CdsDiscovery, CdsResponse, OperationOutcome, ref_template=_REF),
                        "FeedbackCounts": _FEEDBACK_COUNTS, **feedback_defs},
        },
    }


# The serialised document of each app, dropped with the app's state.
_DOCUMENTS: WeakKeyDictionary[AppState, str] = WeakKeyDictionary()


@bp.get("/openapi.json")
def serve_openapi() -> Response:
    """``GET /openapi.json``: the document, built once per app."""
    state = current_state()
    if state not in _DOCUMENTS:
        _DOCUMENTS[state] = json.dumps(openapi_document(state.knowledge, state.schemas,
                                                        metrics=state.settings.metrics_enabled))
    return Response(_DOCUMENTS[state], mimetype="application/json")


def _embedded(schema: dict[str, Any]) -> dict[str, Any]:
    # $schema/$id would re-base the embedded schema; the document's dialect is 2020-12 already.
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def _ok(text: str, schema: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}}}


_ERROR_TEXT = {
    400: "malformed JSON, schema violation, wrong hook, unresolvable selection, invalid draft order, JSON too deep",
    401: "no valid client JWT (no detail is given; the reason is logged server side)",
    404: "unknown service",
    412: "prefetch is missing and could not be fetched from fhirServer",
    413: "body larger than MAX_BODY_BYTES, or more draft orders or prefetch entries than allowed",
    503: "the feedback could not be stored; send it again after Retry-After seconds",
}

_EXPLAIN_TEXT = {
    200: "the explanation page",
    403: "the link has expired or is not valid",
    404: "no record of that card (records are kept AUDIT_RETENTION_DAYS)",
    503: "the audit database cannot be read now; try again after Retry-After seconds",
}

_HEALTH: dict[str, Any] = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}

_READINESS: dict[str, Any] = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ready", "not-ready"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "check name -> \"ok\", \"failed\" or \"failed (<exception type>)\""},
    },
}

_FEEDBACK_COUNTS: dict[str, Any] = {
    "type": "object",
    "required": ["received", "stored", "duplicates", "flagged"],
    "properties": {name: {"type": "integer", "minimum": 0} for name in ("received", "stored", "duplicates", "flagged")},
}
