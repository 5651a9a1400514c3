"""Decision -> CDS Hooks 2.0 response: cards, suggestions and rating systemActions.

Pure. Wording comes from ``data/cards.json``; ids come from an injected generator so a
response can be compared whole in tests (style.md, after cds-hooks/sandbox-cds-services).
Ratings follow the Argonaut "CDS Hooks for PAMA" extensions (decision-rules.md §5); cards
follow CDS Hooks 2.0 §Card Attributes (summary < 140 characters, selectionBehavior with
suggestions, delete actions by resourceId, no empty strings, arrays or objects).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cds_service.decision.contract import (
    APPROPRIATE,
    MAY_BE_APPROPRIATE,
    USUALLY_APPROPRIATE,
    USUALLY_NOT_APPROPRIATE,
    Advisory,
    CardKind,
    ComputedFact,
    Fact,
)
from cds_service.decision.engine import Decision, OrderDecision
from cds_service.decision.knowledge import Knowledge, Procedure, Rating, Region, Variant
from cds_service.decision.scenario import Evidence, VariantChoice
from cds_service.decision.terminology import CPT, LOINC, SNOMED, SYSTEM_NAMES

PAMA_BASE = "http://fhir.org/argonaut/Extension/"
PAMA_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
ACR_CATEGORY_SYSTEM = "urn:vcf-cds-hooks:CodeSystem:acr-appropriateness-category"
VARIANT_SYSTEM = "urn:vcf-cds-hooks:CodeSystem:acr-variant"
# The bundled ratings.json's PAMA displays, for store/explanation.py, which predates
# Knowledge.pama_display: read the knowledge instead.
PAMA_RATING_DISPLAY: Mapping[str, str] = MappingProxyType({
    "appropriate": "Appropriate", "not-appropriate": "Not appropriate", "no-criteria-apply": "No criteria apply"})
SUMMARY_MAX = 139
ORDER_CODE_SYSTEMS = (CPT, LOINC, SNOMED)


def new_uuid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class RenderOptions:
    """``argonaut_copy``: also put systemActions under ``extension.systemActions`` (the
    Argonaut guide and the CDS Hooks sandbox PAMA screen read only that). ``qcdsm``: the
    value of pama-rating-qcdsm-consulted. ``explain_url``: card uuid -> absolute URL of its
    "Why this advice?" page; when set, every card gets that link (CDS Hooks 2.0 §Link,
    type ``absolute``); None (the default) sends no links."""

    argonaut_copy: bool = True
    qcdsm: str = "vcf-cds-hooks"
    new_id: Callable[[], str] = field(default=new_uuid)
    explain_url: Callable[[str], str] | None = None


@dataclass(frozen=True)
class Rendered:
    """The wire response plus what the audit trail needs: each card's kind by uuid, and the
    position (in ``Decision.orders``) of the order a card is about; cards about the whole
    call (the red-flag card) are absent from ``card_orders``. ``consult_ids``: order position
    -> the PAMA consult id (``urn:uuid:...``) of its rating, for rated orders only."""

    response: dict
    card_kinds: Mapping[str, str]
    card_orders: Mapping[str, int] = field(default_factory=dict)
    consult_ids: Mapping[int, str] = field(default_factory=dict)


def _summary(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


class _Renderer:
    def __init__(self, knowledge: Knowledge, decision: Decision, drafts_by_ref: Mapping[str, Mapping],
                 patient_id: str, options: RenderOptions):
        self.k = knowledge
        self.d = decision
        self.drafts = drafts_by_ref
        self.patient_id = patient_id
        self.o = options
        self.text = knowledge.cards.text
        self.cards: list[dict] = []
        self.kinds: dict[str, str] = {}
        self.order_position: int | None = None
        self.card_orders: dict[str, int] = {}
        self.consult_ids: dict[int, str] = {}

    # ---- wording (cards.json; placeholders checked at load) ---------------------------
    def say(self, key: str, **fields: object) -> str:
        """A shared phrase of ``cards.json`` ``text``, its placeholders filled."""
        return self.text[key].format(**fields)

    def summary(self, kind: str, **fields: object) -> str:
        return self.k.cards.kinds[kind].summary.format(**fields)

    def lead(self, kind: str, **fields: object) -> str:
        """The first paragraph of a card's detail."""
        return self.k.cards.kinds[kind].detail.format(**fields)

    def code_text(self, e: Evidence) -> str:
        system = SYSTEM_NAMES.get(e.system, e.system)
        label = f"{system} {e.code}" + (f" {e.display}" if e.display else "")
        return self.say("unconfirmedCode", code=label) if e.unconfirmed else label

    def evidence_line(self, e: Evidence, label: str | None = None) -> str:
        return f"- {label + ': ' if label else ''}{self.code_text(e)} ({e.resource})"

    # ---- building blocks -------------------------------------------------------------
    def source(self, variant: Variant | None) -> dict:
        src: dict[str, Any] = {"label": self.k.cards.source.label}
        if variant is not None:
            topic = self.k.variant_topic[variant.id]
            src["url"] = topic.url
            src["topic"] = {"system": VARIANT_SYSTEM, "code": variant.id, "display": variant.title}
        else:  # advice that rests on no variant cites the service's own topic
            src["url"] = next(t.url for t in self.k.topics if t.id == self.k.cards.source.topic)
        return src

    def card(self, kind: str, summary: str, detail: str, variant: Variant | None,
             suggestions: Sequence[dict] = (), behavior: str = "at-most-one") -> None:
        """Issue a card of ``kind``: its indicator from cards.json; warning and critical
        cards offer the override reasons."""
        indicator = self.k.cards.kinds[kind].indicator
        c: dict[str, Any] = {"uuid": self.o.new_id(), "summary": _summary(summary), "indicator": indicator,
                             "detail": detail, "source": self.source(variant)}
        if suggestions:
            c["suggestions"] = list(suggestions)
            c["selectionBehavior"] = behavior
        if indicator != "info":
            reasons = self.k.cards.overrideReasons
            c["overrideReasons"] = [{"system": reasons["system"], "code": r["code"], "display": r["display"]}
                                    for r in reasons["codes"]]
        if self.o.explain_url is not None:
            c["links"] = [{"label": self.say("explainLink"), "url": self.o.explain_url(c["uuid"]), "type": "absolute"}]
        self.cards.append(c)
        self.kinds[c["uuid"]] = str(kind)
        if self.order_position is not None:
            self.card_orders[c["uuid"]] = self.order_position

    def order_coding(self, procedure: Procedure, region: Region | None) -> dict | None:
        """The code a suggestion orders: first code of the procedure's value set in the same
        region; with no region, a code that names no region (e.g. LOINC 'MR spine')."""
        if procedure.valueSet is None:
            return None
        vs = self.k.terminology.valuesets[procedure.valueSet]
        region_sets = [self.k.terminology.valuesets[r.valueSet] for r in self.k.regions]
        for system in ORDER_CODE_SYSTEMS:
            for c in vs.include:
                if c.system != system or c.is_a:
                    continue
                if region is not None:
                    if self.k.terminology.valuesets[region.valueSet].contains(c.system, c.code):
                        return {"system": c.system, "code": c.code, "display": c.display}
                elif procedure.kind == "treatment" or not any(r.contains(c.system, c.code) for r in region_sets):
                    return {"system": c.system, "code": c.code, "display": c.display}
        return None

    def new_order(self, template: Mapping | None, procedure: Procedure, region: Region | None,
                  *, urgent: bool = False, reasons: Sequence[Evidence] = ()) -> dict | None:
        """A draft ServiceRequest for ``procedure``, keeping the template order's subject,
        encounter, requester, authoredOn and reasons, so the EHR loses nothing on replace."""
        sr: dict[str, Any] = {"resourceType": "ServiceRequest", "id": self.o.new_id(), "status": "draft",
                              "intent": (template or {}).get("intent") or "order"}
        if procedure.id == self.k.preferred.augmentation:
            sr["code"] = {"text": self.k.preferred.augmentationText}
            sr["performerType"] = {"text": self.k.preferred.augmentationPerformer}
        else:
            coding = self.order_coding(procedure, region)
            if coding is None:
                return None
            sr["code"] = {"coding": [{k: v for k, v in coding.items() if v}], "text": procedure.display}
        if urgent:
            sr["priority"] = "urgent"
        sr["subject"] = (template or {}).get("subject") or {"reference": f"Patient/{self.patient_id}"}
        for key in ("encounter", "requester", "authoredOn", "reasonCode", "reasonReference"):
            if template and template.get(key):
                sr[key] = template[key]
        if reasons and not sr.get("reasonCode"):
            sr["reasonCode"] = [{"coding": [{"system": e.system, "code": e.code, **({"display": e.display} if e.display else {})}]}
                                for e in reasons]
        return sr

    def suggestion(self, label: str, actions: list[dict], recommended: bool = False) -> dict:
        """A CDS Hooks Suggestion; its uuid is drawn after the actions' resource ids."""
        s: dict[str, Any] = {"label": _summary(label), "uuid": self.o.new_id(), "actions": actions}
        if recommended:
            s["isRecommended"] = True
        return s

    def replace_suggestions(self, od: OrderDecision, ratings: Iterable[Rating], recommend_first: bool = True) -> list[dict]:
        out: list[dict] = []
        ordered = od.order_class.procedure
        for r in ratings:
            proc = self.k.procedures[r.procedure]
            if ordered is None or proc.kind != ordered.kind:
                continue
            new = self.new_order(od.raw, proc, od.order_class.region,
                                 reasons=od.facts.evidence.get(Fact.VCF, ()))
            if new is None:
                continue
            name = new["code"]["coding"][0].get("display") if "coding" in new["code"] else new["code"]["text"]
            out.append(self.suggestion(self.say("replaceLabel", procedure=name), [
                {"type": "delete", "description": self.say("replaceRemove", order=od.ref), "resourceId": od.ref},
                {"type": "create", "description": self.say("replaceOrder", procedure=proc.display,
                                                           category=self.k.category_display(r.category)),
                 "resource": new}], recommended=recommend_first and not out))
        return out

    # ---- detail text --------------------------------------------------------------------
    def evidence_lines(self, od: OrderDecision, variant: Variant | None) -> list[str]:
        facts = []
        wanted = set(variant.criteria.all) if variant else set()
        for fact, evs in od.facts.evidence.items():
            if fact in self.k.derived or (wanted and fact not in wanted and fact in tuple(ComputedFact)):
                continue
            for e in evs:
                facts.append(self.evidence_line(e, self.k.fact_label(fact)))
        return list(dict.fromkeys(facts))

    def rating_line(self, r: Rating) -> str:
        proc = self.k.procedures[r.procedure]
        parts = [self.k.category_display(r.category)]
        if r.score is not None:
            parts.append(self.say("ratingScore", score=r.score))
        if r.rrl and r.rrlNote:
            parts.append(self.say("ratingRadiationNote", rrl=r.rrl, note=r.rrlNote))
        elif r.rrl:
            parts.append(self.say("ratingRadiation", rrl=r.rrl))
        parts.append(self.say("ratingSource", provenance=r.provenance))
        return f"- {proc.display}: " + "; ".join(parts)

    def variant_detail(self, od: OrderDecision, variant: Variant, lead: str, extra: Sequence[Rating] = ()) -> str:
        topic = self.k.variant_topic[variant.id]
        heading = "variantHeading" if variant.titleConfirmed else "variantHeadingUnconfirmed"
        lines = [lead, "", self.say(heading, variant=variant.id, title=variant.title),
                 self.say("topicLine", topic=topic.title, revised=topic.revised), ""]
        ev = self.evidence_lines(od, variant)
        if ev:
            lines += [self.say("evidenceHeading"), *ev, ""]
        if od.rating is not None:
            lines += [self.say("orderedHeading"), self.rating_line(od.rating), ""]
        alts = list(extra) or list(od.alternatives)
        if alts:
            lines += [self.say("alternativesHeading"), *[self.rating_line(r) for r in alts], ""]
        notes = self.provenance_notes(od, [od.rating, *alts] if od.rating else alts)
        if notes:
            lines += notes
        lines.append(self.say("sourceLine" if topic.urlConfirmed else "sourceLineUnconfirmed",
                              citation=topic.citation, url=topic.url))
        return "\n".join(lines).strip()

    def provenance_notes(self, od: OrderDecision, ratings: Sequence[Rating | None]) -> list[str]:
        notes = []
        if any(r is not None and r.provenance == "SECONDARY" for r in ratings):
            notes.append(self.say("secondaryNote"))
        unconfirmed = sorted({self.code_text(e) for e in od.facts.all_evidence() if e.unconfirmed})
        if unconfirmed:
            notes.append(self.say("unconfirmedNote", items="; ".join(unconfirmed)))
        return [*notes, ""] if notes else []

    @staticmethod
    def candidate_lines(variants: Iterable[Variant]) -> list[str]:
        return [f"- {c.id}: {c.title}" for c in variants]

    # ---- cards ----------------------------------------------------------------------------
    def order_cards(self, od: OrderDecision) -> None:
        proc = od.order_class.procedure
        choice = od.choice
        if proc is None or choice is None:
            return
        v = od.variant
        if choice.status in ("selected", "red-flag") and v is not None and od.rating is not None:
            self.rated_card(od, proc, v, od.rating)
        elif choice.status == "selected" and v is not None:
            self.card(CardKind.NO_CRITERIA, self.summary(CardKind.NO_CRITERIA, procedure=proc.display),
                      self.variant_detail(od, v, self.lead(CardKind.NO_CRITERIA, procedure=proc.display)),
                      v, self.replace_suggestions(od, od.alternatives))
        elif choice.status == "missing" and choice.missing:
            self.missing_facts_card(od, proc, choice)
        elif choice.status == "conflict":
            detail = [self.lead(CardKind.CONFLICT, procedure=proc.display), "",
                      *self.candidate_lines(choice.candidates), "", *self.evidence_lines(od, None)]
            self.card(CardKind.CONFLICT, self.summary(CardKind.CONFLICT, procedure=proc.display),
                      "\n".join(detail).strip(), None)
        elif choice.status == "excluded":
            detail = [self.lead(CardKind.TRAUMATIC, procedure=proc.display), "", *self.evidence_lines(od, None)]
            self.card(CardKind.TRAUMATIC, self.summary(CardKind.TRAUMATIC, procedure=proc.display),
                      "\n".join(detail).strip(), None)
        self.advisory_cards(od, proc)

    def rated_card(self, od: OrderDecision, proc: Procedure, v: Variant, r: Rating) -> None:
        """Usually not appropriate: a warning; may be appropriate: an info card; usually
        appropriate: silence (the rating travels in systemActions; no alert fatigue)."""
        if r.category == USUALLY_NOT_APPROPRIATE:
            kind = CardKind.NOT_APPROPRIATE
        elif r.category in MAY_BE_APPROPRIATE:
            kind = CardKind.MAY_BE_APPROPRIATE
        else:
            return
        fields = {"procedure": proc.display, "category": self.k.category_display(r.category)}
        self.card(kind, self.summary(kind, **fields), self.variant_detail(od, v, self.lead(kind, **fields)),
                  v, self.replace_suggestions(od, od.alternatives))

    def missing_facts_card(self, od: OrderDecision, proc: Procedure, choice: VariantChoice) -> None:
        options = [" and ".join(self.k.fact_label(f) for f in gap) for gap in choice.missing]
        kind = CardKind.MISSING_FACTS
        detail = [self.lead(kind, procedure=proc.display), "", self.say("recordOneOf"), *[f"- {o}" for o in options], ""]
        if choice.candidates:
            detail += [self.say("candidateVariants"), *self.candidate_lines(choice.candidates), ""]
        detail += self.evidence_lines(od, None)
        summary = self.summary(kind, missing=" or ".join(options), procedure=proc.display)
        if len(summary) > SUMMARY_MAX:
            summary = self.say("missingFactsShort")
        self.card(kind, summary, "\n".join(detail).strip(), None)

    def advisory_cards(self, od: OrderDecision, proc: Procedure) -> None:
        """One card per advisory, listing the evidence of the facts cards.json names for it."""
        for adv in od.advisories:
            if adv == Advisory.STEER_IR:
                self.steer_to_ir_card(od, proc)
                continue
            name = proc.display
            spec = self.k.cards.kinds[adv]
            lines = [self.lead(adv, procedure=name)]
            ev = [self.evidence_line(e, self.k.fact_label(f)) for f in spec.evidence for e in od.facts.evidence.get(f, ())]
            if ev:
                lines += ["", self.say("evidenceHeading"), *dict.fromkeys(ev)]
            self.card(adv, self.summary(adv, procedure=name), "\n".join(lines), od.variant)

    def steer_to_ir_card(self, od: OrderDecision, proc: Procedure) -> None:
        v = od.variant
        assert v is not None  # steer-ir is advised only within a variant
        aug = self.k.procedures[self.k.preferred.augmentation]
        new = self.new_order(od.raw, aug, None, reasons=od.facts.evidence.get(Fact.VCF, ()))
        rating = v.rating_for(aug.id)
        referral = self.k.preferred.augmentationText
        sug = [self.suggestion(self.say("referralLabel", referral=referral), [
            {"type": "create", "description": referral, "resource": new}], recommended=True)]
        fields = {"procedure": proc.display, "augmentation": aug.display}
        self.card(Advisory.STEER_IR, self.summary(Advisory.STEER_IR, **fields),
                  self.variant_detail(od, v, self.lead(Advisory.STEER_IR, **fields), [rating] if rating else []),
                  v, sug)

    def red_flag_card(self) -> None:
        d = self.d
        if not d.red_flags:
            return
        template = next(iter(self.drafts.values()), None) if self.drafts else None
        suggestions = []
        for proc in d.red_flag_missing:
            new = self.new_order(template, proc, d.red_flag_region if proc.kind == "imaging" else None,
                                 urgent=True, reasons=d.red_flags)
            if new is None:
                continue
            suggestions.append(self.suggestion(self.say("urgentOrderLabel", procedure=proc.display), [
                {"type": "create", "description": self.say("urgentOrderAction", procedure=proc.display), "resource": new}]))
        lines = [self.lead(CardKind.RED_FLAG), "", self.say("redFlagEvidenceHeading"),
                 *dict.fromkeys(self.evidence_line(e) for e in d.red_flags)]
        routed = next((od.variant for od in d.orders if od.variant is not None and od.variant.routing), None)
        if routed is not None:
            lines += ["", self.say("redFlagRouting", topic=self.k.variant_topic[routed.id].title, title=routed.title)]
        self.card(CardKind.RED_FLAG, self.summary(CardKind.RED_FLAG), "\n".join(lines), routed, suggestions, behavior="any")

    # ---- ratings --------------------------------------------------------------------------
    def rating_action(self, od: OrderDecision, position: int) -> dict:
        assert od.pama is not None and od.variant is not None  # only rated orders get a rating action
        coding = [{"system": PAMA_SYSTEM, "code": od.pama, "display": self.k.pama_display(od.pama)}]
        if od.rating is not None and od.rating.category != USUALLY_APPROPRIATE and od.pama == APPROPRIATE:
            coding.append({"system": ACR_CATEGORY_SYSTEM, "code": od.rating.category,
                           "display": self.k.category_display(od.rating.category)})
        topic = self.k.variant_topic[od.variant.id]
        self.consult_ids[position] = consult_id = f"urn:uuid:{self.o.new_id()}"
        ext = [
            {"url": PAMA_BASE + "pama-rating", "valueCodeableConcept": {"coding": coding}},
            {"url": PAMA_BASE + "pama-rating-qcdsm-consulted", "valueString": self.o.qcdsm},
            {"url": PAMA_BASE + "pama-rating-consult-id", "valueUri": consult_id},
            {"url": PAMA_BASE + "pama-rating-auc-applied", "valueUri": topic.url},
        ]
        resource = dict(od.raw)
        # Keep the EHR's own extensions; replace only earlier PAMA ratings of this order.
        kept = [e for e in resource.get("extension") or () if not str(e.get("url", "")).startswith(PAMA_BASE)]
        resource["extension"] = kept + ext
        return {"type": "update", "description": self.say("ratingAction", rating=self.k.pama_display(od.pama)),
                "resource": resource}


def render(knowledge: Knowledge, decision: Decision, *, draft_orders: Sequence[Mapping], patient_id: str,
           options: RenderOptions = RenderOptions(), input_issues: Sequence[Mapping] = ()) -> Rendered:
    """Build the CDS Hooks response for ``decision``.

    Returns ``Rendered(response, card_kinds, card_orders)``: ``response`` is the JSON-ready
    dict (``cards`` always present; ``systemActions`` only when some order has a rating;
    ``extension`` carries the Argonaut copy and any skipped input), ``card_kinds`` maps card
    uuid -> kind (not-appropriate, red-flag, augment-bleeding, ...) and ``card_orders`` card
    uuid -> order position, for the audit trail.
    """
    drafts = {f"{d.get('resourceType')}/{d.get('id')}": d for d in draft_orders}
    r = _Renderer(knowledge, decision, drafts, patient_id, options)
    r.red_flag_card()
    for position, od in enumerate(decision.orders):
        r.order_position = position
        r.order_cards(od)
    actions = [r.rating_action(od, position) for position, od in enumerate(decision.orders) if od.pama is not None]
    response: dict[str, Any] = {"cards": r.cards}
    if actions:
        response["systemActions"] = actions
    extension: dict[str, Any] = {}
    if actions and options.argonaut_copy:
        extension["systemActions"] = actions
    if input_issues:
        extension["vcf-cds-hooks"] = {"skippedResources": [dict(i) for i in input_issues]}
    if extension:
        response["extension"] = extension
    return Rendered(response, r.kinds, r.card_orders, r.consult_ids)
