"""What the code relies on finding in the knowledge: every name it spells, in one place.

The clinical rules in ``scenario``, ``engine`` and ``render`` read facts, card kinds, rating
categories and procedures by name. Those names are defined here and nowhere else, and
:func:`~cds_service.decision.knowledge.load_knowledge` refuses a knowledge directory that
lacks one of them (naming the file and the entry), so renaming ``bleeding-risk`` in
``data/`` stops the service at start-up instead of silently dropping the coagulopathy
warning. Each fact carries what it is used for (``FACT_USES``), which the error message says.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Literal, get_args


class Fact(StrEnum):
    """Facts (``facts.json``: ``facts`` or ``derived``) the code reads by name."""

    VCF = "vcf"
    VCF_TRAUMATIC = "vcf-traumatic"
    NEURO_RED_FLAG = "neuro-red-flag"
    BLEEDING_RISK = "bleeding-risk"
    INFECTION = "infection"
    MARROW_EDEMA = "marrow-edema"
    OSTEOPOROTIC = "osteoporotic"
    OSTEOPOROSIS_THERAPY = "osteoporosis-therapy"
    AUGMENTATION_HISTORY = "augmentation-history"
    VCF_FRAGILITY = "vcf-fragility"
    OSTEOPOROSIS = "osteoporosis"
    ASYMPTOMATIC = "asymptomatic"
    BACK_PAIN = "back-pain"
    COAGULOPATHY = "coagulopathy"
    ANTICOAGULATION = "anticoagulation"


FACT_USES: Mapping[Fact, str] = MappingProxyType({
    Fact.VCF: "a current vertebral fracture puts the order in scope; suggested orders carry its codes as reasons",
    Fact.VCF_TRAUMATIC: "a traumatic fracture is outside the criteria (traumatic card)",
    Fact.NEURO_RED_FLAG: "neurologic red flags route imaging, raise the critical card and warn before augmentation",
    Fact.BLEEDING_RISK: "coagulopathy or anticoagulation warns before vertebral augmentation",
    Fact.INFECTION: "spinal infection is an absolute exclusion for vertebral augmentation (critical card, no rating)",
    Fact.MARROW_EDEMA: "without it, augmentation orders get the 'no MRI evidence of edema' reminder",
    Fact.OSTEOPOROTIC: "an osteoporotic fracture without therapy gets the osteoporosis-therapy reminder",
    Fact.OSTEOPOROSIS_THERAPY: "its absence gives augmentation orders the osteoporosis-therapy reminder",
    Fact.AUGMENTATION_HISTORY: "an MRI after vertebral augmentation gets the post-augmentation note",
    Fact.VCF_FRAGILITY: "a traumatic code read as a fragility fracture stays in the criteria, with a card saying so",
    Fact.OSTEOPOROSIS: "the fragility-fracture card shows the osteoporosis it was read from",
    Fact.ASYMPTOMATIC: "augmentation for an asymptomatic fracture gets a warning",
    Fact.BACK_PAIN: "with no fracture level coded, its region places suggested imaging",
    Fact.COAGULOPATHY: "a coagulopathy makes the augmentation checklist a warning (relative exclusion)",
    Fact.ANTICOAGULATION: "anticoagulant use adds peri-procedural management to the augmentation checklist",
})


class ComputedFact(StrEnum):
    """Facts the code computes (acuity of the fracture, ``facts.json`` ``acuity``); the data
    may not define them, but criteria may name them."""

    VCF_NEW = "vcf-new"
    VCF_PRIOR = "vcf-prior"
    VCF_CURRENT = "vcf-current"


class Advisory(StrEnum):
    """What the engine attaches to an order beside its rating; each is said by a card of the
    same kind (``cards.json``)."""

    AUGMENT_BLEEDING = "augment-bleeding"
    AUGMENT_NEURO = "augment-neuro"
    AUGMENT_INFECTION = "augment-infection"
    AUGMENT_NO_EDEMA = "augment-no-edema"
    AUGMENT_NO_THERAPY = "augment-no-therapy"
    AUGMENT_ASYMPTOMATIC = "augment-asymptomatic"
    POST_AUGMENTATION_MRI = "post-augmentation-mri"
    STEER_IR = "steer-ir"
    REGION_MISMATCH = "region-mismatch"
    FRAGILITY_READING = "fragility-reading"
    SAME_STUDY_RECENTLY = "same-study-recently"


class CardKind(StrEnum):
    """Cards about an order's rating, or about the whole call (``red-flag``). With the
    :class:`Advisory` kinds these are every card the service issues; the audit trail and
    the feedback report count cards by kind."""

    RED_FLAG = "red-flag"
    NOT_APPROPRIATE = "not-appropriate"
    MAY_BE_APPROPRIATE = "may-be-appropriate"
    NO_CRITERIA = "no-criteria"
    MISSING_FACTS = "missing-facts"
    CONFLICT = "conflict"
    TRAUMATIC = "traumatic"
    AUGMENT_CHECKLIST = "augment-checklist"


CARD_KINDS: tuple[str, ...] = (*CardKind, *Advisory)

# ACR rating categories (ACR Appropriateness Criteria rating scale) and Argonaut PAMA rating codes
# ('CDS Hooks for PAMA'): the code
# compares against these; ratings.json gives each its display, score range and mapping.
Category = Literal["UA", "MBA", "MBA-D", "UNA"]
CATEGORIES: tuple[str, ...] = get_args(Category)
USUALLY_APPROPRIATE: Category = "UA"
USUALLY_NOT_APPROPRIATE: Category = "UNA"
MAY_BE_APPROPRIATE: tuple[Category, ...] = ("MBA", "MBA-D")
PamaRating = Literal["appropriate", "not-appropriate", "no-criteria-apply"]
PAMA_RATINGS: tuple[str, ...] = get_args(PamaRating)
# A variant applies but its table does not rate the ordered procedure.
NO_CRITERIA_APPLY: PamaRating = "no-criteria-apply"
APPROPRIATE: PamaRating = "appropriate"
NOT_APPROPRIATE: PamaRating = "not-appropriate"
# Rating provenance (the tag each rating of acr/*.json carries): the setting PAMA_OFFICIAL_ONLY sends only these.
OFFICIAL = "OFFICIAL"

# Variants with this ``routing`` (``acr/*.json``) rate imaging when a neurologic red flag has
# taken the patient out of the routine VCF pathway (IR teaching cases' neurologic FAQ and escalation; CMS LCD L34228).
RedFlagRouting = Literal["red-flag"]
RED_FLAG_ROUTING: RedFlagRouting = "red-flag"
# Procedures of this category (``acr/procedures.json``) get the augmentation advisories.
AUGMENTATION: Literal["augmentation"] = "augmentation"
# The procedure modality whose orders after a vertebral augmentation get the
# post-augmentation note (``acr/procedures.json``).
MRI_MODALITY = "MR"

# ---- card wording (cards.json) -----------------------------------------------------------
# Which {placeholders} each text may use: render.py fills exactly these.
_NONE: frozenset[str] = frozenset()
_WHERE = frozenset({"order", "fracture"})  # regions named by the order and by the fracture codes
_F = frozenset
CARD_PLACEHOLDERS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = MappingProxyType({
    # kind: (summary, detail)
    CardKind.RED_FLAG: (_F({"actions"}), _NONE),
    CardKind.NOT_APPROPRIATE: (_F({"alternative", "reason"}), _F({"ordered", "category"})),
    CardKind.MAY_BE_APPROPRIATE: (_F({"alternative", "ordered", "scenario"}), _F({"ordered", "category"})),
    CardKind.NO_CRITERIA: (_F({"ordered"}), _F({"ordered"})),
    CardKind.MISSING_FACTS: (_F({"missing", "procedure"}), _F({"procedure"})),
    CardKind.CONFLICT: (_F({"procedure"}), _F({"procedure"})),
    CardKind.TRAUMATIC: (_F({"procedure"}), _F({"procedure"})),
    CardKind.AUGMENT_CHECKLIST: (_F({"items"}), _NONE),
    Advisory.STEER_IR: (_F({"procedure", "augmentation"}), _F({"procedure", "augmentation"})),
    Advisory.AUGMENT_BLEEDING: (_F({"items"}), _NONE),  # the checklist card when a coagulopathy makes it a warning
    Advisory.REGION_MISMATCH: (_WHERE, _WHERE),
    Advisory.AUGMENT_ASYMPTOMATIC: (_WHERE, _WHERE),
    Advisory.FRAGILITY_READING: (_WHERE, _WHERE),
    Advisory.SAME_STUDY_RECENTLY: (_F({"date"}), _F({"report", "date", "days"})),
    # Said inside other cards: augment-neuro by the red-flag card, the two reminders as checklist items.
    **{a: (_NONE, _NONE) for a in (Advisory.AUGMENT_NEURO, Advisory.AUGMENT_INFECTION, Advisory.AUGMENT_NO_EDEMA,
                                   Advisory.AUGMENT_NO_THERAPY, Advisory.POST_AUGMENTATION_MRI)},
})
# Phrases the cards share (cards.json ``text``) and their placeholders.
CARD_TEXT: Mapping[str, frozenset[str]] = MappingProxyType({
    # summaries other than a kind's own
    "useInsteadShort": _F({"alternative", "ordered"}),  # not-appropriate, when the reason would not fit
    "useInsteadMayShort": _F({"alternative", "ordered"}),
    "notAppropriate": _F({"ordered", "scenario"}),  # nothing to suggest
    "mayBeAppropriate": _F({"ordered", "scenario"}),
    "removeDuplicate": _F({"ordered", "alternative"}),  # the better-rated study is already a draft order
    "noRatingAdd": _F({"alternative", "scenario"}),  # a consultation to add beside an order kept as it is
    "missingFactsShort": _NONE,  # the missing-facts summary when the list would not fit
    "redFlagCovered": _NONE,  # every red-flag order already drafted
    "redFlagActionsShort": _NONE,
    "reasonContrast": _F({"scenario"}),
    "reasonGeneric": _F({"ordered", "scenario"}),
    "reasonRatedHigher": _F({"ordered", "scenario"}),
    "irReferralShort": _NONE,
    "spineSurgeryConsultation": _NONE,
    # detail paragraphs
    "neverReplacedLead": _F({"ordered", "why"}),
    "wholeSpineNote": _NONE,
    "redFlagRegionUnknown": _NONE,
    "redFlagRegionThoracic": _NONE,
    "redFlagRegionLumbar": _NONE,
    "checklistAnticoag": _NONE,
    "checklistAnticoagDetail": _NONE,
    "checklistCoag": _NONE,
    "checklistCoagDetail": _NONE,
    "recordOneOf": _NONE,
    "candidateVariants": _NONE,
    "variantsAgree": _F({"variants"}),
    "evidenceHeading": _NONE,
    "evidenceMore": _F({"n"}),
    "evidenceMoreLink": _F({"n", "url"}),
    "recordNotRead": _F({"what"}),  # every card, when a prefetch key held more than MAX_RECORD_READ
    "orderReason": _NONE,
    "redFlagRouting": _F({"topic", "title"}),
    "variantHeading": _F({"variant", "title"}),
    "variantHeadingUnconfirmed": _F({"variant", "title"}),
    "topicLine": _F({"topic", "revised"}),
    "orderedHeading": _NONE,
    "alternativesHeading": _NONE,
    "ratingScore": _F({"score"}),
    "ratingRadiation": _F({"rrl"}),
    "ratingRadiationNote": _F({"rrl", "note"}),
    "ratingSource": _F({"provenance"}),
    "provenanceOFFICIAL": _NONE,  # where a rating comes from, in words (ratingSource)
    "provenanceSEED": _NONE,
    "provenanceSECONDARY": _NONE,
    "seedNote": _NONE,
    "secondaryNote": _NONE,
    "sourceLine": _F({"citation", "url"}),
    "sourceLineUnconfirmed": _F({"citation", "url"}),
    "unconfirmedNote": _F({"items"}),
    "unconfirmedCode": _F({"code"}),
    # suggestions and actions
    "urgentOrderLabel": _F({"procedure"}),
    "urgentOrderAction": _F({"procedure"}),
    "replaceLabel": _F({"procedure"}),
    "replaceRemove": _F({"order"}),
    "replaceOrder": _F({"procedure", "category"}),
    "referralLabel": _F({"referral"}),
    "removeLabel": _F({"procedure"}),
    "withdrawLabel": _NONE,
    "ratingAction": _F({"rating"}),
    "explainLink": _NONE,
    # what the radiology reports, medications and labs said (issue 13)
    "checklistMriNext": _F({"region"}),
    "checklistMriNextDetail": _F({"region"}),
    "mriRegionUnknown": _NONE,
    "mriNextLabel": _F({"procedure"}),
    "checklistEdemaTreated": _NONE,
    "checklistEdemaTreatedDetail": _F({"levels"}),
    "checklistLab": _F({"lab", "value"}),
    "checklistLabDetail": _F({"lab", "value", "unit", "date", "threshold", "citation", "note"}),
    "checklistLabClassUnconfirmed": _NONE,
    "checklistNotRead": _F({"items"}),
    "notReadRadiologyReports": _NONE,
    "notReadMedications": _NONE,
    "notReadCoagulationLabs": _NONE,
    "missingReportsNotRead": _NONE,
    "missingEdemaLevelUnknown": _NONE,
    "reportEvidence": _NONE,  # how report text evidence is marked: "from report text, unconfirmed"
    "medicationNameEvidence": _NONE,  # a drug recognised by its name, not a listed RxNorm code
})
