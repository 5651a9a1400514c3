"""What the "Why this advice?" page says about a card, from its audit record and the knowledge.

Writing side: :func:`order_evidence` is the JSON stored with each audited order
(``audit_order.evidence``): the facts behind the variant as codes and the element of the
record they came from, acuity as days before the order, the missing or conflicting facts
when no variant could be chosen. Never a name, a resource id or a calendar date of the
patient's record; a fact read from a radiology report keeps the sentence it was read from
(issue 13: the page shows it, marked "from report text, unconfirmed").

Reading side: :func:`load_explanation` turns the audit record of a card (any worker or host
wrote it) into an :class:`Explanation`: the order and its rating, the variant and the facts
behind it, the variant's full rating table, what is unconfirmed, the guideline citation.
Tables and citations come from the knowledge loaded now; :attr:`Explanation.knowledge_changed`
says when that is not the knowledge that gave the advice. No Flask here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from cds_service.decision.engine import OrderDecision
from cds_service.decision.knowledge import CATEGORY_DISPLAY, Knowledge, Topic, Variant
from cds_service.decision.render import PAMA_RATING_DISPLAY
from cds_service.decision.scenario import Evidence, reference_date
from cds_service.decision.terminology import SYSTEM_NAMES
from cds_service.store.db import Database
from cds_service.store.tables import AuditCall, AuditCard, AuditOrder

EVIDENCE_FORMAT = 1
_DISPLAY_MAX = 256
# Codes stored per order for the page. A long record repeats the same codes in hundreds of
# resources, and every order of the call stores them again: unbounded, one call of 50
# orders over thousands of Conditions stored 10 MB. Past this, the count is stored instead.
FACTS_LISTED_MAX = 40
# ACR Appropriateness Criteria, Radiation Dose Assessment: adult effective dose per level.
RRL_ADULT_DOSE = {1: "less than 0.1 mSv", 2: "0.1-1 mSv", 3: "1-10 mSv", 4: "10-30 mSv", 5: "30-100 mSv"}
RRL_MAX = 5
PROVENANCE_TEXT = {
    "OFFICIAL": "from the ACR's published rating table",
    "SEED": "from a seed document of this project, not yet checked against the ACR's published table",
    "SECONDARY": "from a third-party summary of the ACR table, not from the ACR's own published table",
}
_ORDER_KIND_TEXT = {"imaging": "an imaging order", "treatment": "a treatment order"}


# ----------------------------------------------------------------------- writing side


def _element(resource: str) -> str:
    """``Condition/x`` -> ``Condition.code``; ``ServiceRequest/x#reasonCode`` -> ``ServiceRequest.reasonCode``."""
    type_, _, rest = resource.partition("/")
    return f"{type_}.{rest.partition('#')[2] or 'code'}"


def _clip(value: Any) -> str | None:
    return value[:_DISPLAY_MAX] if isinstance(value, str) and value else None


def order_evidence(knowledge: Knowledge, od: OrderDecision) -> dict[str, Any]:
    """The JSON stored in ``audit_order.evidence`` for one decided order.

    Shape (``format`` 1)::

        {"format": 1,
         "order": {"display": str|None, "unconfirmed": bool, "region": region id|None},
         "facts": [{"facts": [{"id", "label"}], "system", "code", "display", "source":
                    "Condition.code"|"Procedure.code"|"ServiceRequest.reasonCode",
                    "unconfirmed": bool, "encounter": "initial"|"subsequent"|None,
                    "days_before_order": int|None,
                    "sentence": str (facts read from report text only)}],
         "missing": [[{"id", "label"}]],   # alternatives: record all facts of one of them
         "candidates": [{"id", "title"}],  # variants that fit (conflict) or nearly fit (missing)
         # only when ``facts`` was cut at FACTS_LISTED_MAX entries:
         "facts_not_listed": int, "present": [fact id]}  # every fact found, listed or not

    One ``facts`` entry per code of one resource, listing every fact (base, derived, acuity)
    that code supports, in record order; at most :data:`FACTS_LISTED_MAX` entries.
    ``days_before_order`` is the Condition's onset or the Procedure's date counted back from
    the order's authoredOn, not the date.
    """
    as_of = reference_date(od.raw)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    not_listed: set[tuple[str, str, str]] = set()
    for fact, evidence in od.facts.evidence.items():
        for e in evidence:
            key = (e.resource, e.system, e.code)
            row = rows.get(key)
            if row is None:
                if len(rows) >= FACTS_LISTED_MAX:
                    not_listed.add(key)
                    continue
                row = rows[key] = _fact_row(e, as_of)
            if all(f["id"] != fact for f in row["facts"]):
                row["facts"].append({"id": fact, "label": knowledge.fact_label(fact)})
    oc, choice = od.order_class, od.choice
    coding = oc.coding or {}
    concept = None
    if oc.procedure is not None and oc.procedure.valueSet and coding.get("system") and coding.get("code"):
        concept = knowledge.terminology.concept(oc.procedure.valueSet, coding["system"], coding["code"])
    out = {
        "format": EVIDENCE_FORMAT,
        "order": {"display": _clip(coding.get("display")) or (concept.display if concept else None),
                  "unconfirmed": bool(concept and concept.unconfirmed),
                  "region": oc.region.id if oc.region else None},
        "facts": list(rows.values()),
        "missing": [[{"id": f, "label": knowledge.fact_label(f)} for f in gap] for gap in (choice.missing if choice else ())],
        "candidates": [{"id": v.id, "title": v.title} for v in (choice.candidates if choice else ())],
    }
    if not_listed:
        # The criteria table says which facts were present: from all of them, not the listed ones.
        out["facts_not_listed"] = len(not_listed)
        out["present"] = list(od.facts.evidence)
    return out


def _fact_row(e: Evidence, as_of: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"facts": [], "system": e.system, "code": e.code, "display": _clip(e.display),
           "source": _element(e.resource), "unconfirmed": e.unconfirmed, "encounter": e.encounter,
           "days_before_order": (as_of - e.onset).days if e.onset is not None else None}
    if e.origin == "report":
        # Not a code: the finding read from the report, and the sentence it was read in.
        row.update(code=e.code.partition("@")[0], display=None, sentence=_clip(e.display))
    return row


# ----------------------------------------------------------------------- reading side


@dataclass(frozen=True)
class RadiationLevel:
    """An ACR relative radiation level as drawn: ``icons`` radiation symbols (0-5) and the
    words a screen reader says (``text``). ``symbol`` is the knowledge's value (``O``,
    ``☢☢☢``, ``Varies``) or None when the table states none."""

    symbol: str | None
    icons: int
    text: str


def radiation_level(rrl: str | None) -> RadiationLevel:
    """The drawing of ``rrl`` (``O`` = no ionizing radiation, ``☢``..``☢☢☢☢☢`` = levels 1-5)."""
    if rrl is None:
        return RadiationLevel(None, 0, "not stated")
    if rrl == "O":
        return RadiationLevel(rrl, 0, "none: no ionizing radiation (0 mSv)")
    if rrl == "Varies":
        return RadiationLevel(rrl, 0, "varies")
    n = rrl.count("☢")
    return RadiationLevel(rrl, n, f"{n} of {RRL_MAX} ({RRL_ADULT_DOSE.get(n, '')} adult effective dose)")


@dataclass(frozen=True)
class RatingRow:
    """One row of a variant's rating table; ``ordered`` marks the procedure of the order.
    ``category`` is the ACR wording, ``category_code`` UA / MBA / MBA-D / UNA."""

    procedure: str
    category: str
    category_code: str
    score: int | None
    radiation: RadiationLevel
    radiation_note: str | None
    provenance: str
    ordered: bool


@dataclass(frozen=True)
class FactRow:
    """One code in the record and the facts it supports. ``timing`` says what made a
    fracture new or prior (7th character, or days between onset and order)."""

    facts: tuple[str, ...]
    system: str
    code: str
    display: str | None
    source: str
    timing: str | None
    unconfirmed: bool
    sentence: str | None = None  # read from report text: shown with "from report text, unconfirmed"


@dataclass(frozen=True)
class Criterion:
    """A fact the variant requires (``required``) or rules out; ``present`` in the record."""

    label: str
    required: bool
    present: bool

    @property
    def met(self) -> bool:
        return self.present == self.required


@dataclass(frozen=True)
class OrderExplanation:
    """One order as the page shows it. Recorded values (rating, PAMA code, variant id) are
    what the card said; ``variant``, ``table`` and ``topic`` come from today's knowledge.
    ``facts_recorded`` is False for records written before the evidence was kept;
    ``facts_not_listed`` counts the codes found but not stored (past ``FACTS_LISTED_MAX``)."""

    code_system: str | None
    code: str | None
    display: str | None
    procedure: str | None
    region: str | None
    category: str | None
    category_code: str | None
    score: int | None
    provenance: str | None
    provenance_text: str | None
    pama: str | None
    pama_display: str | None
    scenario: str | None
    scenario_text: str
    variant_id: str | None
    variant: Variant | None
    topic: Topic | None
    criteria: tuple[Criterion, ...]
    facts: tuple[FactRow, ...]
    facts_recorded: bool
    missing: tuple[str, ...]
    candidates: tuple[tuple[str, str], ...]
    table: tuple[RatingRow, ...]
    ordered_in_table: bool
    unconfirmed: tuple[str, ...]
    facts_not_listed: int = 0


@dataclass(frozen=True)
class Explanation:
    """Everything the page shows about one card.

    ``whole_call``: the card concerns every order of the call (the red-flag card), so
    ``orders`` holds them all; otherwise the one order the card is about.
    """

    card_summary: str
    card_indicator: str
    issued_at: datetime
    service_id: str
    knowledge_then: str
    knowledge_now: str
    whole_call: bool
    orders: tuple[OrderExplanation, ...]
    topics: tuple[Topic, ...]
    unconfirmed: tuple[str, ...]

    @property
    def knowledge_changed(self) -> bool:
        return self.knowledge_then != self.knowledge_now


def load_explanation(db: Database, knowledge: Knowledge, card_uuid: str) -> Explanation | None:
    """The explanation of the card ``card_uuid`` from its audit record; None when no such card
    was recorded (never issued, or purged after ``AUDIT_RETENTION_DAYS``).

    Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot be read.
    """
    with db.engine.connect() as conn:
        card = conn.execute(select(AuditCard).where(AuditCard.uuid == card_uuid)).mappings().first()
        if card is None:
            return None
        call = conn.execute(select(AuditCall).where(AuditCall.id == card["call_id"])).mappings().one()
        rows = conn.execute(select(AuditOrder).where(AuditOrder.call_id == card["call_id"])
                            .order_by(AuditOrder.position)).mappings().all()
    position = card["order_position"]
    if position is not None:
        rows = [r for r in rows if r["position"] == position]
    orders = tuple(_order(knowledge, dict(r)) for r in rows)
    # Advice without a variant cites the topic whose criteria were applied (not a routing topic).
    main_topic = next(t for t in knowledge.topics if any(v.routing is None for v in t.variants))
    topics = tuple(dict.fromkeys(o.topic for o in orders if o.topic is not None)) or (main_topic,)
    unconfirmed = [u for o in orders for u in o.unconfirmed]
    unconfirmed += [f"the link to {t.title} ({t.url})" for t in topics if not t.urlConfirmed]
    return Explanation(card_summary=card["summary"], card_indicator=card["indicator"], issued_at=call["called_at"],
                       service_id=call["service_id"], knowledge_then=call["knowledge_version"],
                       knowledge_now=knowledge.version, whole_call=position is None, orders=orders,
                       topics=topics, unconfirmed=tuple(dict.fromkeys(unconfirmed)))


def _order(knowledge: Knowledge, row: Mapping[str, Any]) -> OrderExplanation:
    ev = row["evidence"] or {}
    order = ev.get("order") or {}
    procedure = knowledge.procedures.get(row["procedure"]) if row["procedure"] else None
    variant = knowledge.variants.get(row["variant"]) if row["variant"] else None
    topic = knowledge.variant_topic.get(variant.id) if variant else None
    facts = tuple(_fact(f) for f in ev.get("facts") or ())
    present = set(ev["present"]) if "present" in ev else {fid for f in ev.get("facts") or ()
                                                          for fid in (x["id"] for x in f["facts"])}
    criteria: tuple[Criterion, ...] = ()
    table: tuple[RatingRow, ...] = ()
    score = None
    if variant is not None:
        criteria = tuple([Criterion(knowledge.fact_label(f), True, f in present) for f in variant.criteria.all]
                         + [Criterion(knowledge.fact_label(f), False, f in present) for f in variant.criteria.none])
        table = tuple(RatingRow(procedure=knowledge.procedures[r.procedure].display,
                                category=CATEGORY_DISPLAY[r.category], category_code=r.category, score=r.score,
                                radiation=radiation_level(r.rrl), radiation_note=r.rrlNote,
                                provenance=r.provenance, ordered=r.procedure == row["procedure"])
                      for r in variant.ratings)
        rated = variant.rating_for(row["procedure"]) if row["procedure"] else None
        score = rated.score if rated is not None and rated.category == row["acr_category"] else None
    region = next((r.display for r in knowledge.regions if r.id == order.get("region")), None)
    return OrderExplanation(
        code_system=SYSTEM_NAMES.get(row["code_system"], row["code_system"]), code=row["code"],
        display=order.get("display"), procedure=procedure.display if procedure else None, region=region,
        category=CATEGORY_DISPLAY.get(row["acr_category"]), category_code=row["acr_category"], score=score, provenance=row["provenance"],
        provenance_text=PROVENANCE_TEXT.get(row["provenance"]), pama=row["pama_rating"],
        pama_display=PAMA_RATING_DISPLAY.get(row["pama_rating"]), scenario=row["scenario"],
        scenario_text=_scenario_text(row, procedure is not None, variant, topic),
        variant_id=row["variant"], variant=variant, topic=topic, criteria=criteria, facts=facts,
        facts_recorded=bool(ev), facts_not_listed=int(ev.get("facts_not_listed") or 0),
        missing=tuple(" and ".join(f["label"] for f in gap) for gap in ev.get("missing") or ()),
        candidates=tuple((c["id"], c["title"]) for c in ev.get("candidates") or ()),
        table=table, ordered_in_table=any(r.ordered for r in table),
        unconfirmed=tuple(_unconfirmed(row, ev, variant, table)))


def _fact(f: Mapping[str, Any]) -> FactRow:
    timing = None
    if f.get("encounter"):
        timing = f"{f['encounter']} encounter (ICD-10-CM 7th character)"
    elif f.get("days_before_order") is not None:
        what = ("performed" if f["source"].startswith("Procedure.") else "report" if f.get("sentence")
                else "dated" if f["source"].startswith("Medication") else "onset")
        days = f["days_before_order"]
        span = f"{abs(days)} days" + (f" (about {abs(days) / 365.25:.1f} years)" if abs(days) >= 365 else "")
        timing = f"{what} {span} {'before' if days >= 0 else 'after'} the order"
    return FactRow(facts=tuple(x["label"] for x in f["facts"]), system=SYSTEM_NAMES.get(f["system"], f["system"]),
                   code=f["code"], display=f.get("display"), source=f["source"], timing=timing,
                   unconfirmed=bool(f.get("unconfirmed")), sentence=f.get("sentence"))


def _scenario_text(row: Mapping[str, Any], in_scope: bool, variant: Variant | None, topic: Topic | None) -> str:
    status = row["scenario"]
    if not in_scope or status is None:
        return "The order's code is not one of the procedures these criteria rate, so it was not rated."
    if row["variant"] and variant is None:
        return (f"The advice used ACR variant {row['variant']}, which the knowledge loaded now no longer "
                "has; its table cannot be shown.")
    if status == "selected" and variant is not None and topic is not None:
        return (f"The record fits exactly one ACR variant for {_ORDER_KIND_TEXT[variant.orderKind]}: "
                f"variant {variant.id} of {topic.title}.")
    if status == "red-flag":
        if variant is None:
            return ("Neurologic red flags in the record outrank every variant of these criteria: no variant "
                    "rates this order; the urgent evaluation comes first.")
        return ("Neurologic red flags in the record outrank every variant of the vertebral compression fracture "
                f"criteria: imaging is rated under {topic.title if topic else 'another topic'}, variant {variant.id}.")
    if status == "excluded":
        return ("The record shows a traumatic (high-energy) vertebral fracture: it is outside these criteria, "
                "so no variant applies and the order was not rated.")
    if status == "missing":
        return ("The record does not say which ACR variant applies, so the order was not rated. "
                "Recording one of the following would allow a rating.")
    if status == "conflict":
        return "The record fits more than one ACR variant, so the order was not rated."
    if status == "agreed" and variant is not None and topic is not None:
        return (f"The record leaves more than one ACR variant of {topic.title} open, and each rates this order "
                f"alike, so it was rated; shown: variant {variant.id}.")
    if status == "contraindicated":
        return ("An absolute exclusion for the ordered procedure is on record (spinal infection before "
                "vertebral augmentation, CMS LCD L34228): no variant rates it and the order was not rated.")
    return ("Nothing in the record concerns a vertebral fracture or a neurologic red flag: these criteria do "
            "not apply and the order was not rated.")


def _unconfirmed(row: Mapping[str, Any], ev: Mapping[str, Any], variant: Variant | None,
                 table: Sequence[RatingRow]) -> list[str]:
    out = []
    if (ev.get("order") or {}).get("unconfirmed"):
        out.append(f"the order code {SYSTEM_NAMES.get(row['code_system'], row['code_system'])} {row['code']} "
                   "(unconfirmed code)")
    for f in ev.get("facts") or ():
        if f.get("sentence"):
            out.append(f"the {f['code'].replace('-', ' ')} read in {f['source']}: from report text, unconfirmed")
        elif f.get("unconfirmed"):
            display = f" {f['display']}" if f.get("display") else ""
            out.append(f"the code {SYSTEM_NAMES.get(f['system'], f['system'])} {f['code']}{display} (unconfirmed code)")
    if variant is not None and not variant.titleConfirmed:
        out.append(f"the title of ACR variant {variant.id} (not confirmed in the ACR's own wording)")
    out += [f"the rating of {r.procedure} in variant {variant.id if variant else '?'}: {PROVENANCE_TEXT['SECONDARY']}"
            for r in table if r.provenance == "SECONDARY"]
    return out
