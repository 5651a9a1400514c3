"""One order-select call without HTTP: parse (fetching missing prefetch) -> decide -> render.

Shared by the Flask endpoint and ``vcf-cds evaluate`` so both give the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from cds_service.decision.engine import decide
from cds_service.decision.knowledge import Knowledge
from cds_service.decision.outcome import Outcome
from cds_service.decision.render import RenderOptions, render
from cds_service.decision.scenario import yields_facts
from cds_service.fhir.client import FhirClient
from cds_service.protocol.errors import RequestError
from cds_service.protocol.request import MAX_DRAFT_ORDERS, MAX_PREFETCH_ENTRIES, RequestSchemas, parse_order_select


def evaluate(knowledge: Knowledge, schemas: RequestSchemas, body: Any, *, service_id: str,
             options: RenderOptions, max_depth: int = 100, max_draft_orders: int = MAX_DRAFT_ORDERS,
             max_prefetch_entries: int = MAX_PREFETCH_ENTRIES, fhir_client: FhirClient | None = None) -> Outcome:
    """Evaluate a request body (parsed JSON) for service ``service_id``.

    With ``fhir_client``, prefetch the request lacks is fetched from its ``fhirServer``
    (CDS Hooks 2.0 §Prefetch Template) using the service's prefetch templates. Only the
    prefetched Conditions and Procedures the decision reads (a code in a fact value set,
    :func:`cds_service.decision.scenario.yields_facts`) are validated and kept.

    Raises :class:`RequestError` (404 unknown service; 400/412/413 from ``parse_order_select``,
    which applies the ``max_*`` limits, and 412 from ``fhir_client``).
    """
    service = knowledge.services.get(service_id)
    if service is None:
        raise RequestError(404, "not-found", f"no CDS service with id '{service_id}'")

    def fetch_missing(keys: list[str], checked: Mapping[str, Any]) -> Mapping[str, Any]:
        keys = [k for k in keys if k in service.prefetch]
        if fhir_client is None or not keys or not checked.get("fhirServer"):
            return {}
        authorization = checked.get("fhirAuthorization") or {}
        return fhir_client.fetch(fhir_server=checked["fhirServer"], access_token=authorization.get("access_token"),
                                 templates=service.prefetch, keys=keys, context=checked["context"],
                                 user_id=checked["context"].get("userId"))

    parsed = parse_order_select(body, hook=service.hook, schemas=schemas, max_depth=max_depth,
                                fetch_missing=fetch_missing, max_draft_orders=max_draft_orders,
                                max_prefetch_entries=max_prefetch_entries, reads=partial(yields_facts, knowledge))
    raw = lambda items: [r.raw for r in items]  # noqa: E731 - engine reads raw JSON
    decision = decide(knowledge, selections=raw(parsed.selections), draft_orders=raw(parsed.draft_orders),
                      conditions=raw(parsed.conditions), procedures=raw(parsed.procedures),
                      pama_official_only=options.pama_official_only)
    issues = [{k: v for k, v in vars(i).items() if v is not None} for i in parsed.issues]
    rendered = render(knowledge, decision, draft_orders=raw(parsed.draft_orders), patient_id=parsed.patient_id,
                      options=options, input_issues=issues)
    return Outcome(parsed, decision, rendered)


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

