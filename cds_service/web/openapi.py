"""OpenAPI 3.1 description of the service's HTTP endpoints, served at ``GET /openapi.json``.

Built from what the service really checks, so it cannot drift: the request body schema is the
CDS Hooks 2.0 request envelope plus the order-select context schema (``schemas/*.json``, the
ones :func:`cds_service.protocol.request.parse_order_select` validates with), and the service ids
come from the loaded knowledge. Responses are described as the service sends them: CDS Hooks
2.0 §Discovery and §CDS Service Response, errors as FHIR OperationOutcome. The document is
public (no authentication); the endpoints it describes need the CDS Hooks client JWT.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any
from weakref import WeakKeyDictionary

from flask import Blueprint, Response

from cds_service.decision.knowledge import Knowledge
from cds_service.protocol.feedback import FeedbackRequest
from cds_service.protocol.request import RequestSchemas
from cds_service.web.state import AppState, current_state

bp = Blueprint("openapi", __name__)

_OUTCOME = {"$ref": "#/components/schemas/OperationOutcome"}


def openapi_document(knowledge: Knowledge, schemas: RequestSchemas) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict) for this service's endpoints."""
    envelope = _embedded(schemas.request.schema)
    # One body schema for both services: order-select's context, or order-sign's (no selections).
    context = {"anyOf": [_embedded(schemas.order_select_context.schema), _embedded(schemas.order_sign_context.schema)]}
    feedback = FeedbackRequest.model_json_schema(ref_template="#/components/schemas/{model}")
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
                    "responses": {"200": _ok("the services offered", "Discovery"), **errors(401)},
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
                    "responses": {"200": {"description": "counts: received, stored, duplicates, flagged",
                                          "content": {"application/json": {"schema": {"type": "object"}}}},
                                  **errors(400, 401, 404, 413, 503)},
                },
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1 document",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}},
                },
            },
        },
        "components": {
            "securitySchemes": {"cdsClientJwt": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "CDS Hooks 2.0 §Trusting CDS Clients: a JWT signed by a trusted CDS Client, "
                               "aud = the exact URL called, a fresh jti per call."}},
            "schemas": {**_COMPONENT_SCHEMAS, **feedback_defs},
        },
    }


# The serialised document of each app, dropped with the app's state.
_DOCUMENTS: WeakKeyDictionary[AppState, str] = WeakKeyDictionary()


@bp.get("/openapi.json")
def serve_openapi() -> Response:
    """``GET /openapi.json``: the document, built once per app."""
    state = current_state()
    if state not in _DOCUMENTS:
        _DOCUMENTS[state] = json.dumps(openapi_document(state.knowledge, state.schemas))
    return Response(_DOCUMENTS[state], mimetype="application/json")


def _embedded(schema: dict[str, Any]) -> dict[str, Any]:
    # $schema/$id would re-base the embedded schema; the document's dialect is 2020-12 already.
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def _ok(text: str, schema: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


_ERROR_TEXT = {
    400: "malformed JSON, schema violation, wrong hook, unresolvable selection, invalid draft order, JSON too deep",
    401: "no valid client JWT (no detail is given; the reason is logged server side)",
    404: "unknown service",
    412: "prefetch is missing and could not be fetched from fhirServer",
    413: "body larger than MAX_BODY_BYTES, or more draft orders or prefetch entries than allowed",
    503: "the feedback could not be stored; send it again after Retry-After seconds",
}

_COMPONENT_SCHEMAS: dict[str, Any] = {
    "OperationOutcome": {
        "type": "object",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {
                    "severity": {"enum": ["fatal", "error", "warning", "information"]},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                    "expression": {"type": "array", "items": {"type": "string"}},
                },
            }},
        },
    },
    "Discovery": {
        "type": "object",
        "required": ["services"],
        "properties": {"services": {"type": "array", "items": {
            "type": "object",
            "required": ["hook", "description", "id"],
            "properties": {
                "hook": {"type": "string"},
                "title": {"type": "string"},
                "description": {"type": "string"},
                "id": {"type": "string"},
                "prefetch": {"type": "object", "additionalProperties": {"type": "string"}},
                "usageRequirements": {"type": "string"},
            },
        }}},
    },
    "CdsResponse": {
        "type": "object",
        "required": ["cards"],
        "properties": {
            "cards": {"type": "array", "items": {
                "type": "object",
                "required": ["summary", "indicator", "source"],
                "properties": {
                    "uuid": {"type": "string"},
                    "summary": {"type": "string", "maxLength": 140},
                    "detail": {"type": "string"},
                    "indicator": {"enum": ["info", "warning", "critical"]},
                    "source": {"type": "object", "required": ["label"]},
                    "suggestions": {"type": "array", "items": {"type": "object", "required": ["label"]}},
                    "selectionBehavior": {"enum": ["at-most-one", "any"]},
                    "links": {"type": "array", "items": {"type": "object", "required": ["label", "url", "type"]}},
                },
            }},
            "systemActions": {"type": "array", "items": {"type": "object", "required": ["type", "description"]}},
            "extension": {"type": "object"},
        },
    },
}
