"""Facts from what the clinician sees beyond codes: radiology reports, medications and labs.

The readers of :mod:`cds_service.decision.reading` applied to one order (CMS LCD L34228;
Dansie et al.; IR teaching cases; SIR consensus, Patel IJ et al., JVIR 2019):

- a present marrow edema or intravertebral cleft in a spine MRI of the last 12 weeks at the
  level of a current fracture (CMS LCD L34228: acute < 6 weeks, subacute 6-12 weeks) gives the
  ``marrow-edema`` fact that ACR variant 6 needs; edema at a level augmented before does not
  (Dansie et al.: not by itself a new fracture);
- an incidental, age-indeterminate or chronic-appearing fracture described in a non-spine study,
  with no recent back pain on record, gives ``asymptomatic`` (probable asymptomatic VCF,
  variants 4 / 5);
- an active or recent osteoporosis drug gives ``osteoporosis-therapy``; an anticoagulant or
  antiplatelet gives ``anticoagulation`` (peri-procedural management, SIR 2019);
- an INR or platelet count outside the SIR threshold of the ordered procedure's bleeding-risk
  class (Patel IJ et al., J Vasc Interv Radiol 2019) is kept for the card with its threshold;
- a report of the same study within the repeat window is kept for an information card.

Every fact read from report text is evidence with origin ``report``: the report, its date and
the sentence, unconfirmed by nature ("from report text, unconfirmed" on the card and on the
"Why this advice?" page). Pure: the reference date is the order's, never a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import partial
from types import MappingProxyType
from typing import TypeVar

from cds_service.decision.contract import ComputedFact, Fact
from cds_service.decision.knowledge import Knowledge, Procedure
from cds_service.decision.reading.imaging import ImagingFacts, imaging_facts, same_study_recently
from cds_service.decision.reading.labs import LabJudgement, out_of_range_for_procedure, read_labs
from cds_service.decision.reading.loader import ReadingKnowledge
from cds_service.decision.reading.medications import MedicationFact, read_medications
from cds_service.decision.reading.reports import (
    ReportFinding,
    ReportReading,
    ReportsRead,
    SkippedContent,
    read_reports,
    vertebral_levels,
)
from cds_service.decision.scenario import Evidence, FactSet
from cds_service.decision.terminology import LOINC

# The prefetch keys the reading uses (data/services.json, data/reading/prefetch.json).
REPORTS_KEY = "radiologyReports"
MEDICATION_KEYS = ("medicationRequests", "medicationStatements")
LABS_KEY = "coagulationLabs"
# Medication classes of data/reading/medications.json -> the decision fact each one shows
# (osteoporosis therapy: IR teaching cases; CMS LCD L34228 and SIR 2019: drugs that
# need peri-procedural management before an augmentation).
MEDICATION_FACTS: Mapping[str, Fact] = MappingProxyType({
    "osteoporosis-therapy": Fact.OSTEOPOROSIS_THERAPY,
    "anticoagulant": Fact.ANTICOAGULATION,
    "antiplatelet": Fact.ANTICOAGULATION,
    "aspirin": Fact.ANTICOAGULATION,
})
T = TypeVar("T")


@dataclass(frozen=True)
class RecordText:
    """What the record reading reads, as sent (raw FHIR R4 JSON dicts).

    ``reports``: DiagnosticReports; ``medications``: MedicationRequests, MedicationStatements
    and the Medications they reference; ``observations``: INR / platelet Observations;
    ``unavailable``: the prefetch keys neither sent nor fetched (the card names them).
    """

    reports: Sequence[Mapping] = ()
    medications: Sequence[Mapping] = ()
    observations: Sequence[Mapping] = ()
    unavailable: tuple[str, ...] = ()
    # Readings already made for this call, by what and what they depend on (the reference
    # date, the levels, the resource read): orders of one call share them.
    memo: dict[tuple, object] = field(default_factory=dict, compare=False, repr=False)

    def once(self, key: tuple, make: Callable[[], T]) -> T:
        """``make()`` the first time for ``key`` in this call, the same result after. ``key``
        names what is made and everything it depends on beyond this call's record."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]  # type: ignore[return-value]


@dataclass(frozen=True)
class OrderReading:
    """What the reading found for one order.

    ``imaging``: the imaging facts, None when no radiology reports were available.
    ``same_study``: reports of the ordered study within the repeat window (newest first).
    ``medications``: medication facts (current or recent). ``labs``: INR / platelet
    judgements out of range for the ordered procedure. ``skipped``: report attachments and
    reports not read (for ``skippedResources``). ``unavailable``: prefetch keys not read.
    ``evidence``: fact -> the evidence the reading adds to the record's facts.
    ``unplaced``: marrow edema or cleft in a recent spine MRI whose level could not be tied to
    a current fracture (evidence for the card asking to confirm it; not a fact).
    """

    imaging: ImagingFacts | None = None
    same_study: tuple[ReportReading, ...] = ()
    medications: tuple[MedicationFact, ...] = ()
    labs: tuple[LabJudgement, ...] = ()
    skipped: tuple[SkippedContent, ...] = ()
    unavailable: tuple[str, ...] = ()
    evidence: Mapping[str, tuple[Evidence, ...]] = field(default_factory=dict)
    unplaced: tuple[Evidence, ...] = ()

    @property
    def no_spine_mri(self) -> bool:
        """Radiology reports were read and none is a spine MRI of the recent window."""
        return self.imaging is not None and self.imaging.no_spine_mri

    @property
    def reports_read(self) -> bool:
        return self.imaging is not None


def reading_time(as_of: date) -> datetime:
    """The reference instant of the readers: the end of the order's day (UTC)."""
    return datetime.combine(as_of, time(23, 59, 59), UTC)


def _lookback(k: ReadingKnowledge, key: str, default: int) -> int:
    return next((p.lookbackDays for p in k.prefetch.keys if p.key == key), default)


def _text_of(raw: Mapping, *fields: str) -> str:
    parts: list[str] = []
    for name in fields:
        value = raw.get(name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Mapping):
                if isinstance(item.get("text"), str):
                    parts.append(item["text"])
                parts += [str(c.get("display")) for c in item.get("coding") or () if isinstance(c, Mapping)
                          and isinstance(c.get("display"), str)]
    return " ; ".join(parts)


def _levels(k: ReadingKnowledge, text: RecordText, resources: Mapping[str, Mapping],
            evidence: Sequence[Evidence]) -> tuple[str, ...]:
    """Vertebral levels named in the text of the resources behind ``evidence`` (code text,
    body site): "Acute T8 osteoporotic compression fracture" -> T8. Each resource's text is
    read once per call (``text``), whichever order asks."""
    out: dict[str, None] = {}
    for resource in dict.fromkeys(e.resource for e in evidence):
        raw = resources.get(resource)
        if raw is None:
            continue
        for group in text.once(("levels", resource), partial(_named_levels, k, raw)):
            out.update(dict.fromkeys(group))
    return tuple(out)


def _named_levels(k: ReadingKnowledge, raw: Mapping) -> tuple[tuple[str, ...], ...]:
    return vertebral_levels(_text_of(raw, "code", "bodySite"), k)


def _by_reference(text: RecordText, conditions: Sequence[Mapping],
                  procedures: Sequence[Mapping]) -> Mapping[str, Mapping]:
    """``Condition/<id>`` / ``Procedure/<id>`` -> the resource, built once per call (the memo
    holds the lists, so their ids name them while it lives)."""
    def make() -> tuple[Sequence[Mapping], Sequence[Mapping], dict[str, Mapping]]:
        by_ref = {f"Condition/{c.get('id')}": c for c in conditions}
        by_ref.update({f"Procedure/{p.get('id')}": p for p in procedures})
        return conditions, procedures, by_ref
    return text.once(("by reference", id(conditions), id(procedures)), make)[2]


def _imaging(k: ReadingKnowledge, read: ReportsRead, now: datetime, fracture_levels: tuple[str, ...],
             augmented_levels: tuple[str, ...]) -> tuple[ImagingFacts, tuple[Evidence, ...], tuple[Evidence, ...],
                                                         tuple[Evidence, ...]]:
    """The imaging facts of ``read`` and their evidence: (facts, marrow edema or cleft, edema
    or cleft whose level is unknown, incidental fractures)."""
    imaging = imaging_facts(read.readings, now=now, fracture_levels=fracture_levels,
                            augmented_levels=augmented_levels, knowledge=k)
    # The report each finding came from (by identity: reports need not have an id).
    source = {id(f): r for r in read.readings for f in r.findings}
    return (imaging,
            tuple(_report_evidence(Fact.MARROW_EDEMA, f, source[id(f)]) for f in imaging.edema_or_cleft),
            tuple(_report_evidence(Fact.MARROW_EDEMA, f, source[id(f)]) for f in imaging.level_unknown),
            tuple(_report_evidence(Fact.ASYMPTOMATIC, f, source[id(f)]) for f in imaging.incidental_fractures))


def _medication_evidence(k: ReadingKnowledge, meds: Sequence[MedicationFact]) -> tuple[tuple[Fact, Evidence], ...]:
    """The decision fact each medication shows, with its evidence (in ``meds`` order)."""
    out = []
    for m in meds:
        fact = MEDICATION_FACTS.get(m.drug_class)
        if fact is None:
            continue
        ref = f"{m.resource_type}/{m.resource_id}" if m.resource_id else m.resource_type
        # Only current or recent orders count; a recent one says so (status and date).
        display = m.display if m.when == "current" else f"{m.display} ({m.status} {m.date})"
        by_code = m.matched_by == "code"
        out.append((fact, Evidence(
            fact=fact, resource=f"{ref}#medication", system=(m.system or "") if by_code else "",
            code=(m.code or "") if by_code else "", display=display,
            valueset=next(c.valueSet for c in k.medications.classes if c.id == m.drug_class),
            unconfirmed=m.unconfirmed, onset=date.fromisoformat(m.date) if m.date else None, origin="medication")))
    return tuple(out)


def _report_evidence(fact: str, f: ReportFinding, reading: ReportReading) -> Evidence:
    where = f"DiagnosticReport/{f.report_id}" if f.report_id else "DiagnosticReport"
    return Evidence(fact=fact, resource=f"{where}#{reading.text_source or 'text'}", system="", code=f.finding
                    + ("@" + "-".join(f.levels) if f.levels else ""), display=f.sentence, valueset="",
                    unconfirmed=True, onset=reading.date.date() if reading.date else None, origin="report")


def _recent_back_pain(facts: FactSet, as_of: date, days: int) -> bool:
    """Back pain stated now, or with an onset within ``days``, or with no onset (cannot be
    ruled out: the 'asymptomatic' reading is only made when the record says nothing else)."""
    for e in facts.evidence.get(Fact.BACK_PAIN, ()):
        if e.origin == "reasonCode" or e.current_encounter or e.onset is None or (as_of - e.onset).days <= days:
            return True
    return False


def read_order(knowledge: Knowledge, text: RecordText, *, procedure: Procedure | None, order: Mapping,
               region: str | None, facts: FactSet, conditions: Sequence[Mapping], procedures: Sequence[Mapping],
               as_of: date) -> OrderReading:
    """Read ``text`` for one order (raw ServiceRequest ``order`` of ``procedure``, spine
    ``region`` id) whose record gave ``facts``; ``as_of`` is the order's reference date.

    ``conditions`` / ``procedures`` (raw JSON) give the fracture and augmented levels their
    text names. Returns an empty reading when the knowledge has no reading part.
    """
    k = knowledge.reading
    if k is None:
        return OrderReading(unavailable=text.unavailable)
    now = reading_time(as_of)
    evidence: dict[str, list[Evidence]] = {}
    imaging: ImagingFacts | None = None
    unplaced: tuple[Evidence, ...] = ()
    same: tuple[ReportReading, ...] = ()
    skipped: tuple[SkippedContent, ...] = ()
    if REPORTS_KEY not in text.unavailable:
        read = text.once(("reports", as_of), lambda: read_reports(text.reports, now=now, knowledge=k,
                                                                  lookback_days=_lookback(k, REPORTS_KEY, 365)))
        skipped = read.skipped
        fracture_levels: tuple[str, ...] = ()
        augmented_levels: tuple[str, ...] = ()
        if any(r.findings for r in read.readings):
            by_ref = _by_reference(text, conditions, procedures)
            current = facts.evidence.get(ComputedFact.VCF_CURRENT) or facts.evidence.get(Fact.VCF, ())
            fracture_levels = _levels(k, text, by_ref, current)
            augmented_levels = _levels(k, text, by_ref, facts.evidence.get(Fact.AUGMENTATION_HISTORY, ()))
        imaging, edema, unplaced, incidental = text.once(
            ("imaging", as_of, fracture_levels, augmented_levels),
            lambda: _imaging(k, read, now, fracture_levels, augmented_levels))
        if edema:
            evidence[Fact.MARROW_EDEMA] = list(edema)
        if incidental and not _recent_back_pain(facts, as_of, k.imaging.recentMriDays):
            evidence.setdefault(Fact.ASYMPTOMATIC, []).extend(incidental)
        if procedure is not None and procedure.kind == "imaging":
            loinc = next((str(c["code"]) for c in (order.get("code") or {}).get("coding") or ()
                          if isinstance(c, Mapping) and c.get("system") == LOINC and isinstance(c.get("code"), str)), None)
            same = same_study_recently(read.readings, now=now, loinc=loinc, modality=procedure.modality,
                                       region=region, knowledge=k)
    meds: tuple[MedicationFact, ...] = ()
    if not all(key in text.unavailable for key in MEDICATION_KEYS):
        def read_meds() -> tuple[tuple[MedicationFact, ...], tuple[tuple[Fact, Evidence], ...]]:
            referenced = {f"Medication/{m.get('id')}": m for m in text.medications
                          if m.get("resourceType") == "Medication"}
            found = read_medications(text.medications, now=now, knowledge=k, medications=referenced)
            return found, _medication_evidence(k, found)
        meds, shown = text.once(("medications", as_of), read_meds)
        for fact, ev in shown:
            evidence.setdefault(fact, []).append(ev)
    labs: tuple[LabJudgement, ...] = ()
    if LABS_KEY not in text.unavailable and procedure is not None:
        values = text.once(("labs", as_of), lambda: read_labs(text.observations, now=now, knowledge=k))
        labs = out_of_range_for_procedure(values, procedure.id, k)
    return OrderReading(imaging, same, meds, labs, skipped, text.unavailable,
                        MappingProxyType({f: tuple(evs) for f, evs in evidence.items()}), unplaced)


def with_reading(knowledge: Knowledge, facts: FactSet, reading: OrderReading) -> FactSet:
    """``facts`` plus the reading's evidence, derived facts (``facts.json`` ``derived``)
    recomputed so that e.g. an anticoagulant makes ``bleeding-risk`` hold."""
    if not reading.evidence:
        return facts
    merged = {f: tuple(evs) for f, evs in facts.evidence.items()}
    for fact, evs in reading.evidence.items():
        merged[fact] = (*merged.get(fact, ()), *evs)
    for d in knowledge.derived.values():
        evs = tuple(e for a in d.anyOf for e in merged.get(a, ()))
        if evs:
            merged[d.id] = evs
    return FactSet(MappingProxyType(merged))
