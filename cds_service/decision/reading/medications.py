"""Read medication orders and statements (FHIR R4 MedicationRequest / MedicationStatement dicts).

Which drugs: the classes of ``data/reading/medications.json`` (osteoporosis drug therapy,
anticoagulant, antiplatelet, aspirin), each recognised by the RxNorm codes of its value set in
``data/reading/valuesets/``; when no listed code is present, by a whole-word drug name (generic
or brand) in the drug's text, and then the fact is ``unconfirmed``.

Which orders count: *current* ones (MedicationRequest active or on-hold; MedicationStatement
active, intended or on-hold) always; *recent* ones (completed or stopped) when their end date,
else their start or authored date, is within the class's ``recentDays`` before ``now``
(365 days for osteoporosis therapy because zoledronic acid is yearly and denosumab 6-monthly;
14 days for anticoagulants and antiplatelets). Everything else (draft, cancelled,
entered-in-error, not-taken, unknown; recent ones without any date) is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from cds_service.decision.reading._fhir import codings, concept_text, days_between, iso_date, mapping, parse_fhir_datetime
from cds_service.decision.reading.loader import MedicationClassDef, ReadingKnowledge, load_reading_knowledge


@dataclass(frozen=True)
class MedicationFact:
    """One medication class found on one resource, with its evidence.

    ``when`` is ``"current"`` or ``"recent"``; ``date`` the date that decided it (ISO
    ``YYYY-MM-DD``) or None for a current order without one; ``matched_by`` is ``"code"``
    (an RxNorm code of the class's value set) or ``"text"`` (a drug name: ``unconfirmed``).
    A code that is itself marked unconfirmed in the value set also makes the fact unconfirmed.
    """

    drug_class: str
    label: str
    resource_type: str
    resource_id: str | None
    status: str
    when: Literal["current", "recent"]
    date: str | None
    system: str | None
    code: str | None
    display: str
    matched_by: Literal["code", "text"]
    unconfirmed: bool
    source: str

    def evidence(self) -> dict[str, Any]:
        """JSON-ready evidence: resource reference, code, display, date, status."""
        ref = f"{self.resource_type}/{self.resource_id}" if self.resource_id else self.resource_type
        return {"resource": ref, "class": self.drug_class, "code": self.code, "system": self.system,
                "display": self.display, "date": self.date, "status": self.status, "when": self.when,
                "matchedBy": self.matched_by, "unconfirmed": self.unconfirmed}


@lru_cache(maxsize=1)
def _default_knowledge() -> ReadingKnowledge:
    return load_reading_knowledge()


def _medication_concept(resource: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]) -> Any:
    if isinstance(resource.get("medicationCodeableConcept"), Mapping):
        return resource["medicationCodeableConcept"]
    ref = resource.get("medicationReference")
    if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
        target = ref["reference"]
        if target.startswith("#"):
            for c in resource.get("contained") or ():
                if isinstance(c, Mapping) and c.get("id") == target[1:]:
                    return c.get("code")
        med = medications.get(target) or medications.get(target.rsplit("/", 1)[-1])
        if isinstance(med, Mapping):
            return med.get("code")
        if isinstance(ref.get("display"), str):
            return {"text": ref["display"]}
    return None


def _dates(resource: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """(start, end) of an order or statement, each None when absent."""
    if resource.get("resourceType") == "MedicationRequest":
        validity = mapping(mapping(resource.get("dispenseRequest")).get("validityPeriod"))
        start = parse_fhir_datetime(validity.get("start")) or parse_fhir_datetime(resource.get("authoredOn"))
        return start, parse_fhir_datetime(validity.get("end"))
    period = mapping(resource.get("effectivePeriod"))
    start = parse_fhir_datetime(resource.get("effectiveDateTime")) or parse_fhir_datetime(period.get("start"))
    end = parse_fhir_datetime(period.get("end"))
    if start is None and end is None:
        # A statement without an effective time: when it was asserted is the best date there is.
        start = parse_fhir_datetime(resource.get("dateAsserted"))
    return start, end


@lru_cache(maxsize=8)
def _name_patterns(classes: tuple[MedicationClassDef, ...]) -> tuple[tuple[MedicationClassDef, re.Pattern[str]], ...]:
    """One pattern per class for its drug names, longest first; built once per knowledge."""
    return tuple((mc, re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(n) for n in sorted(mc.names, key=len, reverse=True))
                                 + r")(?![\w-])", re.IGNORECASE)) for mc in classes)


def read_medications(resources: Iterable[Any], *, now: datetime, knowledge: ReadingKnowledge | None = None,
                     medications: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[MedicationFact, ...]:
    """Medication facts from MedicationRequest / MedicationStatement dicts among ``resources``.

    ``now`` (timezone-aware) anchors the recent windows; ``medications`` maps ``Medication/id``
    (or bare id) to Medication resources for ``medicationReference``. Other resource types are
    ignored. One fact per (resource, class); a resource may carry two classes (e.g. a combination
    product). Returns facts in input order.
    """
    k = knowledge or _default_knowledge()
    meds = k.medications
    patterns = _name_patterns(meds.classes)
    out: list[MedicationFact] = []
    for r in resources:
        if not isinstance(r, Mapping) or r.get("resourceType") not in ("MedicationRequest", "MedicationStatement"):
            continue
        rtype = str(r["resourceType"])
        status: str = r["status"] if isinstance(r.get("status"), str) else ""
        if status in meds.currentStatuses.get(rtype, ()):  # type: ignore[call-overload]
            when: Literal["current", "recent"] = "current"
        elif status in meds.recentStatuses.get(rtype, ()):  # type: ignore[call-overload]
            when = "recent"
        else:
            continue
        start, end = _dates(r)
        concept = _medication_concept(r, medications or {})
        text = concept_text(concept)
        rid = r.get("id") if isinstance(r.get("id"), str) else None
        for mc, pattern in patterns:
            if when == "recent":
                decisive = end or start
                if decisive is None or not 0 <= days_between(decisive, now) <= mc.recentDays:
                    continue
                date = iso_date(decisive)
            else:
                date = iso_date(start)
            vs = k.valuesets[mc.valueSet]
            hit = next(((c, vs.concepts[(str(c.get("system")), str(c["code"]))]) for c in codings(concept)
                        if (str(c.get("system")), str(c["code"])) in vs.concepts), None)
            if hit is not None:
                coding, listed = hit
                out.append(MedicationFact(mc.id, mc.label, rtype, rid, status, when, date, listed.system, listed.code,
                                          str(coding.get("display") or listed.display), "code", listed.unconfirmed,
                                          listed.source))
                continue
            names = " ".join([text] + [str(c.get("display") or "") for c in codings(concept)])
            if names.strip() and pattern.search(names):
                first = next(codings(concept), None)
                out.append(MedicationFact(mc.id, mc.label, rtype, rid, status, when, date,
                                          str(first.get("system")) if first else None, str(first["code"]) if first else None,
                                          text or names.strip(), "text", True, f"drug name in text ({mc.source})"))
    return tuple(out)
