"""One hook call without HTTP, as a straight line of steps, each callable and testable alone:

    find_service -> parse_envelope -> complete_prefetch -> parse_record -> decide_orders
    -> render_response -> validate_response

:func:`evaluate` runs them in that order and returns an :class:`Outcome`; the web layer then
audits it (:func:`cds_service.store.audit.record_outcome`). Shared by the Flask endpoint,
``vcf-cds evaluate`` and the server's warm-up, so all three give the same answer.

Every step but :func:`complete_prefetch` is pure: the parsers do no network I/O and call no
clinical code; which prefetched resources the decision reads is handed to
:func:`parse_record` as a predicate by this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pydantic

from cds_service.decision.engine import RATED_ORDER_TYPES, Decision, decide
from cds_service.decision.knowledge import Knowledge, ServiceDef
from cds_service.decision.outcome import Outcome
from cds_service.decision.record_reading import RecordText
from cds_service.decision.render import Rendered, RenderOptions, render
from cds_service.decision.scenario import reference_date, yields_facts
from cds_service.fhir.client import FhirClient
from cds_service.protocol.errors import RequestError
from cds_service.protocol.models import CdsResponse
from cds_service.protocol.request import (
    MAX_DRAFT_ORDERS,
    MAX_JSON_DEPTH,
    MAX_PREFETCH_ENTRIES,
    MAX_RECORD_READ,
    READING_KEYS,
    Envelope,
    InputIssue,
    PatientRecord,
    RequestSchemas,
    nested_deeper_than,
    parse_envelope,
    parse_record,
    prefetch_unavailable,
)

__all__ = [
    "InvalidResponse",
    "complete_prefetch",
    "decide_orders",
    "discovery",
    "evaluate",
    "find_service",
    "parse_envelope",
    "parse_record",
    "reading_queries",
    "render_response",
    "validate_response",
]


class InvalidResponse(RuntimeError):
    """The rendered response breaks a CDS Hooks 2.0 rule of :mod:`cds_service.protocol.models`:
    a bug of this service, never of the request (the web layer answers 500). The message
    names the failing locations and rules, never values from the request."""


def find_service(knowledge: Knowledge, service_id: str) -> ServiceDef:
    """The service ``service_id`` of ``knowledge`` (data/services.json).

    Raises :class:`RequestError` 404 ``not-found`` for an unknown id.
    """
    service = knowledge.services.get(service_id)
    if service is None:
        raise RequestError(404, "not-found", f"no CDS service with id '{service_id}'")
    return service


def reading_queries(knowledge: Knowledge, envelope: Envelope, service: ServiceDef) -> dict[str, str]:
    """The service's own FHIR query for each record-reading key it declares
    (``data/reading/prefetch.json`` ``query``), written as a prefetch template:
    ``{patientId}`` becomes ``{{context.patientId}}`` and ``{since}`` the date ``lookbackDays``
    before the earliest selected order's date (its ``authoredOn``, the date the decision uses;
    CDS Hooks 2.0 prefetch tokens have no relative date). Empty without reading knowledge.
    """
    if knowledge.reading is None:
        return {}
    day = min((reference_date(s.raw) for s in envelope.selections), default=datetime.now(UTC).date())
    out = {}
    for key in knowledge.reading.prefetch.keys:
        if key.key in service.prefetch:
            since = (day - timedelta(days=key.lookbackDays)).isoformat()
            out[key.key] = key.query.replace("{patientId}", "{{context.patientId}}").replace("{since}", since)
    return out


def complete_prefetch(envelope: Envelope, service: ServiceDef, fhir_client: FhirClient | None, *,
                      max_depth: int = MAX_JSON_DEPTH, queries: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The request's prefetch with what it lacks fetched from its ``fhirServer``.

    CDS Hooks 2.0 §Prefetch Template: the service fetches itself what the client did not
    prefetch. Each key of the service's ``prefetch`` templates that is absent or an
    OperationOutcome is fetched with ``fhir_client`` (every such key in one call, side by
    side); nothing is fetched without ``fhir_client`` or without ``fhirServer`` in the request,
    and keys the service does not declare are kept as sent. Returns a new dict; ``envelope``
    is not changed.

    The record-reading keys (radiology reports, medications, labs:
    :data:`cds_service.protocol.request.READING_KEYS`) are fetched side by side with the
    others, with ``queries`` (key -> query as a template, :func:`reading_queries`) in place
    of their templates where given. The answer can do without them: one that cannot be
    fetched stays unavailable (the card names what was not read) and the failure is logged,
    not answered 412.

    Raises:
        RequestError: 412 from :meth:`FhirClient.fetch` (server not allowlisted, unreachable,
            answering an error ...); 412 ``too-long`` when a fetched value nests deeper
            than ``max_depth``.
    """
    prefetch = dict(envelope.prefetch)
    missing = [key for key in service.prefetch if prefetch_unavailable(prefetch, key)]
    if fhir_client is None or not missing or not envelope.fhir_server:
        return prefetch
    # Reports, medications and labs refine the advice; without them it is still given.
    optional = [key for key in missing if key in READING_KEYS]
    fetched = fhir_client.fetch(fhir_server=envelope.fhir_server, access_token=envelope.access_token,
                                templates={**service.prefetch, **(queries or {})}, keys=missing,
                                context=envelope.context, user_id=envelope.user_id, optional=optional)
    for key, value in fetched.items():
        if nested_deeper_than(value, max_depth):
            raise RequestError(412, "too-long", f"prefetch '{key}' fetched from fhirServer is nested deeper "
                               f"than {max_depth} levels", [f"prefetch.{key}"])
        prefetch[key] = value
    return prefetch


def decide_orders(knowledge: Knowledge, envelope: Envelope, record: PatientRecord, *,
                  pama_official_only: bool = False) -> Decision:
    """The decision on the selected orders given the patient's record
    (:func:`cds_service.decision.engine.decide`, on the resources' JSON as sent).
    ``pama_official_only``: PAMA ratings only for OFFICIAL cells (setting ``PAMA_OFFICIAL_ONLY``)."""
    text = RecordText(reports=_raw(record.reports), medications=_raw(record.medications),
                      observations=_raw(record.observations), unavailable=record.unavailable)
    return decide(knowledge, selections=_raw(envelope.selections), draft_orders=_raw(envelope.draft_orders),
                  conditions=_raw(record.conditions), procedures=_raw(record.procedures),
                  pama_official_only=pama_official_only, text=text)


def render_response(knowledge: Knowledge, envelope: Envelope, record: PatientRecord, decision: Decision,
                    options: RenderOptions) -> Rendered:
    """The CDS Hooks response for ``decision`` (:func:`cds_service.decision.render.render`),
    listing the draft orders out of scope (``envelope``), the prefetched resources ``record``
    skipped and the report content the reading did not read (attachments other than
    ``text/plain``, unusable statuses)."""
    issues = [issue.to_json() for issue in (*envelope.skipped_orders, *record.issues)]
    for issue in _reading_issues(decision):
        if issue not in issues:
            issues.append(issue)
    return render(knowledge, decision, draft_orders=_raw(envelope.draft_orders), patient_id=envelope.patient_id,
                  options=options, record_not_read=record.not_read, input_issues=issues)


def _reading_issues(decision: Decision) -> list[dict[str, str]]:
    out = []
    for od in decision.orders:
        for sk in od.reading.skipped if od.reading is not None else ():
            why = f"{sk.reason}: {sk.content_type}" if sk.content_type else sk.reason
            out.append(InputIssue("prefetch.radiologyReports", sk.resource_type, sk.resource_id, why).to_json())
    return out


def validate_response(rendered: Rendered) -> None:
    """Check the rendered response against the CDS Hooks 2.0 models
    (:class:`cds_service.protocol.models.CdsResponse`: summary under 140 characters,
    selectionBehavior with suggestions, action rules, UUIDs, unique card uuids ...).

    Raises :class:`InvalidResponse` naming each broken rule and where.
    """
    try:
        CdsResponse.model_validate(rendered.response)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'response'}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False, include_context=False))
        raise InvalidResponse(f"rendered response breaks CDS Hooks 2.0: {problems}") from None


def evaluate(knowledge: Knowledge, schemas: RequestSchemas, body: Any, *, service_id: str,
             options: RenderOptions, max_depth: int = MAX_JSON_DEPTH, max_draft_orders: int = MAX_DRAFT_ORDERS,
             max_prefetch_entries: int = MAX_PREFETCH_ENTRIES, max_record_read: int = MAX_RECORD_READ,
             fhir_client: FhirClient | None = None) -> Outcome:
    """Evaluate a request body (decoded JSON) for service ``service_id``: every step above, in turn.

    With ``fhir_client``, prefetch the request lacks is fetched from its ``fhirServer``
    using the service's prefetch templates. Only the prefetched Conditions and Procedures the
    decision reads (a code in a fact value set, :func:`cds_service.decision.scenario.yields_facts`)
    are validated and kept, at most ``max_record_read`` per prefetch key (the rest are listed
    under ``skippedResources``). The service's ``requiredPrefetch`` keys must then be available.

    Raises:
        RequestError: 404 unknown service; 400/413 from :func:`parse_envelope` (which applies
            the ``max_*`` limits); 412 from :func:`complete_prefetch` or :func:`parse_record`.
        InvalidResponse: the rendered response breaks the CDS Hooks 2.0 models (a bug).
    """
    service = find_service(knowledge, service_id)
    envelope = parse_envelope(body, hook=service.hook, schemas=schemas, max_depth=max_depth,
                              max_draft_orders=max_draft_orders, max_prefetch_entries=max_prefetch_entries,
                              order_types=RATED_ORDER_TYPES)
    prefetch = complete_prefetch(envelope, service, fhir_client, max_depth=max_depth,
                                 queries=reading_queries(knowledge, envelope, service))
    record = parse_record(prefetch, patient_id=envelope.patient_id, required=service.requiredPrefetch,
                          reads=partial(yields_facts, knowledge), max_read=max_record_read)
    decision = decide_orders(knowledge, envelope, record, pama_official_only=options.pama_official_only)
    rendered = render_response(knowledge, envelope, record, decision, options)
    validate_response(rendered)
    return Outcome(envelope, record, decision, rendered)


def discovery(knowledge: Knowledge) -> dict[str, Any]:
    """CDS Hooks 2.0 §Discovery response: ``{"services": [...]}``."""
    out = []
    for s in knowledge.services.values():
        entry: dict[str, Any] = {"hook": s.hook, "title": s.title, "description": s.description, "id": s.id,
                                 "prefetch": dict(s.prefetch)}
        if s.usageRequirements:
            entry["usageRequirements"] = s.usageRequirements
        out.append(entry)
    return {"services": out}


def _raw(items: Any) -> list[Mapping[str, Any]]:
    # The engine and the renderer read the resources' JSON as sent.
    return [item.raw for item in items]
