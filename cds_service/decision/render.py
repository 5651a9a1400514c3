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
from cds_service.decision.knowledge import CATEGORY_DISPLAY, Knowledge, Procedure, Rating, Region, Variant
from cds_service.decision.scenario import Evidence
from cds_service.decision.terminology import CPT, LOINC, SNOMED, SYSTEM_NAMES

PAMA_BASE = "http://fhir.org/argonaut/Extension/"
PAMA_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"
ACR_CATEGORY_SYSTEM = "urn:vcf-cds-hooks:CodeSystem:acr-appropriateness-category"
VARIANT_SYSTEM = "urn:vcf-cds-hooks:CodeSystem:acr-variant"
PAMA_RATING_DISPLAY = {"appropriate": "Appropriate", "not-appropriate": "Not appropriate",
                       "no-criteria-apply": "No criteria apply"}
SUMMARY_MAX = 139
EXPLAIN_LINK_LABEL = "Why this advice?"
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
    # Read by the pipeline, which passes it to the decision (setting PAMA_OFFICIAL_ONLY).
    pama_official_only: bool = False
    new_id: Callable[[], str] = field(default=new_uuid)
    explain_url: Callable[[str], str] | None = None


@dataclass(frozen=True)
class Rendered:
    """The wire response plus what the audit trail needs: each card's kind by uuid, and the
    position (in ``Decision.orders``) of the order a card is about; cards about the whole
    call (the red-flag card) are absent from ``card_orders``."""

    response: dict
    card_kinds: Mapping[str, str]
    card_orders: Mapping[str, int] = field(default_factory=dict)


def _summary(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def _evidence_line(e: Evidence, label: str | None = None) -> str:
    return f"- {label + ': ' if label else ''}{_code_text(e)} ({e.resource})"


def _code_text(e: Evidence) -> str:
    system = SYSTEM_NAMES.get(e.system, e.system)
    label = f"{system} {e.code}" + (f" {e.display}" if e.display else "")
    return label + (" (unconfirmed code)" if e.unconfirmed else "")


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

    # ---- building blocks -------------------------------------------------------------
    def source(self, variant: Variant | None) -> dict:
        src: dict[str, Any] = {"label": self.k.cards.source["label"]}
        if variant is not None:
            topic = self.k.variant_topic[variant.id]
            src["url"] = topic.url
            src["topic"] = {"system": VARIANT_SYSTEM, "code": variant.id, "display": variant.title}
        else:  # advice that rests on no variant cites the service's own topic
            src["url"] = next(t.url for t in self.k.topics if t.id == self.k.cards.source["topic"])
        return src

    def card(self, kind: str, indicator: str, summary: str, detail: str, variant: Variant | None,
             suggestions: Sequence[dict] = (), behavior: str = "at-most-one", override: bool = False) -> None:
        c: dict[str, Any] = {"uuid": self.o.new_id(), "summary": _summary(summary), "indicator": indicator,
                             "detail": detail, "source": self.source(variant)}
        if suggestions:
            c["suggestions"] = list(suggestions)
            c["selectionBehavior"] = behavior
        if override:
            reasons = self.k.cards.overrideReasons
            c["overrideReasons"] = [{"system": reasons["system"], "code": r["code"], "display": r["display"]}
                                    for r in reasons["codes"]]
        if self.o.explain_url is not None:
            c["links"] = [{"label": EXPLAIN_LINK_LABEL, "url": self.o.explain_url(c["uuid"]), "type": "absolute"}]
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
                if region is not None and procedure.kind == "imaging":  # treatment codes: region-free
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
            out.append(self.suggestion(f"Replace with {name}", [
                {"type": "delete", "description": f"Remove the draft order {od.ref}", "resourceId": od.ref},
                {"type": "create", "description": f"Order {proc.display} ({CATEGORY_DISPLAY[r.category]}, ACR)",
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
                facts.append(_evidence_line(e, self.k.fact_label(fact)))
        return list(dict.fromkeys(facts))

    def rating_line(self, r: Rating) -> str:
        proc = self.k.procedures[r.procedure]
        parts = [CATEGORY_DISPLAY[r.category]]
        if r.score is not None:
            parts.append(f"score {r.score}")
        if r.rrl:
            parts.append(f"radiation {r.rrl}" + (f", {r.rrlNote}" if r.rrlNote else ""))
        parts.append(f"source {r.provenance}")
        return f"- {proc.display}: " + "; ".join(parts)

    def variant_detail(self, od: OrderDecision, variant: Variant, lead: str, extra: Sequence[Rating] = ()) -> str:
        topic = self.k.variant_topic[variant.id]
        title = variant.title + ("" if variant.titleConfirmed else " (exact ACR title unconfirmed)")
        lines = [lead, "", f"**ACR variant {variant.id}**: {title}", f"({topic.title}, revised {topic.revised})", ""]
        if od.choice is not None and od.choice.status == "agreed":
            lines += [f"The record fits {' or '.join(c.id for c in od.choice.candidates)}: each rates this order alike.", ""]
        ev = self.evidence_lines(od, variant)
        if ev:
            lines += ["**Evidence in the record**", *ev, ""]
        if od.rating is not None:
            lines += ["**Ordered**", self.rating_line(od.rating), ""]
        alts = list(extra) or list(od.alternatives)
        if alts:
            lines += ["**Usually appropriate for this variant**", *[self.rating_line(r) for r in alts], ""]
        notes = self.provenance_notes(od, [od.rating, *alts] if od.rating else alts)
        if notes:
            lines += notes
        lines.append(f"Source: {topic.citation} {topic.url}" + ("" if topic.urlConfirmed else " (link unconfirmed)"))
        return "\n".join(lines).strip()

    def provenance_notes(self, od: OrderDecision, ratings: Sequence[Rating | None]) -> list[str]:
        notes = []
        if any(r is not None and r.provenance == "SECONDARY" for r in ratings):
            notes.append(self.text["secondaryNote"])
        unconfirmed = sorted({_code_text(e) for e in od.facts.all_evidence() if e.unconfirmed})
        if unconfirmed:
            notes.append(self.text["unconfirmedNote"].format(items="; ".join(unconfirmed)))
        return [*notes, ""] if notes else []

    # ---- cards ----------------------------------------------------------------------------
    def order_cards(self, od: OrderDecision) -> None:
        proc = od.order_class.procedure
        choice = od.choice
        if proc is None or choice is None:
            return
        v = od.variant
        name = proc.display
        if choice.status in ("selected", "red-flag", "agreed") and v is not None and od.rating is not None:
            r = od.rating
            if r.category == USUALLY_NOT_APPROPRIATE:
                self.card(CardKind.NOT_APPROPRIATE, "warning", self.text["notAppropriate"].format(procedure=name),
                          self.variant_detail(od, v, f"{name} is rated **{r.category_display}** for this scenario."),
                          v, self.replace_suggestions(od, od.alternatives), override=True)
            elif r.category in MAY_BE_APPROPRIATE:
                self.card(CardKind.MAY_BE_APPROPRIATE, "info", self.text["mayBeAppropriate"].format(procedure=name),
                          self.variant_detail(od, v, f"{name} is rated **{r.category_display}**; better-rated options are listed below."),
                          v, self.replace_suggestions(od, od.alternatives))
            # Usually appropriate: silence (the rating travels in systemActions); no alert fatigue.
        elif choice.status == "selected" and v is not None:
            self.card(CardKind.NO_CRITERIA, "info", self.text["noCriteria"].format(procedure=name),
                      self.variant_detail(od, v, f"The ACR table for this variant does not rate {name}."),
                      v, self.replace_suggestions(od, od.alternatives))
        elif choice.status == "missing" and choice.missing:
            options = [" and ".join(self.k.fact_label(f) for f in gap) for gap in choice.missing]
            missing = " or ".join(options)
            detail = [f"{name} cannot be rated: the record does not say which ACR scenario applies.",
                      "", "Record one of the following to get a rating:", *[f"- {o}" for o in options], ""]
            if choice.candidates:
                detail += ["Candidate variants:", *[f"- {c.id}: {c.title}" for c in choice.candidates], ""]
            detail += self.evidence_lines(od, None)
            summary = self.text["missingFacts"].format(missing=missing)
            if len(summary) > SUMMARY_MAX:
                summary = self.text["missingFactsShort"]
            self.card(CardKind.MISSING_FACTS, "info", summary,
                      "\n".join(detail).strip(), None)
        elif choice.status == "conflict":
            detail = [f"{name} cannot be rated: the record fits more than one ACR variant.", "",
                      *[f"- {c.id}: {c.title}" for c in choice.candidates], "", *self.evidence_lines(od, None)]
            self.card(CardKind.CONFLICT, "info", self.text["conflict"], "\n".join(detail).strip(), None)
        elif choice.status == "excluded":
            detail = ["High-energy trauma fractures are not osteoporotic: they are outside these criteria "
                      "and need spine surgery evaluation (seed 003; decision-rules.md §2.5).", "",
                      *self.evidence_lines(od, None)]
            self.card(CardKind.TRAUMATIC, "info", self.text["traumatic"], "\n".join(detail).strip(), None)
        self.advisory_cards(od)

    def advisory_cards(self, od: OrderDecision) -> None:
        t = self.text
        v = od.variant
        simple = {
            Advisory.AUGMENT_BLEEDING: ("warning", "augmentBleeding", (Fact.BLEEDING_RISK,)),
            Advisory.AUGMENT_NEURO: ("warning", "augmentNeuro", (Fact.NEURO_RED_FLAG,)),
            Advisory.AUGMENT_INFECTION: ("critical", "augmentInfection", (Fact.INFECTION,)),
            Advisory.AUGMENT_ASYMPTOMATIC: ("warning", "augmentAsymptomatic", (Fact.ASYMPTOMATIC,)),
            Advisory.REGION_MISMATCH: ("warning", "regionMismatch", (Fact.VCF, Fact.VCF_TRAUMATIC)),
            Advisory.FRAGILITY_READING: ("info", "fragilityReading", (Fact.VCF_FRAGILITY, Fact.OSTEOPOROSIS)),
            Advisory.AUGMENT_NO_EDEMA: ("info", "augmentNoEdema", ()),
            Advisory.AUGMENT_NO_THERAPY: ("info", "augmentNoTherapy", ()),
            Advisory.POST_AUGMENTATION_MRI: ("info", "postAugmentationMri", (Fact.AUGMENTATION_HISTORY,)),
        }
        for adv in od.advisories:
            if adv == Advisory.STEER_IR:
                aug = self.k.procedures[self.k.preferred.augmentation]
                new = self.new_order(od.raw, aug, None, reasons=od.facts.evidence.get(Fact.VCF, ()))
                assert v is not None  # steer-ir is advised only within a variant
                rating = v.rating_for(aug.id)
                sug = [self.suggestion(f"Add: {self.k.preferred.augmentationText}", [
                    {"type": "create", "description": self.k.preferred.augmentationText, "resource": new}], recommended=True)]
                self.card(Advisory.STEER_IR, "info", t["steerToIr"],
                          self.variant_detail(od, v, f"{aug.display} is also Usually appropriate for this scenario.",
                                              [rating] if rating else []),
                          v, sug)
                continue
            indicator, key, facts = simple[adv]
            summary, lines = t[key], [t[key + "Detail"]]
            if adv == Advisory.REGION_MISMATCH and od.order_class.region is not None:
                where = {"order": od.order_class.region.display,
                         "fracture": " and ".join(r.display for r in od.fracture_regions)}
                summary, lines = summary.format(**where), [lines[0].format(**where)]
            ev = [_evidence_line(e, self.k.fact_label(f)) for f in facts for e in od.facts.evidence.get(f, ())]
            if ev:
                lines += ["", "**Evidence in the record**", *dict.fromkeys(ev)]
            self.card(adv, indicator, summary, "\n".join(lines), v, override=indicator in ("warning", "critical"))

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
            suggestions.append(self.suggestion(f"Order urgent: {proc.display}", [
                {"type": "create", "description": f"Urgent {proc.display}", "resource": new}]))
        lines = [self.text["redFlagDetail"], "", "**Red flags in the record**",
                 *dict.fromkeys(_evidence_line(e) for e in d.red_flags)]
        routed = next((od.variant for od in d.orders if od.variant is not None and od.variant.routing), None)
        if routed is not None:
            lines += ["", f"Imaging is rated under ACR {self.k.variant_topic[routed.id].title}, variant: {routed.title}"]
        self.card(CardKind.RED_FLAG, "critical", self.text["redFlag"], "\n".join(lines), routed, suggestions, behavior="any",
                  override=True)

    # ---- ratings --------------------------------------------------------------------------
    def rating_action(self, od: OrderDecision) -> dict:
        assert od.pama is not None and od.variant is not None  # only rated orders get a rating action
        coding = [{"system": PAMA_SYSTEM, "code": od.pama, "display": PAMA_RATING_DISPLAY[od.pama]}]
        if od.rating is not None and od.rating.category != USUALLY_APPROPRIATE and od.pama == APPROPRIATE:
            coding.append({"system": ACR_CATEGORY_SYSTEM, "code": od.rating.category,
                           "display": CATEGORY_DISPLAY[od.rating.category]})
        topic = self.k.variant_topic[od.variant.id]
        ext = [
            {"url": PAMA_BASE + "pama-rating", "valueCodeableConcept": {"coding": coding}},
            {"url": PAMA_BASE + "pama-rating-qcdsm-consulted", "valueString": self.o.qcdsm},
            {"url": PAMA_BASE + "pama-rating-consult-id", "valueUri": f"urn:uuid:{self.o.new_id()}"},
            {"url": PAMA_BASE + "pama-rating-auc-applied", "valueUri": topic.url},
        ]
        resource = dict(od.raw)
        # Keep the EHR's own extensions; replace only earlier PAMA ratings of this order.
        kept = [e for e in resource.get("extension") or () if not str(e.get("url", "")).startswith(PAMA_BASE)]
        resource["extension"] = kept + ext
        return {"type": "update", "description": f"ACR appropriateness rating: {PAMA_RATING_DISPLAY[od.pama]}",
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
    actions = [r.rating_action(od) for od in decision.orders if od.pama is not None]
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
    return Rendered(response, r.kinds, r.card_orders)
