"""Facts from the record, and the ACR variant they select (product decision).

Pure functions over raw FHIR JSON (already validated by ``fhir_input``) and the frozen
:class:`~cds_service.decision.knowledge.Knowledge`. Every fact keeps its evidence: the resource
and the code that produced it, so cards and audit records can show why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import partial
from itertools import chain
from types import MappingProxyType
from typing import Literal

from cds_service.decision.contract import RED_FLAG_ROUTING, ComputedFact, Fact
from cds_service.decision.frozen import replaced
from cds_service.decision.knowledge import Knowledge, Variant
from cds_service.decision.terminology import ICD10CM

ACTIVE_CLINICAL = frozenset({"active", "recurrence", "relapse"})
EXCLUDED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
EXCLUDED_PROCEDURE_STATUS = frozenset({"entered-in-error", "not-done", "preparation"})


@dataclass(frozen=True)
class Evidence:
    """Why a fact holds: ``resource`` is ``Type/id`` (``Type/id#reasonCode`` for an order's
    reason), ``code`` the matched (system, code, display), ``valueset`` the matching set.
    ``origin`` is the element it came from; ``current_encounter`` is True for a Condition
    that is an encounter diagnosis of the order's encounter; ``onset`` (Conditions) or the
    performed date (Procedures) dates it. Origins ``report`` and ``medication`` come from the
    record reading (:mod:`cds_service.decision.record_reading`): a report's ``display`` is
    the sentence read (unconfirmed), its ``onset`` the report date; a medication's the
    order or statement date."""

    fact: str
    resource: str
    system: str
    code: str
    display: str | None
    valueset: str
    unconfirmed: bool = False
    encounter: Literal["initial", "subsequent"] | None = None
    onset: date | None = None
    origin: Literal["condition", "procedure", "reasonCode", "report", "medication"] = "condition"
    current_encounter: bool = False


@dataclass(frozen=True)
class FactSet:
    """Facts (base, derived and acuity facts) -> their evidence, in record order."""

    evidence: Mapping[str, tuple[Evidence, ...]] = field(default_factory=dict)

    def has(self, fact: str) -> bool:
        return bool(self.evidence.get(fact))

    def __contains__(self, fact: str) -> bool:
        return self.has(fact)

    def all_evidence(self) -> tuple[Evidence, ...]:
        seen: dict[tuple, Evidence] = {}
        for evs in self.evidence.values():
            for e in evs:
                seen.setdefault((e.fact, e.resource, e.system, e.code), e)
        return tuple(seen.values())


def _codings(concept: object) -> Iterable[dict]:
    if isinstance(concept, dict):
        for c in concept.get("coding") or ():
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                yield c


def _status_code(concept: object) -> str | None:
    """The first coding's code (as :func:`_codings` would yield it), without a generator:
    run twice for every Condition of the record."""
    if isinstance(concept, dict):
        for c in concept.get("coding") or ():
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                return c["code"]
    return None


def _to_date(value: object) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def reference_date(order_raw: Mapping) -> date:
    """The date acuity is measured against: the order's ``authoredOn``, else today (UTC)."""
    return _to_date(order_raw.get("authoredOn")) or datetime.now(UTC).date()


def is_active_condition(raw: Mapping) -> bool:
    """clinicalStatus active / recurrence / relapse, and not refuted or entered-in-error
    (FHIR R4 Condition)."""
    if _status_code(raw.get("verificationStatus")) in EXCLUDED_VERIFICATION:
        return False
    return _status_code(raw.get("clinicalStatus")) in ACTIVE_CLINICAL


def _encounter(knowledge: Knowledge, system: str, code: str) -> Literal["initial", "subsequent"] | None:
    """ICD-10-CM 7th character of a fracture code: A initial, D/G/K/P/S subsequent."""
    if system != ICD10CM:
        return None
    bare = code.replace(".", "").upper()
    if len(bare) != 7:
        return None
    if bare[-1] in knowledge.acuity.initialCharacters:
        return "initial"
    if bare[-1] in knowledge.acuity.subsequentCharacters:
        return "subsequent"
    return None


_FACT_ORIGIN = {"Condition": "condition", "Procedure": "procedure"}
ENCOUNTER_DIAGNOSIS = "encounter-diagnosis"  # FHIR R4 condition-category code


def _reference_tail(ref: object) -> str | None:
    """``Encounter/x`` from ``Encounter/x``, ``https://ehr/fhir/Encounter/x`` or ``.../_history/2``."""
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    parts = ref["reference"].split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


def _is_encounter_diagnosis_of(raw: Mapping, encounter: str | None) -> bool:
    """A Condition categorised ``encounter-diagnosis`` whose ``encounter`` is the order's."""
    if encounter is None or _reference_tail(raw.get("encounter")) != encounter:
        return False
    return any(c["code"] == ENCOUNTER_DIAGNOSIS for cat in raw.get("category") or () for c in _codings(cat))


def yields_facts(knowledge: Knowledge, resource_type: str, raw: Mapping) -> bool:
    """Whether :func:`extract_facts` can draw a fact from this prefetched resource.

    For a Condition or Procedure: one of its ``code.coding`` is in a value set that defines
    a fact for that resource type (``facts.json``). That code is all the decision reads to
    find a fact, so a resource without one cannot change any decision and need not be
    validated (``fhir_input.parse_order_select(reads=...)``). True for every other type.
    ``raw`` may be unvalidated JSON: anything but a string system or code is ignored.
    """
    origin = _FACT_ORIGIN.get(resource_type)
    if origin is None:
        return True
    idx, term = knowledge.fact_index, knowledge.terminology
    return any(idx.get((vs, origin)) for c in _codings(raw.get("code")) if isinstance(c.get("system"), str)
               for vs in term.memberships(c["system"], c["code"]))


# One fact's evidence for one order as runs, in order: tuples of the record's evidence (shared
# by the orders of the call) and of the order's own reasonCode evidence; no run is empty.
_Runs = tuple[tuple[Evidence, ...], ...]


_TEMPLATES_MAX = 20_000  # distinct codings whose evidence a Knowledge keeps


def _joined(runs: _Runs) -> tuple[Evidence, ...]:
    return runs[0] if len(runs) == 1 else tuple(chain.from_iterable(runs))


class RecordFacts:
    """The patient's record read once per call, and the facts of each order of the call.

    A request may select up to ``MAX_DRAFT_ORDERS`` orders over the same Conditions and
    Procedures. Each resource is read once here (status, date, codes); each distinct coding
    is looked up in the value sets once (an index (origin, system, code, display) -> the
    evidence it yields, kept across calls), so thousands of Conditions repeating a few dozen
    codes cost a dict lookup each. The only thing a record's base evidence owes to the order is which
    Conditions are encounter diagnoses of the order's encounter (``current_encounter``), so
    it is assembled once per encounter; what an order's date decides (recency, acuity,
    current fracture) is worked out once per (record evidence, date) and shared by the
    orders of that date. :meth:`facts_for` then adds only the order's own reasonCode.
    ``conditions`` / ``procedures`` are raw FHIR R4 JSON dicts, as for :func:`extract_facts`.
    """

    def __init__(self, knowledge: Knowledge, *, conditions: Iterable[Mapping], procedures: Iterable[Mapping]):
        self._knowledge = knowledge
        # Fact -> its evidence in record order (current_encounter False), and per encounter
        # the places in those lists of its encounter diagnoses' evidence.
        self._found: dict[str, list[Evidence]] = {}
        self._diagnoses: dict[str, dict[str, list[int]]] = {}
        self._by_encounter: dict[str | None, Mapping[str, tuple[Evidence, ...]]] = {}
        # Runs of record evidence, held here (by base_evidence or _tested) so that their ids
        # stay unique: (id(run), test) -> what the test keeps of the run.
        self._shared: set[int] = set()
        self._tested: dict[tuple, tuple[Evidence, ...]] = {}
        # (encounter, date) -> the facts of an order with no reasonCode fact.
        self._plain: dict[tuple[str | None, date], FactSet] = {}
        self._variants: dict[tuple[frozenset[str], str], VariantChoice] = {}
        for raw in conditions:
            if is_active_condition(raw):
                onset = _to_date(raw.get("onsetDateTime")) or _to_date((raw.get("onsetPeriod") or {}).get("start"))
                encounter = _reference_tail(raw.get("encounter"))
                self._read("condition", f"Condition/{raw.get('id')}", raw.get("code"), onset,
                           encounter if _is_encounter_diagnosis_of(raw, encounter) else None)
        for raw in procedures:
            if raw.get("status") not in EXCLUDED_PROCEDURE_STATUS:
                performed = (_to_date(raw.get("performedDateTime"))
                             or _to_date((raw.get("performedPeriod") or {}).get("start")))
                self._read("procedure", f"Procedure/{raw.get('id')}", raw.get("code"), performed, None)

    def base_evidence(self, order_encounter: str | None) -> Mapping[str, tuple[Evidence, ...]]:
        """Fact -> evidence from the record, in record order, for an order of encounter
        ``order_encounter`` (``Encounter/<id>``, or None): one read-only mapping per encounter,
        shared by its orders."""
        cached = self._by_encounter.get(order_encounter)
        if cached is None:
            found = {f: tuple(evs) for f, evs in self._found.items()}
            for f, places in (self._diagnoses.get(order_encounter, {}) if order_encounter else {}).items():
                marked = list(found[f])
                for i in places:
                    marked[i] = replace(marked[i], current_encounter=True)
                found[f] = tuple(marked)
            for run in found.values():
                self._share(run)
            cached = self._by_encounter[order_encounter] = MappingProxyType(found)
        return cached

    def facts_for(self, order: Mapping, as_of: date) -> FactSet:
        """The facts of ``order`` (raw ServiceRequest JSON) on ``as_of``: :func:`extract_facts`."""
        k = self._knowledge
        encounter = _reference_tail(order.get("encounter"))
        reasons: dict[str, list[Evidence]] = {}
        order_ref = f"{order.get('resourceType', 'ServiceRequest')}/{order.get('id')}#reasonCode"
        for reason in order.get("reasonCode") or ():
            for c in _codings(reason):
                for e in self._template("reasonCode", c):
                    reasons.setdefault(e.fact, []).append(replaced(e, Evidence, resource=order_ref))
        if not reasons and (encounter, as_of) in self._plain:
            return self._plain[(encounter, as_of)]
        runs: dict[str, _Runs] = {f: (evs,) for f, evs in self.base_evidence(encounter).items()}
        for f, found in reasons.items():
            runs[f] = (*runs.get(f, ()), tuple(found))
        base = dict(runs)
        for q in k.qualified.values():
            if q.requires and not any(r in base for r in q.requires):
                continue
            days = q.recentWithinDays
            kept = base.get(q.of, ()) if days is None else self._kept(
                base.get(q.of, ()), ("recent", as_of, days), partial(_is_recent, as_of=as_of, within_days=days))
            if kept:
                runs[q.id] = kept
        for d in k.derived.values():
            joined: _Runs = ()
            for a in d.anyOf:
                joined += runs.get(a, ())
            if joined:
                runs[d.id] = joined
        acu = k.acuity
        vcf_runs = [run for f in acu.vcfFacts for run in runs.get(f, ())]
        new = self._kept(vcf_runs, ("new", as_of), lambda e: _acuity(k, e, as_of) == "new")
        prior = (*(run for f in acu.priorFacts for run in runs.get(f, ())),
                 *self._kept(vcf_runs, ("prior", as_of), lambda e: _acuity(k, e, as_of) == "prior"))
        if new:
            runs[ComputedFact.VCF_NEW.value] = new
        if prior:
            runs[ComputedFact.VCF_PRIOR.value] = prior
        current = self._kept([run for f in acu.vcfFacts for run in runs.get(f, ())], ("current", as_of),
                             lambda e: _is_current(k, e, as_of))
        if current:
            runs[ComputedFact.VCF_CURRENT.value] = current
        facts = FactSet(MappingProxyType({f: _joined(r) for f, r in runs.items()}))
        if not reasons:
            self._plain[(encounter, as_of)] = facts
        return facts

    def variant(self, facts: FactSet, order_kind: str) -> VariantChoice:
        """:func:`choose_variant` for ``facts`` (of an order of this call), worked out once
        per call for each set of facts present and order kind: the orders of a call mostly
        share both, and the choice reads nothing else."""
        key = (frozenset(f for f, evs in facts.evidence.items() if evs), order_kind)
        choice = self._variants.get(key)
        if choice is None:
            choice = self._variants[key] = choose_variant(self._knowledge, facts, order_kind)
        return choice

    def _kept(self, runs: Iterable[tuple[Evidence, ...]], test: tuple,
              keep: Callable[[Evidence], bool]) -> _Runs:
        """What ``keep`` keeps of each run, empty runs dropped. ``test`` names ``keep`` with
        the date it depends on: a run of the record's evidence is tested once per call and
        date (an order's own reasonCode run, a few codes, each time)."""
        out = []
        for run in runs:
            if id(run) in self._shared:
                key = (id(run), test)
                kept = self._tested.get(key)
                if kept is None:
                    kept = self._tested[key] = self._share(tuple(filter(keep, run)))
            else:
                kept = tuple(filter(keep, run))
            if kept:
                out.append(kept)
        return tuple(out)

    def _share(self, run: tuple[Evidence, ...]) -> tuple[Evidence, ...]:
        """Mark ``run`` as record evidence held by this object (its id stays unique while held)."""
        self._shared.add(id(run))
        return run

    def _template(self, origin: Literal["condition", "procedure", "reasonCode"], c: dict) -> tuple[Evidence, ...]:
        """The evidence one coding yields from ``origin``, for no resource and no date (to be
        stamped with them): thousands of Conditions repeat a few dozen codings, and calls the
        same ones, so each is looked up in the value sets once per knowledge
        (``Knowledge.evidence_templates``; codes come from requests: bounded, cleared when full)."""
        templates = self._knowledge.evidence_templates
        key = (origin, c.get("system") or "", c["code"], c.get("display"))
        template: tuple[Evidence, ...] | None = templates.get(key)
        if template is None:
            looked: dict[str, list[Evidence]] = {}
            _add_facts(self._knowledge, looked, origin, "", {"coding": [c]}, None)
            # Grouped by fact: appended fact by fact, the lists come out the same.
            template = tuple(e for evs in looked.values() for e in evs)
            if len(templates) >= _TEMPLATES_MAX:
                templates.clear()
            templates[key] = template
        return template

    def _read(self, origin: Literal["condition", "procedure"], resource: str, concept: object,
              onset: date | None, diagnosis_of: str | None) -> None:
        """Add the evidence of one resource's codes; ``diagnosis_of``: the encounter it is an
        encounter diagnosis of."""
        found = self._found
        places = self._diagnoses.setdefault(diagnosis_of, {}) if diagnosis_of is not None else None
        # The codings _codings() yields, without a generator: run for every resource read.
        for c in (concept.get("coding") or () if isinstance(concept, dict) else ()):
            if not isinstance(c, dict) or not isinstance(c.get("code"), str):
                continue
            for e in self._template(origin, c):
                evs = found.setdefault(e.fact, [])
                if places is not None:
                    places.setdefault(e.fact, []).append(len(evs))
                evs.append(replaced(e, Evidence, resource=resource, onset=onset))


def extract_facts(
    knowledge: Knowledge,
    *,
    conditions: Iterable[Mapping],
    procedures: Iterable[Mapping],
    order: Mapping,
    as_of: date,
    record: RecordFacts | None = None,
) -> FactSet:
    """Collect facts from active Conditions, completed Procedures and the order's reasonCode.

    ``conditions`` / ``procedures`` / ``order`` are raw FHIR R4 JSON dicts. ``as_of`` is the
    reference date for onset-based acuity (``reference_date``). Returns a :class:`FactSet`
    with, in this order: base facts (value sets), qualified facts (a base fact's evidence
    that passes a context or recency test: fragility fracture, new neurologic symptom,
    recent worsening; ICD-10-CM Official Guidelines I.C.13.d.2, product decisions), derived facts,
    and ``vcf-new`` / ``vcf-prior`` / ``vcf-current`` (CMS LCD L34228 acute / subacute).

    ``record``: the same ``conditions`` and ``procedures`` already read once for every order
    of the request (:class:`RecordFacts`); the facts are the same with or without it.
    """
    if record is None:
        record = RecordFacts(knowledge, conditions=conditions, procedures=procedures)
    return record.facts_for(order, as_of)


def _is_recent(e: Evidence, as_of: date, within_days: int) -> bool:
    """Stated now (the order's reasonCode, an encounter diagnosis of the order's encounter)
    or with onset at most ``within_days`` before ``as_of``; no onset is not recent."""
    if e.origin == "reasonCode" or e.current_encounter:
        return True
    return e.onset is not None and (as_of - e.onset).days <= within_days


def _is_current(knowledge: Knowledge, e: Evidence, as_of: date) -> bool:
    """VCF evidence of a current fracture: not a sequela (7th character S) and, when the
    onset is known, not older than ``acuity.currentWithinDays`` (a product decision; CMS LCD L34228
    covers acute and subacute fractures)."""
    acu = knowledge.acuity
    bare = e.code.replace(".", "").upper()
    if e.system == ICD10CM and len(bare) == 7 and bare[-1] in acu.sequelaCharacters:
        return False
    return e.onset is None or (as_of - e.onset).days <= acu.currentWithinDays


def _add_facts(knowledge: Knowledge, found: dict[str, list[Evidence]],
               origin: Literal["condition", "procedure", "reasonCode"], resource: str, concept: object,
               onset: date | None, current: bool = False) -> None:
    """Add the facts ``concept``'s codings yield from ``origin`` (facts.json ``from``);
    ``current``: the resource is an encounter diagnosis of the order's encounter."""
    term = knowledge.terminology
    for c in _codings(concept):
        system, code = c.get("system") or "", c["code"]
        for vs in term.memberships(system, code):
            for fact in knowledge.fact_index.get((vs, origin), ()):
                concept_def = term.concept(vs, system, code)
                found.setdefault(fact, []).append(Evidence(
                    fact=fact, resource=resource, system=system, code=code,
                    display=c.get("display") or (concept_def.display if concept_def else None),
                    valueset=vs, unconfirmed=bool(concept_def and concept_def.unconfirmed),
                    encounter=_encounter(knowledge, system, code), onset=onset, origin=origin,
                    current_encounter=current))


def _acuity(knowledge: Knowledge, e: Evidence, as_of: date) -> Literal["new", "prior"] | None:
    """A VCF evidence's acuity (ICD-10-CM 7th character): the encounter its code names
    (initial: new, subsequent: prior), else its onset within ``acuity.newWithinDays`` (new)
    or before (prior); None when neither is known."""
    if e.encounter == "initial":
        return "new"
    if e.encounter == "subsequent":
        return "prior"
    if e.onset is not None:
        return "new" if (as_of - e.onset).days <= knowledge.acuity.newWithinDays else "prior"
    return None


@dataclass(frozen=True)
class VariantChoice:
    """Outcome of variant inference for one order kind.

    ``status``: ``selected`` (``variant`` set), ``red-flag`` (neurologic red flag; ``variant``
    is the routing variant for imaging, None for treatment), ``excluded`` (traumatic fracture,
    outside the criteria), ``missing`` (``missing`` lists alternatives of missing facts,
    ``open`` every variant still possible), ``conflict`` (``candidates`` lists the variants
    that all fit), ``out-of-scope`` (nothing in the record concerns a vertebral fracture or a
    red flag). The engine adds ``agreed`` (``candidates`` all rate the order alike, ``variant``
    is the first of them) and ``contraindicated`` (an absolute exclusion of the ordered
    procedure, e.g. infection for augmentation: no rating).
    """

    status: Literal["selected", "red-flag", "excluded", "missing", "conflict", "out-of-scope", "agreed",
                    "contraindicated"]
    variant: Variant | None = None
    candidates: tuple[Variant, ...] = ()
    missing: tuple[tuple[str, ...], ...] = ()
    open: tuple[Variant, ...] = ()


def _fits(v: Variant, facts: FactSet) -> bool:
    return all(f in facts for f in v.criteria.all) and not any(f in facts for f in v.criteria.none)


def choose_variant(knowledge: Knowledge, facts: FactSet, order_kind: str) -> VariantChoice:
    """Pick the ACR variant for an order of ``order_kind`` ('imaging' | 'treatment').

    Red flags outrank every variant (IR teaching cases); a traumatic fracture is
    outside the criteria (IR teaching case on osteoporotic VCF with edema); otherwise exactly one variant must fit, else the order is
    not rated and the missing or conflicting facts are reported (§3.3).
    """
    if Fact.NEURO_RED_FLAG in facts:
        routed = [v for v in knowledge.variants.values()
                  if v.routing == RED_FLAG_ROUTING and v.orderKind == order_kind and _fits(v, facts)]
        return VariantChoice("red-flag", variant=routed[0] if routed else None)
    # A traumatic code read as a fragility fracture stays in the criteria (ICD-10-CM I.C.13.d.2).
    if Fact.VCF_TRAUMATIC in facts and Fact.VCF_FRAGILITY not in facts:
        return VariantChoice("excluded")
    if not (Fact.VCF in facts or ComputedFact.VCF_PRIOR in facts):
        return VariantChoice("out-of-scope")
    pool = [v for v in knowledge.variants.values() if v.orderKind == order_kind and v.routing is None]
    fitting = [v for v in pool if _fits(v, facts)]
    if len(fitting) == 1:
        return VariantChoice("selected", variant=fitting[0])
    if fitting:
        return VariantChoice("conflict", candidates=tuple(fitting))
    open_variants = [v for v in pool if not any(f in facts for f in v.criteria.none)
                     and all(knowledge.askable(f) for f in v.criteria.all if f not in facts)]
    gaps = [tuple(f for f in v.criteria.all if f not in facts) for v in open_variants]
    if not gaps:
        return VariantChoice("missing")
    fewest = min(len(g) for g in gaps)
    missing = tuple(dict.fromkeys(g for g in gaps if len(g) == fewest))
    return VariantChoice("missing", candidates=tuple(v for v, g in zip(open_variants, gaps, strict=False) if len(g) == fewest),
                         missing=missing, open=tuple(open_variants))
