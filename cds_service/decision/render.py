"""Decision -> CDS Hooks 2.0 response: cards, suggestions and rating systemActions.

Pure. Wording and suggestion rules come from ``data/cards.json``; ids come from an injected
generator so a response can be compared whole in tests (style.md, after
cds-hooks/sandbox-cds-services). Ratings follow the Argonaut "CDS Hooks for PAMA"
extensions; cards follow CDS Hooks 2.0 §Card Attributes (summary < 140 characters,
selectionBehavior with suggestions, delete actions by resourceId, no empty strings, arrays
or objects).

Cards a clinician reads in seconds: the summary leads with the action; one card per
situation (the red-flag card also carries the augmentation exclusion; one checklist card per
augmentation order); evidence is one line per resource, capped; every text taken from the
record is escaped for CommonMark before it goes into ``detail``. Suggestions never remove
care the service cannot judge: an order whose ACR cell it does not hold, a consultation or a
bone density study is never deleted, and nothing already among the draft orders is
suggested again (issue 12).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cds_service.decision.contract import (
    APPROPRIATE,
    AUGMENTATION,
    MAY_BE_APPROPRIATE,
    MRI_MODALITY,
    USUALLY_APPROPRIATE,
    USUALLY_NOT_APPROPRIATE,
    Advisory,
    CardKind,
    ComputedFact,
    Fact,
)
from cds_service.decision.engine import Decision, OrderClass, OrderDecision, classify_order
from cds_service.decision.knowledge import Knowledge, Procedure, Rating, Region, Variant
from cds_service.decision.scenario import Evidence, FactSet
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
EVIDENCE_MAX = 8  # evidence lines per card; the rest is "and N more" (a 5 MB record must not make 150 MB of cards)
# Advisories whose warning card already speaks for an order the service cannot rate.
WARNING_ADVISORIES = (Advisory.REGION_MISMATCH, Advisory.AUGMENT_ASYMPTOMATIC, Advisory.AUGMENT_INFECTION)
# Advisory cards whose text leans on a rating of the variant (asymptomatic: "medical management
# is Usually appropriate"), so they say where the rating comes from.
RATING_CITING_ADVISORIES = (Advisory.AUGMENT_ASYMPTOMATIC,)
# Placeholder for the card's own "Why this advice?" URL, known only once the card has its uuid.
_MORE_LINK = "\x00more-link\x00"
# The ASCII punctuation CommonMark lets a backslash escape (spec §2.4) that can open inline
# markup anywhere in a line: links, images, emphasis, code, raw HTML, entities, tables
# (parentheses are inert once brackets are escaped: no "](" can form a link).
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#+!<>|~&])")
# ...and what opens a block only at the start: a list item ("-", "1." / "1)"), a heading, a quote.
_MD_BLOCK_START = re.compile(r"^(\d{1,9})([.)])|^([-=])")
_WS = re.compile(r"\s+")
# GFM's extended autolinks (cmark-gfm) start at "://" or "www.": escaping that ':' or '.' keeps
# a URL in record text from becoming a link.
_AUTOLINK = re.compile(r"(?i):(?=//)|(?<=www)\.")
# Text none of the rules above would change: no markup character, no whitespace but single
# inner spaces, no "://" or "www.", no block start. Most record text is such; it is returned as is.
_MD_UNCHANGED = re.compile(r"[\\`*_\[\]#+!<>|~&]|[^\S ]|  |^ | $|://|(?i:www\.)|^(?:\d{1,9}[.)]|[-=])")
# Canonical lab units (data/reading/bleeding-thresholds.json) as a clinician writes them.
_UNIT_WORDS = MappingProxyType({"{INR}": "", "10*9/L": " x 10^9/L"})


def new_uuid() -> str:
    return str(uuid.uuid4())


def md_escape(text: object) -> str:
    """Text from the record made inert for a CommonMark / GFM renderer.

    Every markup character is backslash-escaped (CommonMark 0.31 §2.4: any ASCII
    punctuation may be escaped and then renders as itself) and line breaks collapse to one
    space, so a Condition display such as ``[x](javascript:alert(1))``, ``![i](http://..)``
    or ``<img src=x onerror=...>`` arrives as plain text and cannot start a block; "://" and
    "www." are escaped too, so GFM's extended autolinks do not turn a URL into a link.
    """
    text = str(text)
    if _MD_UNCHANGED.search(text) is None:
        return text
    flat = _MD_SPECIAL.sub(r"\\\1", _WS.sub(" ", text).strip())
    flat = _AUTOLINK.sub(lambda m: "\\" + m[0], flat)
    return _MD_BLOCK_START.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", flat)


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
    call (the red-flag card) are absent from ``card_orders``. ``consult_ids``: order position
    -> the PAMA consult id (``urn:uuid:...``) of its rating, for rated orders only."""

    response: dict
    card_kinds: Mapping[str, str]
    card_orders: Mapping[str, int] = field(default_factory=dict)
    consult_ids: Mapping[int, str] = field(default_factory=dict)


def _summary(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def _lower_first(name: str) -> str:
    """'Radiation oncology consultation' -> 'radiation oncology consultation'; 'MRI ...' stays."""
    return name[:1].lower() + name[1:] if name[1:2].islower() else name


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _unique_evidence(evs: Iterable[Evidence]) -> list[Evidence]:
    return list({(e.system, e.code): e for e in evs}.values())


@dataclass
class _Plan:
    """Suggestions toward better-rated procedures: ``items`` (CDS Hooks suggestions),
    ``first`` (name and procedure of the first one), ``drafted`` (name of an alternative
    already among the draft orders), ``whole_spine`` (imaging region unknown)."""

    items: list[dict] = field(default_factory=list)
    first: tuple[str, Procedure] | None = None
    drafted: tuple[str, Procedure] | None = None
    whole_spine: bool = False


class _Renderer:
    def __init__(self, knowledge: Knowledge, decision: Decision, drafts_by_ref: Mapping[str, Mapping],
                 patient_id: str, options: RenderOptions):
        self.k = knowledge
        self.d = decision
        self.drafts = drafts_by_ref
        self.patient_id = patient_id
        self.o = options
        self.text = knowledge.cards.text
        self.rules = knowledge.cards.suggestionRules
        self.regions = {r.id: r for r in knowledge.regions}
        self.cards: list[dict] = []
        self.kinds: dict[str, str] = {}
        self.order_position: int | None = None
        self.card_orders: dict[str, int] = {}
        self._draft_classes: dict[str, OrderClass] = {ref: classify_order(knowledge, raw)
                                                      for ref, raw in drafts_by_ref.items()}
        self.consult_ids: dict[int, str] = {}
        self._lines: dict[tuple, tuple[object, str]] = {}

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
        """'ICD-10-CM M48.56XA', marked when the code's meaning is not confirmed."""
        label = f"{SYSTEM_NAMES.get(e.system, e.system)} {md_escape(e.code)}"
        return self.say("unconfirmedCode", code=label) if e.unconfirmed else label

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
            url = self.o.explain_url(c["uuid"])
            c["links"] = [{"label": self.say("explainLink"), "url": url, "type": "absolute"}]
            c["detail"] = c["detail"].replace(_MORE_LINK, url)
        self.cards.append(c)
        self.kinds[c["uuid"]] = str(kind)
        if self.order_position is not None:
            self.card_orders[c["uuid"]] = self.order_position

    # ---- regions --------------------------------------------------------------------------
    def record_regions(self, evidence: Iterable[Evidence]) -> list[str]:
        """Spine regions the record codes name (cards.json ``recordRegions``), in record order."""
        out: list[str] = []
        # Each distinct code once: a code seen again names no new region.
        for system, code in dict.fromkeys((e.system, e.code) for e in evidence):
            named = self.k.terminology.memberships(system, code)
            out += [rr.region for rr in self.rules.recordRegions if rr.valueSet in named]
        return _unique(out)

    @staticmethod
    def fracture_regions(od: OrderDecision) -> list[str]:
        """The regions the engine read from the fracture codes (``OrderDecision.fracture_regions``)."""
        return [r.id for r in od.fracture_regions]

    def pain_regions(self, facts: FactSet) -> list[str]:
        return self.record_regions(facts.evidence.get(Fact.BACK_PAIN, ()))

    def expand(self, regions: Iterable[str]) -> list[Region]:
        """Record regions -> orderable imaging regions (thoracolumbar: thoracic and lumbar)."""
        ids = [x for r in regions for x in self.rules.regionExpansion.get(r, (r,))]
        return [self.regions[i] for i in _unique(ids)]

    def target_regions(self, od: OrderDecision) -> list[Region]:
        """Where replacement imaging looks: the order's own region, else the fracture's, else
        the back pain's; [] when unknown (the suggestion then covers the whole spine)."""
        if od.order_class.region is not None:
            return [od.order_class.region]
        return self.expand(self.fracture_regions(od) or self.pain_regions(od.facts))

    def plain_name(self, proc: Procedure, regions: Sequence[Region] = (), emphasize: bool = False) -> str:
        """A procedure as a clinician names it: 'MRI lumbar spine without contrast', not the
        ACR's 'MRI spine area of interest without IV contrast'. ``emphasize`` capitalises
        WITHOUT / WITH, the word a contrast advice turns on."""
        name = proc.display
        where = [r.display for r in regions]
        if where and all(w.endswith(" spine") for w in where):
            place = " and ".join(w.removesuffix(" spine") for w in where) + " spine"
        else:
            place = " and ".join(where) or "spine"
        name = name.replace("spine area of interest", place).replace(" IV contrast", " contrast")
        if emphasize:
            name = re.sub(r"\b(without|with)\b", lambda m: m.group(1).upper(), name)
        return name

    # ---- what the draft orders already hold ---------------------------------------------
    def drafted(self, proc: Procedure, region: Region | None, exclude: str | None = None) -> bool:
        """Whether a draft order (other than ``exclude``) already orders ``proc`` in ``region``
        (an order naming no region, or the complete spine, covers every region)."""
        for ref, oc in self._draft_classes.items():
            if ref == exclude or oc.procedure is None or oc.procedure.id != proc.id:
                continue
            if proc.kind == "treatment" or region is None or oc.region is None or oc.region.id in (region.id, self.rules.wholeSpineRegion):
                return True
        return False

    def mri_covered_regions(self) -> set[str] | None:
        """Regions a draft MRI whose sequences include non-contrast ones already images (an
        MRI without and with contrast includes the non-contrast study); None = all of them."""
        covered: set[str] = set()
        for oc in self._draft_classes.values():
            p = oc.procedure
            if p is None or p.modality != MRI_MODALITY or p.contrast not in ("without", "without-and-with"):
                continue
            if oc.region is None or oc.region.id == self.rules.wholeSpineRegion:
                return None
            covered.add(oc.region.id)
        return covered

    # ---- orders a suggestion creates ----------------------------------------------------------
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
            sr["code"] = {"coding": [{k: v for k, v in coding.items() if v}],
                          "text": self.plain_name(procedure, [region] if region else ())}
        if urgent:
            sr["priority"] = "urgent"
        sr["subject"] = (template or {}).get("subject") or {"reference": f"Patient/{self.patient_id}"}
        for key in ("encounter", "requester", "authoredOn", "reasonCode", "reasonReference"):
            if template and template.get(key):
                sr[key] = template[key]
        if reasons and not sr.get("reasonCode"):
            sr["reasonCode"] = [{"coding": [{"system": e.system, "code": e.code, **({"display": e.display} if e.display else {})}]}
                                for e in _unique_evidence(reasons)]
        return sr

    def updated_order(self, od: OrderDecision, procedure: Procedure, region: Region | None,
                      rating: Rating) -> dict | None:
        """The selected draft order ordering ``procedure`` instead, or None when an update
        cannot say it (the draft is not a ServiceRequest, or the procedure has no code in
        ``region``, as the text-coded interventional radiology referral).

        Argonaut "CDS Hooks for PAMA" suggestion shape (connectathon scenario 2): same id,
        every field kept, ``code`` replaced, ``reasonCode`` kept (an empty list when the order
        has none: the CDS Hooks sandbox reads ``reasonCode[*].coding[0]`` unconditionally), and
        the PAMA rating extensions of the new code (pama-rating first) in place of the order's
        earlier ones; the order's other extensions are kept."""
        if od.raw.get("resourceType") != "ServiceRequest" or od.variant is None \
                or procedure.id == self.k.preferred.augmentation:
            return None
        coding = self.order_coding(procedure, region)
        if coding is None:
            return None
        resource = dict(od.raw)
        resource["code"] = {"coding": [{k: v for k, v in coding.items() if v}],
                            "text": self.plain_name(procedure, [region] if region else ())}
        resource["reasonCode"] = list(od.raw.get("reasonCode") or [])
        kept = [e for e in resource.get("extension") or () if not str(e.get("url", "")).startswith(PAMA_BASE)]
        pama = self.k.pama_for(rating.category)
        resource["extension"] = kept + self.pama_extensions(pama, rating.category, od.variant,
                                                            f"urn:uuid:{self.o.new_id()}")
        return resource

    def suggestion(self, label: str, actions: list[dict], recommended: bool = False) -> dict:
        """A CDS Hooks Suggestion; its uuid is drawn after the actions' resource ids."""
        s: dict[str, Any] = {"label": _summary(label), "uuid": self.o.new_id(), "actions": actions}
        if recommended:
            s["isRecommended"] = True
        return s

    def never_replaced(self, proc: Procedure) -> str | None:
        """Why ``proc`` is never deleted or replaced (cards.json ``neverReplaced``), else None."""
        nr = self.rules.neverReplaced
        if proc.id in nr.procedures:
            return nr.why[proc.id]
        if proc.category is not None and proc.category in nr.categories:
            return nr.why[proc.category]
        return None

    # ---- suggestions -----------------------------------------------------------------------
    def created_name(self, proc: Procedure, regions: Sequence[Region], short: bool = False) -> str:
        """The name of what a suggestion orders (``short``: for a summary)."""
        if proc.id == self.k.preferred.augmentation:
            return self.text["irReferralShort"] if short else self.k.preferred.augmentationText
        return self.plain_name(proc, regions if proc.kind == "imaging" else (), emphasize=True)

    def alternative_suggestions(self, od: OrderDecision, ratings: Iterable[Rating], *, replace: bool) -> _Plan:
        """Suggestions toward the variant's better-rated procedures.

        ``replace``: each suggestion replaces the order by the alternative; only for an order
        whose cell is known (Usually not appropriate / May be appropriate) and that is not a
        consultation or bone density study. The replacement is one ``update`` of the draft
        order (:meth:`updated_order`: the Argonaut PAMA suggestion shape, the only one the CDS
        Hooks sandbox's PAMA screen applies), or ``delete`` + ``create`` where an update
        cannot express it (a draft that is not a ServiceRequest, an alternative with no code,
        such as the interventional radiology referral). Otherwise suggestions only add, and
        only consultations or the IR referral: adding a second imaging study beside one the
        service cannot judge is not advice. An alternative already among the draft orders is
        never suggested again: if one is, removing this order is the only suggestion.
        """
        ordered = od.order_class.procedure
        assert ordered is not None
        plan = _Plan()
        regions = self.target_regions(od)
        # Same modality first: "use MRI WITHOUT contrast" is the advice for an MRI with contrast.
        alts = sorted(ratings, key=lambda r: self.k.procedures[r.procedure].modality != ordered.modality)
        delete = {"type": "delete", "description": self.say("replaceRemove", order=od.ref), "resourceId": od.ref}
        for r in alts:
            proc = self.k.procedures[r.procedure]
            if proc.kind != ordered.kind or (not replace and proc.kind != "treatment"):
                continue
            where: list[Region | None] = list(regions) if proc.kind == "imaging" and regions else [None]
            name = self.created_name(proc, regions)
            if all(self.drafted(proc, reg, exclude=od.ref) for reg in where):
                plan.drafted = plan.drafted or (name, proc)
                continue
            order_text = self.say("replaceOrder", procedure=name, category=self.k.category_display(r.category))
            updated = self.updated_order(od, proc, where[0], r) if replace else None
            creates = [o for reg in (where[1:] if updated is not None else where)
                       if (o := self.new_order(od.raw, proc, reg, reasons=od.facts.evidence.get(Fact.VCF, ()))) is not None]
            if not creates and updated is None:
                continue
            if proc.kind == "imaging" and not regions:
                plan.whole_spine = True
            actions = [{"type": "create", "description": order_text, "resource": o} for o in creates]
            if updated is not None:
                # One update of the draft order itself (a second region, if any, is created beside it).
                plan.items.append(self.suggestion(self.say("replaceLabel", procedure=name), [
                    {"type": "update", "description": order_text, "resource": updated}, *actions],
                    recommended=not plan.items))
            elif replace:
                plan.items.append(self.suggestion(self.say("replaceLabel", procedure=name), [delete, *actions],
                                                  recommended=not plan.items))
            else:
                plan.items.append(self.suggestion(self.say("referralLabel", referral=_lower_first(name)), actions))
            plan.first = plan.first or (name, proc)
        if replace and plan.drafted:
            plan.items = [self.suggestion(self.say("removeLabel", procedure=plan.drafted[0]), [delete],
                                          recommended=True)]
            plan.first, plan.whole_spine = None, False
        return plan

    # ---- detail text --------------------------------------------------------------------
    def evidence_block(self, labelled: Iterable[tuple[str | None, Evidence]], heading: bool = True) -> list[str]:
        """One line per resource with all its codes and the facts they show, at most
        EVIDENCE_MAX lines, then "and N more" (with the card's page link when there is one)."""
        # Every resource is counted, but only the lines shown are put into words: a long
        # record gives thousands of resources for a few lines.
        shown: dict[tuple[str, str], list[tuple[str | None, Evidence]]] = {}
        counted: set[tuple[str, str]] = set()
        for label, e in labelled:
            # A resource's codings are one concept; an order's reasonCodes are separate ones.
            key = (e.resource, (e.display or e.code) if e.resource.endswith("#reasonCode") else "")
            if key in shown:
                shown[key].append((label, e))
            elif key not in counted:
                counted.add(key)
                if len(shown) < EVIDENCE_MAX:
                    shown[key] = [(label, e)]
        if not counted:
            return []
        lines = [self.say("evidenceHeading")] if heading else []
        for (resource, _), members in shown.items():
            # The record's evidence is the same for every order of the call: each line is
            # put into words once (keyed by the evidence objects' ids; the memo holds the
            # objects, so no id is reused while it lives).
            memo_key = (resource, tuple((label, id(e)) for label, e in members))
            hit = self._lines.get(memo_key)
            if hit is None:
                hit = self._lines[memo_key] = (members, self.evidence_line(resource, members))
            lines.append(hit[1])
        more = len(counted) - EVIDENCE_MAX
        if more > 0:
            more_key = "evidenceMoreLink" if self.o.explain_url is not None else "evidenceMore"
            lines.append(self.say(more_key, n=more, url=_MORE_LINK))
        return lines

    def evidence_line(self, resource: str, members: Iterable[tuple[str | None, Evidence]]) -> str:
        """The evidence line of one resource: its display, codes and facts, where it is."""
        display: str | None = None
        codes: list[str] = []
        labels: list[str] = []
        day = None
        for label, e in members:
            if e.origin == "report":
                # Read from free text, not a code: the sentence itself, marked unconfirmed.
                display = display or (f"“{e.display}”" if e.display else None)
                codes.append(self.say("reportEvidence"))
                day = e.onset
            elif e.origin == "medication" and not e.code:
                # Recognised by the drug's name, not by a listed RxNorm code.
                display = display or e.display
                codes.append(self.say("medicationNameEvidence"))
            else:
                display = display or e.display
                codes.append(self.code_text(e))
            if label:
                labels.append(label)
        ref, _, part = resource.partition("#")
        where = self.say("orderReason") if part == "reasonCode" else md_escape(ref)
        line = "- " + (f"{md_escape(display)} " if display else "") + f"({'; '.join(_unique(codes))})"
        if labels:
            line += ": " + ", ".join(_unique(labels))
        if day is not None:
            where += f", {day.isoformat()}"
        return f"{line} — {where}"

    def order_evidence(self, od: OrderDecision, variant: Variant | None) -> list[str]:
        wanted = set(variant.criteria.all) if variant else set()
        return self.evidence_block(
            (self.k.fact_label(fact), e) for fact, evs in od.facts.evidence.items()
            if not (fact in self.k.derived or (wanted and fact not in wanted and fact in tuple(ComputedFact)))
            for e in evs)

    def provenance_words(self, r: Rating) -> str:
        return self.say(f"provenance{r.provenance}")

    def rating_line(self, r: Rating, regions: Sequence[Region] = ()) -> str:
        proc = self.k.procedures[r.procedure]
        parts = [self.k.category_display(r.category)]
        if r.score is not None:
            parts.append(self.say("ratingScore", score=r.score))
        if r.rrl and r.rrlNote:
            parts.append(self.say("ratingRadiationNote", rrl=r.rrl, note=r.rrlNote))
        elif r.rrl:
            parts.append(self.say("ratingRadiation", rrl=r.rrl))
        parts.append(self.say("ratingSource", provenance=self.provenance_words(r)))
        return f"- {self.plain_name(proc, regions if proc.kind == 'imaging' else ())}: " + "; ".join(parts)

    def variant_heading(self, variant: Variant) -> list[str]:
        topic = self.k.variant_topic[variant.id]
        heading = "variantHeading" if variant.titleConfirmed else "variantHeadingUnconfirmed"
        return [self.say(heading, variant=variant.id, title=variant.title),
                self.say("topicLine", topic=topic.title, revised=topic.revised)]

    def source_line(self, variant: Variant) -> str:
        topic = self.k.variant_topic[variant.id]
        return self.say("sourceLine" if topic.urlConfirmed else "sourceLineUnconfirmed", citation=topic.citation,
                        url=topic.url)

    def variant_detail(self, od: OrderDecision, variant: Variant, lead: Sequence[str],
                       alternatives: Sequence[Rating] = (), notes: Sequence[str] = ()) -> str:
        own = [od.order_class.region] if od.order_class.region else []
        lines = [*lead, "", *self.variant_heading(variant), ""]
        if od.choice is not None and od.choice.status == "agreed":
            lines += [self.say("variantsAgree", variants=" or ".join(c.id for c in od.choice.candidates)), ""]
        ev = self.order_evidence(od, variant)
        if ev:
            lines += [*ev, ""]
        if od.rating is not None:
            lines += [self.say("orderedHeading"), self.rating_line(od.rating, own), ""]
        alts = list(alternatives) or list(od.alternatives)
        if alts:
            regions = self.target_regions(od)
            lines += [self.say("alternativesHeading"), *[self.rating_line(r, regions) for r in alts], ""]
        for n in [*notes, *self.provenance_notes(od, [od.rating, *alts])]:
            lines += [n, ""]
        lines.append(self.source_line(variant))
        return "\n".join(lines).strip()

    def provenance_notes(self, od: OrderDecision, ratings: Sequence[Rating | None]) -> list[str]:
        """Where the ratings on a card come from, in words (SEED and SECONDARY cells), and the
        record codes whose meaning is unconfirmed."""
        notes = []
        provenances = {r.provenance for r in ratings if r is not None}
        if "SEED" in provenances:
            notes.append(self.say("seedNote"))
        if "SECONDARY" in provenances:
            notes.append(self.say("secondaryNote"))
        # Report text is marked where it is shown ("from report text, unconfirmed"), not a code.
        # Each distinct code and display put into words once (a long record repeats a few).
        distinct = {(e.system, e.code, e.display): e for evs in od.facts.evidence.values() for e in evs
                    if e.unconfirmed and e.code and e.origin != "report"}
        unconfirmed = sorted({self.code_text(e) + (f" {md_escape(e.display)}" if e.display else "")
                              for e in distinct.values()})
        if unconfirmed:
            shown = "; ".join(unconfirmed[:EVIDENCE_MAX]) + (f"; and {len(unconfirmed) - EVIDENCE_MAX} more"
                                                            if len(unconfirmed) > EVIDENCE_MAX else "")
            notes.append(self.say("unconfirmedNote", items=shown))
        return notes

    def scenario(self, od: OrderDecision, variant: Variant) -> str:
        """The scenario in a few words; when several variants agree on the rating, all of them."""
        agreeing = od.choice.candidates if od.choice is not None and od.choice.status == "agreed" else ()
        return " or ".join(_unique(self.rules.scenario.get(c.id, c.title) for c in (agreeing or (variant,))))

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
        if choice.status in ("selected", "red-flag", "agreed") and v is not None and od.rating is not None:
            if od.rating.category == USUALLY_NOT_APPROPRIATE:
                self.rated_card(od, v, CardKind.NOT_APPROPRIATE)
            elif od.rating.category in MAY_BE_APPROPRIATE:
                self.rated_card(od, v, CardKind.MAY_BE_APPROPRIATE)
            # Usually appropriate: silence (the rating travels in systemActions); no alert fatigue.
        elif choice.status == "selected" and v is not None:
            self.no_rating_card(od, v)
        elif choice.status == "missing" and choice.missing:
            options = [" and ".join(self.k.fact_label(f) for f in gap) for gap in choice.missing]
            name = self.plain_name(proc, [od.order_class.region] if od.order_class.region else ())
            kind = CardKind.MISSING_FACTS
            detail = [self.lead(kind, procedure=name), "", self.say("recordOneOf"), *[f"- {o}" for o in options], ""]
            if (od.reading is not None and "radiologyReports" in od.reading.unavailable
                    and any(Fact.MARROW_EDEMA in gap for gap in choice.missing)):
                detail += [self.say("missingReportsNotRead"), ""]  # the MRI may be on record, unread
            if od.reading is not None and od.reading.unplaced and any(Fact.MARROW_EDEMA in g for g in choice.missing):
                detail += [self.say("missingEdemaLevelUnknown"),
                           *self.evidence_block(((None, e) for e in od.reading.unplaced), heading=False), ""]
            if choice.candidates:
                detail += [self.say("candidateVariants"), *self.candidate_lines(choice.candidates), ""]
            detail += self.order_evidence(od, None)
            summary = self.summary(kind, missing=" or ".join(options), procedure=name)
            if len(summary) > SUMMARY_MAX:
                summary = self.say("missingFactsShort")
            self.card(kind, summary, "\n".join(detail).strip(), None)
        elif choice.status == "conflict":
            name = self.plain_name(proc, [od.order_class.region] if od.order_class.region else ())
            detail = [self.lead(CardKind.CONFLICT, procedure=name), "", *self.candidate_lines(choice.candidates), "",
                      *self.order_evidence(od, None)]
            self.card(CardKind.CONFLICT, self.summary(CardKind.CONFLICT, procedure=name), "\n".join(detail).strip(), None)
        elif choice.status == "excluded":
            name = self.plain_name(proc, [od.order_class.region] if od.order_class.region else ())
            detail = [self.lead(CardKind.TRAUMATIC, procedure=name), "", *self.order_evidence(od, None)]
            self.card(CardKind.TRAUMATIC, self.summary(CardKind.TRAUMATIC, procedure=name), "\n".join(detail).strip(),
                      None)
        self.advisory_cards(od)

    def rated_card(self, od: OrderDecision, v: Variant, kind: CardKind) -> None:
        """A Usually not appropriate / May be appropriate order: action first (use X instead,
        or remove it when X is already ordered), ratings and evidence in the detail."""
        proc, r = od.order_class.procedure, od.rating
        assert proc is not None and r is not None
        own = [od.order_class.region] if od.order_class.region else []
        ordered = self.plain_name(proc, own)
        why_kept = self.never_replaced(proc)
        plan = self.alternative_suggestions(od, od.alternatives, replace=why_kept is None)
        scenario = self.scenario(od, v)
        una = r.category == USUALLY_NOT_APPROPRIATE
        alt_proc = plan.first[1] if plan.first else (plan.drafted[1] if plan.drafted else None)
        if alt_proc is not None and alt_proc.modality == proc.modality and alt_proc.contrast != proc.contrast \
                and proc.contrast in ("with", "without-and-with"):
            reason = self.say("reasonContrast", scenario=scenario)
        else:
            reason = self.say("reasonGeneric" if una else "reasonRatedHigher", ordered=ordered, scenario=scenario)
        alt = self.created_name(plan.first[1], self.target_regions(od), short=True) if plan.first else ""
        if why_kept is not None and plan.first:
            summary = self.say("noRatingAdd", alternative=_lower_first(alt), scenario=scenario)
        elif plan.drafted and why_kept is None:
            summary = self.say("removeDuplicate", ordered=ordered, alternative=plan.drafted[0])
        elif plan.first and una:
            summary = self.summary(kind, alternative=alt, reason=reason)
        elif plan.first:
            summary = self.summary(kind, alternative=alt, ordered=_lower_first(ordered), scenario=scenario)
        else:
            summary = self.say("notAppropriate" if una else "mayBeAppropriate", ordered=ordered, scenario=scenario)
        if len(summary) > SUMMARY_MAX and plan.first:  # long names: keep the action, shorten the reason
            summary = self.say("useInsteadShort" if una else "useInsteadMayShort",
                alternative=alt, ordered=_lower_first(ordered))

        lead = [self.lead(kind, ordered=ordered, category=self.k.category_display(r.category))]
        if why_kept is not None:
            lead.append(self.say("neverReplacedLead", ordered=ordered, why=why_kept))
        notes = [self.say("wholeSpineNote")] if plan.whole_spine else []
        self.card(kind, summary, self.variant_detail(od, v, lead, notes=notes), v, plan.items)

    def no_rating_card(self, od: OrderDecision, v: Variant) -> None:
        """The variant applies but this service does not hold the cell for the ordered
        procedure (UNKNOWN): the ACR did rate it, so nothing is deleted; at most a usually
        appropriate consultation is added. A bone density study gets no card at all."""
        proc = od.order_class.procedure
        assert proc is not None
        if proc.id in self.rules.neverReplaced.procedures:
            return
        own = [od.order_class.region] if od.order_class.region else []
        ordered = self.plain_name(proc, own)
        plan = self.alternative_suggestions(od, od.alternatives, replace=False)
        if plan.first:
            alt = self.created_name(plan.first[1], (), short=True)
            summary = self.say("noRatingAdd", alternative=_lower_first(alt), scenario=self.scenario(od, v))
        elif any(a in od.advisories for a in WARNING_ADVISORIES):
            return  # the warning about this order says what matters; no second card with nothing to do
        else:
            summary = self.summary(CardKind.NO_CRITERIA, ordered=ordered)
        lead = [self.lead(CardKind.NO_CRITERIA, ordered=ordered)]
        self.card(CardKind.NO_CRITERIA, summary, self.variant_detail(od, v, lead), v, plan.items, behavior="any")

    def advisory_cards(self, od: OrderDecision) -> None:
        v = od.variant
        advisories = set(od.advisories)
        if Advisory.AUGMENT_INFECTION in advisories:
            lines = [self.lead(Advisory.AUGMENT_INFECTION), "",
                     *self.evidence_block((self.k.fact_label(Fact.INFECTION), e) for e in od.facts.evidence.get(Fact.INFECTION, ()))]
            # An absolute exclusion (CMS LCD L34228): withdrawing the order is the action offered.
            withdraw = self.suggestion(self.say("withdrawLabel"), [
                {"type": "delete", "description": self.say("replaceRemove", order=od.ref), "resourceId": od.ref}])
            self.card(Advisory.AUGMENT_INFECTION, self.summary(Advisory.AUGMENT_INFECTION), "\n".join(lines).strip(), v,
                      [withdraw])
        for adv in (Advisory.REGION_MISMATCH, Advisory.AUGMENT_ASYMPTOMATIC, Advisory.FRAGILITY_READING):
            if adv in advisories:
                self.fact_card(od, adv)
        checklist = [a for a in (Advisory.AUGMENT_NO_EDEMA, Advisory.AUGMENT_NO_THERAPY, Advisory.AUGMENT_BLEEDING)
                     if a in advisories]
        if checklist:
            self.checklist_card(od, checklist)
        # "augment-neuro" is carried by the red-flag card: one card per situation.
        if Advisory.POST_AUGMENTATION_MRI in advisories and self.mri_covers_treated_level(od):
            evs = od.facts.evidence.get(Fact.AUGMENTATION_HISTORY, ())
            lines = [self.lead(Advisory.POST_AUGMENTATION_MRI), "",
                     *self.evidence_block((self.k.fact_label(Fact.AUGMENTATION_HISTORY), e) for e in evs)]
            self.card(Advisory.POST_AUGMENTATION_MRI, self.summary(Advisory.POST_AUGMENTATION_MRI),
                      "\n".join(lines).strip(), v)
        if Advisory.STEER_IR in advisories:
            self.steer_ir_card(od)
        if Advisory.SAME_STUDY_RECENTLY in advisories and od.reading is not None and od.reading.same_study:
            self.same_study_card(od)

    def same_study_card(self, od: OrderDecision) -> None:
        """The ordered study was reported within the repeat window: name the earlier report
        (information only: the window is this service's choice, imaging-rules.json)."""
        assert od.reading is not None
        earlier = od.reading.same_study[0]
        day = earlier.date.date().isoformat() if earlier.date else ""
        name = earlier.code_display or (f"DiagnosticReport/{earlier.report_id}" if earlier.report_id else "")
        report = md_escape(f"{name}, DiagnosticReport/{earlier.report_id}" if earlier.report_id else name)
        days = self.k.reading.imaging.repeatStudyDays if self.k.reading else 0
        kind = Advisory.SAME_STUDY_RECENTLY
        self.card(kind, self.summary(kind, date=day), self.lead(kind, report=report, date=day, days=days), od.variant)

    def fact_card(self, od: OrderDecision, kind: Advisory) -> None:
        """A card about how the record was read (region mismatch, asymptomatic fracture,
        fragility reading): its text, then the evidence of the facts cards.json names for it."""
        where = {"order": od.order_class.region.display if od.order_class.region else "",
                 "fracture": " and ".join(r.display for r in od.fracture_regions)}
        facts = self.k.cards.kinds[kind].evidence
        lines = [self.lead(kind, **where), "",
                 *self.evidence_block((self.k.fact_label(f), e) for f in facts for e in od.facts.evidence.get(f, ()))]
        # A card that leans on the variant's ratings (e.g. "medical management is Usually
        # appropriate") says where those ratings come from when it is not the ACR's own table.
        v = od.variant
        cites = v is not None and kind in RATING_CITING_ADVISORIES
        notes = self.provenance_notes(od, [od.rating, *od.alternatives]) if cites else []
        if v is not None and notes:
            lines += ["", *self.variant_heading(v)]
            for n in notes:
                lines += ["", n]
            lines += ["", self.source_line(v)]
        self.card(kind, self.summary(kind, **where), "\n".join(lines).strip(), v)

    def checklist_card(self, od: OrderDecision, advisories: Sequence[str]) -> None:
        """One card per augmentation order: MRI evidence, osteoporosis therapy, bleeding.
        Warning when a coagulopathy is on record (relative exclusion, CMS LCD L34228); an
        anticoagulant alone asks for peri-procedural management (SIR), not a contraindication."""
        facts = od.facts
        items: list[tuple[str, str]] = []
        for adv in (Advisory.AUGMENT_NO_EDEMA, Advisory.AUGMENT_NO_THERAPY):
            if adv == Advisory.AUGMENT_NO_EDEMA and od.reading is not None and od.reading.no_spine_mri:
                continue  # the reports were read: the MRI as next step says it (reading_items)
            if adv in advisories:
                items.append((self.summary(adv), self.lead(adv)))
        coag = Advisory.AUGMENT_BLEEDING in advisories and Fact.COAGULOPATHY in facts
        if coag:
            items.append((self.say("checklistCoag"), self.say("checklistCoagDetail")))
        if Advisory.AUGMENT_BLEEDING in advisories and Fact.ANTICOAGULATION in facts:
            items.append((self.say("checklistAnticoag"), self.say("checklistAnticoagDetail")))
        items += self.reading_items(od)
        labs = od.reading.labs if od.reading is not None else ()
        if not items:
            return
        # One indicator per card kind (the feedback report counts by kind): with a
        # coagulopathy, or a lab outside the SIR threshold, the checklist is the bleeding
        # advisory's warning, else an info card.
        coag = coag or bool(labs and Advisory.AUGMENT_BLEEDING in advisories)
        kind = Advisory.AUGMENT_BLEEDING if coag else CardKind.AUGMENT_CHECKLIST
        summary = self.summary(kind, items="; ".join(i for i, _ in items))
        if len(summary) > SUMMARY_MAX:
            summary = self.summary(kind, items=", ".join(i.split(",")[0].split(" (")[0] for i, _ in items))
        lines = [self.lead(kind), *[f"- {d}" for _, d in items], ""]
        if od.reading is not None and (missing := self.not_read(od.reading.unavailable)):
            lines += [self.say("checklistNotRead", items=missing), ""]
        lines += self.evidence_block((self.k.fact_label(f), e) for f in (Fact.MARROW_EDEMA, Fact.COAGULOPATHY,
                                                                         Fact.ANTICOAGULATION)
                                     for e in facts.evidence.get(f, ()))
        v = od.variant
        if v is not None and od.rating is not None:
            lines += ["", *self.variant_heading(v), "", self.say("orderedHeading"),
                      self.rating_line(od.rating, [od.order_class.region] if od.order_class.region else ())]
            for n in self.provenance_notes(od, [od.rating]):
                lines += ["", n]
            lines += ["", self.source_line(v)]
        self.card(kind, summary, "\n".join(lines).strip(), v, self.mri_next_step(od))

    def mri_next_step(self, od: OrderDecision) -> list[dict]:
        """No spine MRI among the radiology reports of an augmentation order: a suggestion to
        order an MRI without contrast of the fracture region (IR teaching case 'How Should You Image New
        Back Pain...' FAQ; IR case presentation, takeaway 2), unless a draft order already images it."""
        if od.reading is None or not od.reading.no_spine_mri or Advisory.AUGMENT_NO_EDEMA not in od.advisories:
            return []
        mri = next((p for p in self.k.procedures.values()
                    if p.modality == MRI_MODALITY and p.contrast == "without" and p.kind == "imaging"), None)
        regions = list(od.fracture_regions) or ([od.order_class.region] if od.order_class.region else [])
        region = regions[0] if len(regions) == 1 else None
        if mri is None or self.drafted(mri, region):
            return []
        new = self.new_order(od.raw, mri, region, reasons=od.facts.evidence.get(Fact.VCF, ()))
        if new is None:
            return []
        name = self.plain_name(mri, [region] if region else ())
        return [self.suggestion(self.say("mriNextLabel", procedure=name),
                                [{"type": "create", "description": name, "resource": new}])]

    def reading_items(self, od: OrderDecision) -> list[tuple[str, str]]:
        """Checklist items from the radiology reports and labs: the MRI as next step (no
        spine MRI among the reports; replaces the 'no MRI evidence' reminder), edema at a
        level treated before (Dansie et al.), an INR or platelet count outside the SIR threshold."""
        reading = od.reading
        if reading is None:
            return []
        items: list[tuple[str, str]] = []
        if Advisory.AUGMENT_NO_EDEMA in od.advisories and reading.no_spine_mri:
            regions = [r.display for r in od.fracture_regions] or (
                [od.order_class.region.display] if od.order_class.region else [])
            region = " and ".join(regions) or self.say("mriRegionUnknown")
            items.append((self.say("checklistMriNext", region=region), self.say("checklistMriNextDetail", region=region)))
        treated = reading.imaging.edema_at_augmented_level if reading.imaging is not None else ()
        if treated:
            levels = ", ".join(_unique(lv for f in treated for lv in f.levels))  # never empty: a level was matched
            items.append((self.say("checklistEdemaTreated"), self.say("checklistEdemaTreatedDetail", levels=levels)))
        for j in reading.labs:
            v = j.value
            value = f"{v.value:g}"
            note = self.say("checklistLabClassUnconfirmed") if j.unconfirmed else ""
            items.append((self.say("checklistLab", lab=v.label, value=value),
                          self.say("checklistLabDetail", lab=v.label, value=value, unit=_UNIT_WORDS.get(v.unit, f" {v.unit}"),
                                   date=v.date, threshold=j.threshold, citation=j.citation, note=note)))
        return items

    def not_read(self, unavailable: Sequence[str]) -> str:
        """The record parts the service could not read, in words ('radiology reports, medications')."""
        words = []
        if "radiologyReports" in unavailable:
            words.append(self.say("notReadRadiologyReports"))
        if "medicationRequests" in unavailable and "medicationStatements" in unavailable:
            words.append(self.say("notReadMedications"))
        if "coagulationLabs" in unavailable:
            words.append(self.say("notReadCoagulationLabs"))
        return ", ".join(words)

    def mri_covers_treated_level(self, od: OrderDecision) -> bool:
        """Whether the MRI images the level of the prior augmentation (unknown level, or an
        MRI naming no region or the complete spine: assume it does)."""
        treated = self.expand(self.record_regions(od.facts.evidence.get(Fact.AUGMENTATION_HISTORY, ())))
        region = od.order_class.region
        if not treated or region is None or region.id == self.rules.wholeSpineRegion:
            return True
        return region.id in {r.id for r in treated} or any(region.id in self.rules.regionExpansion.get(r.id, ())
                                                            for r in treated)

    def steer_ir_card(self, od: OrderDecision) -> None:
        v, proc = od.variant, od.order_class.procedure
        assert v is not None and proc is not None  # steer-ir is advised only within a variant
        aug = self.k.procedures[self.k.preferred.augmentation]
        if self.drafted(aug, None):
            return
        new = self.new_order(od.raw, aug, None, reasons=od.facts.evidence.get(Fact.VCF, ()))
        rating = v.rating_for(aug.id)
        referral = self.k.preferred.augmentationText
        sug = [self.suggestion(self.say("referralLabel", referral=_lower_first(referral)), [
            {"type": "create", "description": referral, "resource": new}], recommended=True)]
        fields = {"procedure": self.plain_name(proc), "augmentation": aug.display}
        lead = [self.lead(Advisory.STEER_IR, **fields)]
        self.card(Advisory.STEER_IR, self.summary(Advisory.STEER_IR, **fields),
                  self.variant_detail(od, v, lead, [rating] if rating else []), v, sug)

    def red_flag_card(self) -> None:
        """One critical card for neurologic red flags: urgent MRI without contrast covering
        the fractured levels (unless a draft MRI already does) and urgent spine surgery
        consultation; with an augmentation order it also says why augmentation waits."""
        d = self.d
        if not d.red_flags:
            return
        template = next(iter(self.drafts.values()), None) if self.drafts else None
        # The level of the fracture decides; back pain only when no fracture is on record.
        has_fracture = any(f in od.facts for od in d.orders for f in (*self.k.acuity.vcfFacts, Fact.VCF_TRAUMATIC))
        known = _unique(r for od in d.orders
                        for r in (self.fracture_regions(od) if has_fracture else self.pain_regions(od.facts)))
        by_region = self.rules.redFlagImaging.byRegion
        needed = _unique(x for r in (known or ["unknown"]) for x in by_region.get(r, by_region["unknown"]))
        covered = self.mri_covered_regions()
        missing = [] if covered is None else [self.regions[r] for r in needed if r not in covered]
        suggestions, actions = [], []
        mri = self.k.procedures[self.k.preferred.redFlagImaging]
        if missing:
            creates = [o for reg in missing if (o := self.new_order(template, mri, reg, urgent=True,
                                                                    reasons=d.red_flags)) is not None]
            name = self.plain_name(mri, missing, emphasize=True)
            if creates:
                suggestions.append(self.suggestion(self.say("urgentOrderLabel", procedure=name), [
                    {"type": "create", "description": self.say("urgentOrderAction", procedure=self.plain_name(mri, [reg])),
                     "resource": o}
                    for reg, o in zip(missing, creates, strict=False)]))
                actions.append(name)
        consult = self.k.procedures[self.k.preferred.redFlagConsultation]
        if consult in d.red_flag_missing:
            new = self.new_order(template, consult, None, urgent=True, reasons=d.red_flags)
            if new is not None:
                consult_name = self.say("spineSurgeryConsultation")
                suggestions.append(self.suggestion(self.say("urgentOrderLabel", procedure=consult_name), [
                    {"type": "create", "description": self.say("urgentOrderAction", procedure=_lower_first(consult.display)),
                     "resource": new}]))
                actions.append(consult_name)
        augmentation = any(od.order_class.procedure is not None and od.order_class.procedure.category == AUGMENTATION
                           for od in d.orders)
        if augmentation:  # the augmentation exclusion and the red flag are one situation: one card
            summary = self.summary(Advisory.AUGMENT_NEURO)
        elif actions:
            summary = self.summary(CardKind.RED_FLAG, actions=" and ".join(actions))
            if len(summary) > SUMMARY_MAX:
                summary = self.summary(CardKind.RED_FLAG, actions=self.say("redFlagActionsShort"))
        else:
            summary = self.say("redFlagCovered")
        key = "unknown" if not known else ("lumbar" if set(known) == {"lumbar"} else "thoracic")
        region_note = self.say({"unknown": "redFlagRegionUnknown", "lumbar": "redFlagRegionLumbar",
                                "thoracic": "redFlagRegionThoracic"}[key])
        lines = [self.lead(Advisory.AUGMENT_NEURO), ""] if augmentation else []
        lines += [self.lead(CardKind.RED_FLAG), "", region_note, ""]
        lines += self.evidence_block((None, e) for e in d.red_flags)
        routed = next((od.variant for od in d.orders if od.variant is not None and od.variant.routing), None)
        if routed is not None:
            lines += ["", self.say("redFlagRouting", topic=self.k.variant_topic[routed.id].title, title=routed.title)]
        self.card(CardKind.RED_FLAG, summary, "\n".join(lines).strip(), routed, suggestions, behavior="any")

    # ---- ratings --------------------------------------------------------------------------
    def pama_extensions(self, pama: str, category: str | None, variant: Variant, consult_id: str) -> list[dict]:
        """The Argonaut PAMA rating extensions of an order rated ``pama`` (ACR ``category``,
        added as a second coding when it is not Usually appropriate but counts as
        appropriate) under ``variant``: pama-rating, qcdsm-consulted, consult-id, auc-applied."""
        coding = [{"system": PAMA_SYSTEM, "code": pama, "display": self.k.pama_display(pama)}]
        if category is not None and category != USUALLY_APPROPRIATE and pama == APPROPRIATE:
            coding.append({"system": ACR_CATEGORY_SYSTEM, "code": category,
                           "display": self.k.category_display(category)})
        return [
            {"url": PAMA_BASE + "pama-rating", "valueCodeableConcept": {"coding": coding}},
            {"url": PAMA_BASE + "pama-rating-qcdsm-consulted", "valueString": self.o.qcdsm},
            {"url": PAMA_BASE + "pama-rating-consult-id", "valueUri": consult_id},
            {"url": PAMA_BASE + "pama-rating-auc-applied", "valueUri": self.k.variant_topic[variant.id].url},
        ]

    def rating_action(self, od: OrderDecision, position: int) -> dict:
        assert od.pama is not None and od.variant is not None  # only rated orders get a rating action
        self.consult_ids[position] = consult_id = f"urn:uuid:{self.o.new_id()}"
        ext = self.pama_extensions(od.pama, od.rating.category if od.rating is not None else None, od.variant,
                                   consult_id)
        resource = dict(od.raw)
        # Keep the EHR's own extensions; replace only earlier PAMA ratings of this order.
        kept = [e for e in resource.get("extension") or () if not str(e.get("url", "")).startswith(PAMA_BASE)]
        resource["extension"] = kept + ext
        return {"type": "update", "description": self.say("ratingAction", rating=self.k.pama_display(od.pama)),
                "resource": resource}


def render(knowledge: Knowledge, decision: Decision, *, draft_orders: Sequence[Mapping], patient_id: str,
           options: RenderOptions = RenderOptions(), input_issues: Sequence[Mapping] = (),
           record_not_read: Mapping[str, int] | None = None) -> Rendered:
    """Build the CDS Hooks response for ``decision``.

    ``record_not_read``: resource type -> how many of the record's resources the decision
    would have read were not (past the service's limit per call); every card then ends by
    saying so (cards.json ``recordNotRead``), since the advice may miss what they hold.

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
    if record_not_read:
        what = ", ".join(f"{n:,} {resource_type}s" for resource_type, n in record_not_read.items())
        for card in r.cards:
            card["detail"] += "\n\n" + r.say("recordNotRead", what=what)
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
