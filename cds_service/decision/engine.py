"""The decision: selected orders + record + knowledge -> variant, rating and advisories.

Pure (no Flask, no I/O). Implements the product's scenario inference (classification, facts, variant)
and the clinical rules that attach to the ordered procedure (augmentation contraindications
and reminders, MRI after vertebral augmentation, steering to IR).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from cds_service.decision.contract import (
    AUGMENTATION,
    MRI_MODALITY,
    NO_CRITERIA_APPLY,
    NOT_APPROPRIATE,
    OFFICIAL,
    USUALLY_APPROPRIATE,
    Advisory,
    Fact,
    PamaRating,
)
from cds_service.decision.knowledge import Knowledge, Procedure, Rating, Region, Variant
from cds_service.decision.record_reading import OrderReading, RecordText, read_order, with_reading
from cds_service.decision.scenario import (
    Evidence,
    FactSet,
    RecordFacts,
    VariantChoice,
    choose_variant,
    extract_facts,
    reference_date,
)

RATED_STATUSES = frozenset({"draft", "active", "on-hold"})
# The draft order types the classifier can rate: it reads ``code.coding``, which among the
# order-select draft order types (DeviceRequest, MedicationRequest, NutritionOrder,
# ServiceRequest, VisionPrescription; CDS Hooks order-select 1.0) only ServiceRequest has.
# Imaging, vertebral augmentation and consultations are all ServiceRequests in FHIR R4.
RATED_ORDER_TYPES = frozenset({"ServiceRequest"})


@dataclass(frozen=True)
class OrderClass:
    """What an order is: the ACR procedure and spine region its codes name (None if unknown)
    and the coding that identified the procedure."""

    procedure: Procedure | None
    region: Region | None
    coding: Mapping | None


@dataclass(frozen=True)
class OrderDecision:
    """The decision for one selected order.

    ``ref`` is ``ServiceRequest/<id>``; ``raw`` the order as sent. ``choice`` is None when
    the order itself is out of scope (no procedure). ``rating`` is the ACR cell for the
    ordered procedure in the chosen variant; ``pama`` the Argonaut rating code, None when no
    rating can be determined (the order then SHALL NOT appear in rating actions,
    Argonaut 'CDS Hooks for PAMA'), also when the order misses the fractured region or the site sends
    only OFFICIAL ratings. ``alternatives`` are the variant's Usually appropriate procedures
    other than the one ordered, in table order. ``fracture_regions`` are the spine regions
    the record's fracture codes name (M48.5-, S22.0-, S32.0-). ``reading`` is what the
    radiology reports, medications and labs said for this order (its facts are already in
    ``facts``), None when the order was not read.
    """

    ref: str
    raw: Mapping
    order_class: OrderClass
    facts: FactSet
    choice: VariantChoice | None
    rating: Rating | None
    pama: PamaRating | None
    alternatives: tuple[Rating, ...]
    advisories: tuple[Advisory, ...]
    fracture_regions: tuple[Region, ...] = ()
    reading: OrderReading | None = None

    @property
    def variant(self) -> Variant | None:
        return self.choice.variant if self.choice else None


@dataclass(frozen=True)
class Decision:
    """All selected orders' decisions plus the response-wide red-flag escalation.

    ``red_flags`` is the evidence of neurologic red flags (empty: none); ``red_flag_missing``
    the procedures (red-flag MRI, spine-surgery consultation) not already among the draft
    orders, which the critical card suggests ordering.
    """

    orders: tuple[OrderDecision, ...]
    red_flags: tuple[Evidence, ...]
    red_flag_missing: tuple[Procedure, ...]
    red_flag_region: Region | None


def classify_order(knowledge: Knowledge, raw: Mapping) -> OrderClass:
    """Classify an order by its ``code.coding`` (CPT, LOINC, SNOMED CT)."""
    term = knowledge.terminology
    procedure = region = coding = None
    by_vs, region_by_vs = knowledge.procedure_by_valueset, knowledge.region_by_valueset
    code = raw.get("code")
    if not isinstance(code, Mapping):
        code = {}
    for c in code.get("coding") or ():
        if not isinstance(c, dict):
            continue
        for vs in term.memberships(c.get("system"), c.get("code")):
            if procedure is None and vs in by_vs:
                procedure, coding = by_vs[vs], c
            if region is None and vs in region_by_vs:
                region = region_by_vs[vs]
    return OrderClass(procedure, region, coding)


def _rating(variant: Variant | None, oc: OrderClass) -> Rating | None:
    if variant is None or oc.procedure is None:
        return None
    if variant.regions and (oc.region is None or oc.region.id not in variant.regions):
        return None
    return variant.rating_for(oc.procedure.id)


def fracture_regions(knowledge: Knowledge, facts: FactSet) -> tuple[Region, ...]:
    """Regions named by the record's vertebral fracture codes (ICD-10-CM code titles)."""
    term = knowledge.terminology
    # Each distinct code once: a long record repeats a few codes thousands of times.
    codes = {(e.system, e.code) for f in (*knowledge.acuity.vcfFacts, Fact.VCF_TRAUMATIC)
             for e in facts.evidence.get(f, ())}
    # Membership is the terminology's (memoised) index, the same answer as ValueSetDef.contains.
    named = {vs for system, code in codes for vs in term.memberships(system, code)}
    return tuple(r for r in knowledge.regions if r.fractureValueSet is not None and r.fractureValueSet in named)


def region_mismatch(oc: OrderClass, fractured: Sequence[Region]) -> bool:
    """The order names a region and the record names fractured regions, none of them covered."""
    return oc.region is not None and bool(fractured) and not any(r.id in oc.region.covers for r in fractured)


def _agreement(choice: VariantChoice, oc: OrderClass, facts: FactSet) -> VariantChoice | None:
    """Rate when every variant the facts leave open rates the order alike (product
    decision: V2/V4 MRI without and with contrast UA, V6/V7 ablation UNA).

    Variants that all fit (``conflict``) agree on any rating. Open variants (``missing``)
    agree on a Usually not appropriate rating outright; on any other rating only when they
    cover every case: each one's missing facts are excluded by all the others (V2 needs back
    pain, which V4 excludes; V4 needs 'asymptomatic', which V2 excludes). Otherwise the
    patient might fit none of them and an 'appropriate' would be a guess (V6 needs marrow
    edema, V7 recent worsening: a fracture with neither is in neither).
    """
    if choice.status == "conflict":
        pool, exhaustive = choice.candidates, True
    elif choice.status == "missing" and len(choice.open) > 1:
        pool = choice.open
        exhaustive = all(f in other.criteria.none for v in pool for other in pool if other is not v
                         for f in v.criteria.all if f not in facts)
    else:
        return None
    ratings = [_rating(v, oc) for v in pool]
    categories = {r.category for r in ratings if r is not None}
    if None in ratings or len(categories) != 1:
        return None
    if categories != {"UNA"} and not exhaustive:
        return None
    return VariantChoice("agreed", variant=pool[0], candidates=tuple(pool))


def _advisories(knowledge: Knowledge, oc: OrderClass, facts: FactSet, choice: VariantChoice,
                rating: Rating | None, mismatch: bool = False,
                reading: OrderReading | None = None) -> tuple[Advisory, ...]:
    p = oc.procedure
    if p is None:
        return ()
    out: list[Advisory] = []
    if mismatch:
        out.append(Advisory.REGION_MISMATCH)
    if Fact.VCF_FRAGILITY in facts:
        out.append(Advisory.FRAGILITY_READING)
    if p.category == AUGMENTATION:
        out += _augmentation_advisories(facts, choice, reading)
    if p.modality == MRI_MODALITY and Fact.AUGMENTATION_HISTORY in facts:
        out.append(Advisory.POST_AUGMENTATION_MRI)
    if _steer_to_ir(knowledge, p, choice.variant, rating):
        out.append(Advisory.STEER_IR)
    if reading is not None and reading.same_study:
        out.append(Advisory.SAME_STUDY_RECENTLY)
    return tuple(out)


def _augmentation_advisories(facts: FactSet, choice: VariantChoice,
                             reading: OrderReading | None = None) -> list[Advisory]:
    """Contraindications to vertebral augmentation on record (infection first: an absolute
    exclusion), then reminders of what the routine pathway needs first (CMS LCD
    L34228; IR case presentation; IR teaching cases). An INR or platelet count outside the SIR threshold
    (``reading.labs``) is a bleeding item too; the 'no MRI evidence' reminder is left out
    when a spine MRI report was read (its findings decided the variant)."""
    out = [advisory for fact, advisory in ((Fact.INFECTION, Advisory.AUGMENT_INFECTION),
                                           (Fact.BLEEDING_RISK, Advisory.AUGMENT_BLEEDING),
                                           (Fact.NEURO_RED_FLAG, Advisory.AUGMENT_NEURO),
                                           (Fact.ASYMPTOMATIC, Advisory.AUGMENT_ASYMPTOMATIC)) if fact in facts]
    if reading is not None and reading.labs and Advisory.AUGMENT_BLEEDING not in out:
        out.insert(1 if Fact.INFECTION in facts else 0, Advisory.AUGMENT_BLEEDING)
    # Reminders belong to the routine pathway; a red flag or an infection has already taken
    # the patient out of it (IR teaching cases; CMS LCD L34228), and the critical card says what
    # to do instead.
    if Fact.NEURO_RED_FLAG in facts or Fact.INFECTION in facts:
        return out
    named_missing = any(Fact.MARROW_EDEMA in gap for gap in choice.missing)
    # Reports read and no spine MRI among them: the MRI is the next step (IR teaching case FAQ;
    # IR case presentation, takeaway 2), said on the checklist even beside the card asking for the fact.
    mri_read = reading is not None and reading.reports_read and not reading.no_spine_mri
    no_mri = reading is not None and reading.no_spine_mri
    if Fact.MARROW_EDEMA not in facts and not mri_read and (no_mri or not named_missing):
        out.append(Advisory.AUGMENT_NO_EDEMA)
    # Rule §2.6 concerns osteoporotic fractures; a pathologic fracture has other care.
    if Fact.OSTEOPOROTIC in facts and Fact.OSTEOPOROSIS_THERAPY not in facts:
        out.append(Advisory.AUGMENT_NO_THERAPY)
    return out


def _steer_to_ir(knowledge: Knowledge, p: Procedure, v: Variant | None, rating: Rating | None) -> bool:
    """A UA treatment order gets no warning, but augmentation may be the UA option the
    clinician did not pick; UNA/MBA orders carry the IR referral among their suggestions."""
    if p.kind != "treatment" or p.category == AUGMENTATION or rating is None or rating.category != USUALLY_APPROPRIATE:
        return False
    aug_rating = v.rating_for(knowledge.preferred.augmentation) if v is not None else None
    return aug_rating is not None and aug_rating.category == USUALLY_APPROPRIATE


def decide_order(knowledge: Knowledge, raw: Mapping, *, conditions: Sequence[Mapping],
                 procedures: Sequence[Mapping], as_of: date | None = None,
                 pama_official_only: bool = False, record: RecordFacts | None = None,
                 text: RecordText | None = None) -> OrderDecision:
    """Decide one order (raw FHIR ServiceRequest JSON) against the patient's record.

    ``text``: radiology reports, medications and labs to read
    (:func:`cds_service.decision.record_reading.read_order`); their facts join the coded ones
    before the variant is chosen. None: nothing beyond codes is read.

    ``pama_official_only``: send a PAMA rating only for a cell the ACR's own published table
    gives (provenance OFFICIAL); SEED and SECONDARY cells, and 'no criteria apply', are then
    not sent (setting ``PAMA_OFFICIAL_ONLY``). ``record``: ``conditions`` and ``procedures``
    already read (:class:`~cds_service.decision.scenario.RecordFacts`), shared by the
    orders of one request.
    """
    ref = f"{raw.get('resourceType', 'ServiceRequest')}/{raw.get('id')}"
    # Only orders still being placed are rated; a revoked, completed or entered-in-error
    # request is not a decision the clinician is making now.
    oc = classify_order(knowledge, raw) if raw.get("status", "draft") in RATED_STATUSES else OrderClass(None, None, None)
    day = as_of or reference_date(raw)
    facts = extract_facts(knowledge, conditions=conditions, procedures=procedures, order=raw, as_of=day,
                          record=record)
    if oc.procedure is None:
        return OrderDecision(ref, raw, oc, facts, None, None, None, (), ())
    reading = None
    if text is not None:
        reading = read_order(knowledge, text, procedure=oc.procedure, order=raw,
                             region=oc.region.id if oc.region else None, facts=facts, conditions=conditions,
                             procedures=procedures, as_of=day)
        facts = with_reading(knowledge, facts, reading)
    choice = record.variant(facts, oc.procedure.kind) if record is not None else choose_variant(
        knowledge, facts, oc.procedure.kind)
    choice = _agreement(choice, oc, facts) or choice
    if oc.procedure.category == AUGMENTATION and Fact.INFECTION in facts:
        # Active infection is an absolute exclusion for augmentation (LCD L34228):
        # no ACR cell applies, so no rating beside the critical card.
        choice = VariantChoice("contraindicated")
    rating = _rating(choice.variant, oc)
    pama: PamaRating | None = None
    if rating is not None:
        pama = knowledge.pama_for(rating.category)
    elif choice.variant is not None:
        pama = NO_CRITERIA_APPLY
    fractured = fracture_regions(knowledge, facts)
    mismatch = region_mismatch(oc, fractured)
    if mismatch and pama != NOT_APPROPRIATE:
        # An order that misses the fractured region is not the study or treatment the
        # variant rates (product decision): no 'appropriate', a warning instead.
        pama = None
    if pama_official_only and (rating is None or rating.provenance != OFFICIAL):
        pama = None
    alternatives: tuple[Rating, ...] = ()
    if choice.variant is not None:
        alternatives = tuple(r for r in choice.variant.ratings
                             if r.category == USUALLY_APPROPRIATE and r.procedure != oc.procedure.id)
    return OrderDecision(ref, raw, oc, facts, choice, rating, pama, alternatives,
                         _advisories(knowledge, oc, facts, choice, rating, mismatch, reading), fractured, reading)


def decide(knowledge: Knowledge, *, selections: Iterable[Mapping], draft_orders: Iterable[Mapping],
           conditions: Sequence[Mapping], procedures: Sequence[Mapping], as_of: date | None = None,
           pama_official_only: bool = False, text: RecordText | None = None) -> Decision:
    """Decide every selected order (raw JSON dicts, in selection order).

    ``draft_orders`` (all of them, selected or not) tell the red-flag escalation what is
    already being ordered. ``as_of`` overrides each order's reference date (tests, replays).
    ``pama_official_only``, ``text``: see :func:`decide_order`.
    """
    drafts = list(draft_orders)
    # The record is read once for all orders: with 50 orders over thousands of Conditions,
    # reading it per order was most of a call's cost.
    record = RecordFacts(knowledge, conditions=conditions, procedures=procedures)
    orders = tuple(decide_order(knowledge, raw, conditions=conditions, procedures=procedures, as_of=as_of,
                                pama_official_only=pama_official_only, record=record, text=text)
                   for raw in selections)
    red: dict[tuple, Evidence] = {}
    for od in orders:
        for e in od.facts.evidence.get(Fact.NEURO_RED_FLAG, ()):
            red.setdefault((e.resource, e.system, e.code), e)
    missing: list[Procedure] = []
    region = None
    if red:
        present = {classify_order(knowledge, d).procedure for d in drafts}
        present_ids = {p.id for p in present if p is not None}
        for pid in (knowledge.preferred.redFlagImaging, knowledge.preferred.redFlagConsultation):
            if pid not in present_ids:
                missing.append(knowledge.procedures[pid])
        # Only an imaging order's region says where to image (an augmentation code names a region too).
        region = next((od.order_class.region for od in orders if od.order_class.region is not None
                       and od.order_class.procedure is not None and od.order_class.procedure.kind == "imaging"), None)
    return Decision(orders, tuple(red.values()), tuple(missing), region)
