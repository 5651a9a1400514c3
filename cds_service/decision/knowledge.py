"""Load and cross-check the clinical knowledge in a data directory; return it frozen.

Layout of the directory (see ``cds_service/decision/data/README.md``)::

    valuesets/*.json     FHIR R4 ValueSet resources (validated with fhir.resources R4B)
    facts.json           fact kinds -> value sets
    acr/procedures.json  ACR procedures and spine regions -> order value sets
    ratings.json         ACR rating categories -> display, score range, PAMA rating
    acr/*.json           one file per ACR topic: variants, criteria, ratings with provenance
    services.json        CDS Hooks discovery entries
    cards.json           every word of the cards, one entry per card kind, and the advisory table

Anything wrong refuses to load with :class:`KnowledgeError`, whose message names the
file and the entry, so a site swapping in a licensed ACR table sees exactly what to fix.
Besides its own consistency, the knowledge must hold every name the code reads
(:mod:`cds_service.decision.contract`): facts, card kinds, rating categories, PAMA codes,
the placeholders of each card text.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from cds_service.decision.contract import (
    AUGMENTATION,
    CARD_KINDS,
    CARD_PLACEHOLDERS,
    CARD_TEXT,
    CATEGORIES,
    FACT_USES,
    MRI_MODALITY,
    PAMA_RATINGS,
    Advisory,
    Category,
    ComputedFact,
    Fact,
    PamaRating,
    RedFlagRouting,
)
from cds_service.decision.reading.loader import ReadingKnowledge, ReadingKnowledgeError, load_reading_knowledge
from cds_service.decision.terminology import (
    ICD10CM,
    KNOWN_SYSTEMS,
    SOURCE_EXT,
    UNCONFIRMED_EXT,
    Concept,
    Terminology,
    ValueSetDef,
    normalize_code,
)

DEFAULT_DIR = Path(__file__).parent / "data"

Provenance = Literal["OFFICIAL", "SEED", "SECONDARY"]
# The bundled ratings.json's category displays, for callers outside decision/ that predate
# Knowledge.category_display (ops/cli.py, store/explanation.py): read the knowledge instead.
CATEGORY_DISPLAY: Mapping[str, str] = MappingProxyType({
    "UA": "Usually appropriate",
    "MBA": "May be appropriate",
    "MBA-D": "May be appropriate (Disagreement)",
    "UNA": "Usually not appropriate",
})
COMPUTED_FACTS = frozenset(c.value for c in ComputedFact)


class KnowledgeError(Exception):
    """Knowledge that must not be served: message is ``<file>: <entry>: <problem>``."""

    def __init__(self, file: str, entry: str, problem: str):
        self.file, self.entry, self.problem = file, entry, problem
        super().__init__(f"{file}: {entry}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Words a clinician reads: never empty (CDS Hooks sends no empty strings).
Text = Annotated[str, Field(min_length=1)]


class FactKind(_Strict):
    """A fact the scenario reads, recognised by the codes of one value set."""

    id: str
    label: str
    valueSet: str | None
    note: str | None = None
    from_: tuple[Literal["condition", "reasonCode", "procedure"], ...] = Field(alias="from")
    rule: str
    optional: bool = False
    askWhenMissing: bool = True


class QualifiedFact(_Strict):
    """A fact made of the evidence of one base fact (``of``) that passes a test.

    ``requires``: some of these base facts must hold (e.g. osteoporosis for a fragility
    fracture, a spine problem for an unspecific neurologic symptom). ``recentWithinDays``:
    only evidence with onset at most that many days before the order, stated on the order's
    reasonCode, or an encounter diagnosis of the order's encounter counts. ``rule``
    cites the source, or says the figure is a product decision.
    """

    id: str
    label: str
    of: str
    requires: tuple[str, ...] = ()
    recentWithinDays: int | None = Field(None, gt=0)
    rule: str
    askWhenMissing: bool = True


class DerivedFact(_Strict):
    """A fact that holds when any of its underlying facts holds."""

    id: str
    label: str
    anyOf: tuple[str, ...]
    askWhenMissing: bool = True


class Acuity(_Strict):
    description: str
    initialCharacters: tuple[str, ...]
    subsequentCharacters: tuple[str, ...]
    newWithinDays: int = Field(gt=0)
    sequelaCharacters: tuple[str, ...] = ()
    currentWithinDays: int = Field(gt=0)
    vcfFacts: tuple[str, ...]
    priorFacts: tuple[str, ...]
    labels: dict[str, Text]


class FactsFile(_Strict):
    description: str
    facts: tuple[FactKind, ...]
    qualified: tuple[QualifiedFact, ...] = ()
    derived: tuple[DerivedFact, ...]
    acuity: Acuity


class Procedure(_Strict):
    """An ACR procedure (row of a rating table) and the order codes that identify it."""

    id: str
    display: str
    kind: Literal["imaging", "treatment"]
    modality: str | None = None
    contrast: Literal["none", "without", "with", "without-and-with", "intrathecal"] | None = None
    category: Literal["augmentation", "ablation", "consultation", "medical"] | None = None
    valueSet: str | None


class Region(_Strict):
    """A spine region: ``valueSet`` holds the order codes naming it; ``fractureValueSet`` the
    fracture codes naming it (M48.5-, S22.0-, S32.0-); ``covers`` the fracture regions an
    order for this region images or treats."""

    id: str
    display: str
    valueSet: str
    fractureValueSet: str | None = None
    covers: tuple[str, ...] = ()


class PreferredReferral(_Strict):
    description: str
    augmentation: str
    augmentationText: str
    augmentationPerformer: str
    redFlagImaging: str
    redFlagConsultation: str


class ProceduresFile(_Strict):
    description: str
    procedures: tuple[Procedure, ...]
    regions: tuple[Region, ...]
    preferredReferral: PreferredReferral


class Rating(_Strict):
    """One cell of an ACR rating table: category, score (if known), RRL, provenance."""

    procedure: str
    category: Category
    score: int | None = None
    rrl: str | None = None
    rrlNote: str | None = None
    provenance: Provenance
    source: str | None = None

    @property
    def category_display(self) -> str:
        """The bundled display (see CATEGORY_DISPLAY); decision/ uses Knowledge.category_display."""
        return CATEGORY_DISPLAY[self.category]


class Criteria(_Strict):
    all: tuple[str, ...]
    none: tuple[str, ...] = ()


class Variant(_Strict):
    """An ACR variant (clinical scenario) with the facts that select it and its ratings."""

    id: str
    title: str
    titleConfirmed: bool
    acrScenarioId: str | None = None
    orderKind: Literal["imaging", "treatment"]
    regions: tuple[str, ...] = ()
    routing: RedFlagRouting | None = None
    criteria: Criteria
    ratings: tuple[Rating, ...]

    def rating_for(self, procedure_id: str) -> Rating | None:
        return next((r for r in self.ratings if r.procedure == procedure_id), None)


class Topic(_Strict):
    """An ACR Appropriateness Criteria topic: citation, URL and variants."""

    id: str
    title: str
    revised: str
    acrTopicId: str
    citation: str
    url: str
    urlConfirmed: bool = True
    source: str
    variants: tuple[Variant, ...]


class CategoryDef(_Strict):
    """An ACR rating category: its display, its scores on the ACR's 1-9 scale, and the PAMA
    rating an order rated in it is reported with."""

    code: Category
    display: Text
    lowestScore: int = Field(ge=1, le=9)
    highestScore: int = Field(ge=1, le=9)
    pama: Literal["appropriate", "not-appropriate"]


class PamaCode(_Strict):
    """A code of the Argonaut pama-rating code system and how it is displayed."""

    code: PamaRating
    display: Text


class RatingsFile(_Strict):
    description: str
    categories: tuple[CategoryDef, ...]
    pama: tuple[PamaCode, ...]


class ServiceDef(_Strict):
    id: str
    hook: str
    title: str
    description: str
    prefetch: dict[str, str]
    requiredPrefetch: tuple[str, ...] = ()
    usageRequirements: str | None = None


class ServicesFile(_Strict):
    services: tuple[ServiceDef, ...]


class NeverReplaced(_Strict):
    """Orders no suggestion deletes or replaces: by procedure id or procedure category;
    ``why`` holds the clinician-facing reason for each id or category."""

    procedures: tuple[str, ...]
    categories: tuple[str, ...]
    why: dict[str, str]
    sources: str


class RecordRegion(_Strict):
    region: str
    valueSet: str


class RedFlagImaging(_Strict):
    """Regions the urgent red-flag MRI must cover, by fracture region (or 'unknown')."""

    byRegion: dict[str, tuple[str, ...]]
    sources: str


class SuggestionRules(_Strict):
    """What suggestions may do (cards.json ``suggestionRules``)."""

    description: str
    neverReplaced: NeverReplaced
    recordRegions: tuple[RecordRegion, ...]
    regionExpansion: dict[str, tuple[str, ...]]
    redFlagImaging: RedFlagImaging
    wholeSpineRegion: str
    scenario: dict[str, str]


class CardText(_Strict):
    """What one kind of card says: ``summary``, the first paragraph of ``detail``, and for
    an advisory the facts whose evidence it lists. Warning and critical cards offer the
    override reasons."""

    indicator: Literal["info", "warning", "critical"]
    summary: Text
    detail: Text
    evidence: tuple[str, ...] = ()


class CardSource(_Strict):
    label: Text
    topic: str  # the ACR topic cards cite when they rest on no variant


@with_config(ConfigDict(extra="forbid"))
class OverrideReason(TypedDict):
    code: str
    display: str


@with_config(ConfigDict(extra="forbid"))
class OverrideReasons(TypedDict):
    """CDS Hooks 2.0 Card.overrideReasons: codes of one system (a dict, as the report reads it)."""

    system: str
    codes: Annotated[list[OverrideReason], Field(min_length=1)]


class CardsFile(_Strict):
    description: str
    source: CardSource
    overrideReasons: OverrideReasons
    kinds: dict[str, CardText]
    text: dict[str, Text]
    suggestionRules: SuggestionRules


# The hooks whose context fhir_input can read (CDS Hooks library: order-select, order-sign).
SUPPORTED_HOOKS = ("order-select", "order-sign")


@dataclass(frozen=True)
class Knowledge:
    """Everything the engine and renderer read, frozen after loading.

    ``version`` is ``<sha256 prefix>`` of every file's bytes, so audit records can say
    exactly which knowledge produced an answer.
    """

    directory: Path
    version: str
    terminology: Terminology
    facts: Mapping[str, FactKind]
    qualified: Mapping[str, QualifiedFact]
    derived: Mapping[str, DerivedFact]
    acuity: Acuity
    procedures: Mapping[str, Procedure]
    regions: tuple[Region, ...]
    preferred: PreferredReferral
    topics: tuple[Topic, ...]
    variants: Mapping[str, Variant]
    variant_topic: Mapping[str, Topic]
    services: Mapping[str, ServiceDef]
    cards: CardsFile
    categories: Mapping[str, CategoryDef]
    pama: Mapping[str, PamaCode]
    # Lookups for the hot path, built once here rather than on every request.
    fact_index: Mapping[tuple[str, str], tuple[str, ...]]
    procedure_by_valueset: Mapping[str, Procedure]
    region_by_valueset: Mapping[str, Region]
    # Radiology reports, medications and labs (``data/reading/``, its own loader and value sets).
    reading: ReadingKnowledge | None = None
    # (origin, system, code, display) -> the evidence a record's coding yields, worked out on
    # first sight (scenario.RecordFacts): the knowledge is frozen, so an answer never goes
    # stale; not copied by dataclasses.replace, since a copy may hold other value sets.
    evidence_templates: dict[tuple, tuple] = field(init=False, default_factory=dict, compare=False, repr=False)

    def askable(self, fact_id: str) -> bool:
        """Whether a card may ask the clinician to record this fact when it is missing
        (a diagnosis such as malignancy defines the patient; it is never 'missing')."""
        f = self.facts.get(fact_id) or self.qualified.get(fact_id) or self.derived.get(fact_id)
        return f.askWhenMissing if f is not None else True

    def fact_label(self, fact_id: str) -> str:
        """How a fact is named to the clinician (the id itself if the knowledge has no label)."""
        if fact_id in self.facts:
            return self.facts[fact_id].label
        if fact_id in self.qualified:
            return self.qualified[fact_id].label
        if fact_id in self.derived:
            return self.derived[fact_id].label
        return self.acuity.labels.get(fact_id, fact_id)

    def category_display(self, category: str) -> str:
        """'Usually appropriate' for 'UA' (ratings.json)."""
        return self.categories[category].display

    def pama_for(self, category: str) -> PamaRating:
        """The PAMA rating of an order rated in ``category`` (ratings.json)."""
        return self.categories[category].pama

    def pama_display(self, code: str) -> str:
        """'Appropriate' for 'appropriate' (ratings.json)."""
        return self.pama[code].display


def _read_json(path: Path, rel: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KnowledgeError(rel, "file", "missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KnowledgeError(rel, "file", f"not valid JSON ({exc})") from None


def _parse(model: type[BaseModel], data: Any, rel: str) -> Any:
    """Validate ``data`` with ``model``; on failure name the entry by its ``id`` (or
    ``code``, or rated procedure) when the failing location is inside identified objects."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        entry = ".".join(str(p) for p in loc) or "file"
        node: Any = data
        labels = []
        for part in loc:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                labels.append(f"'{node['id']}'")
            elif isinstance(node, dict) and isinstance(node.get("code"), str):
                labels.append(f"'{node['code']}'")
            elif isinstance(node, dict) and isinstance(node.get("procedure"), str):
                labels.append(f"rating of '{node['procedure']}'")
        if labels:
            entry = f"{entry} ({' / '.join(labels)})"
        raise KnowledgeError(rel, entry, err["msg"]) from None


def _first_problem(exc: Exception) -> str:
    """The first concrete problem of a validation error ('status: Value ... is required')."""
    if isinstance(exc, ValidationError) and exc.errors():
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)


def _ext(element: Mapping, url: str) -> Any:
    for e in element.get("extension", ()) or ():
        if isinstance(e, dict) and e.get("url") == url:
            return e.get("valueString", e.get("valueBoolean"))
    return None


# ---- value sets -------------------------------------------------------------------------

def _load_valueset(path: Path, rel: str) -> ValueSetDef:
    """One ``valuesets/<id>.json``: a valid R4 ValueSet whose id is the file name, composed
    of enumerated concepts and ICD-10-CM ``is-a`` roots of known code systems."""
    from fhir.resources.R4B.valueset import ValueSet  # R4 data: R4B models (the plain import is R5)

    raw = _read_json(path, rel)
    try:
        ValueSet.model_validate(raw)
    except (ValidationError, ValueError, TypeError, KeyError) as exc:
        raise KnowledgeError(rel, "ValueSet", f"not a valid FHIR R4 ValueSet: {_first_problem(exc)}") from None
    if raw.get("id") != path.stem:
        raise KnowledgeError(rel, "id", f"'{raw.get('id')}' does not match the file name '{path.stem}'")
    compose = raw.get("compose") or {}
    include = _compose_concepts(rel, compose, "include")
    if not include:
        raise KnowledgeError(rel, "compose.include", "value set has no concepts")
    return ValueSetDef(id=raw["id"], url=raw.get("url", ""), title=raw.get("title") or raw.get("name") or raw["id"],
                       description=raw.get("description", ""), include=include,
                       exclude=_compose_concepts(rel, compose, "exclude"))


def _compose_concepts(rel: str, compose: Mapping, part: str) -> tuple[Concept, ...]:
    """The concepts of ``compose.include`` or ``compose.exclude``, in file order."""
    out: list[Concept] = []
    for i, inc in enumerate(compose.get(part) or ()):
        where = f"compose.{part}[{i}]"
        system = inc.get("system")
        if system not in KNOWN_SYSTEMS:
            raise KnowledgeError(rel, where, f"unknown code system '{system}'")
        out += _enumerated(system, inc)
        out += _is_a_roots(rel, where, system, inc)
        if part == "include" and not (inc.get("concept") or inc.get("filter")):
            raise KnowledgeError(rel, where, "includes a whole code system; list concepts or an is-a filter")
    return tuple(out)


def _enumerated(system: str, inc: Mapping) -> list[Concept]:
    return [Concept(system, normalize_code(system, c["code"]), c.get("display"),
                    unconfirmed=bool(_ext(c, UNCONFIRMED_EXT)), source=_ext(c, SOURCE_EXT) or _ext(inc, SOURCE_EXT))
            for c in inc.get("concept") or ()]


def _is_a_roots(rel: str, where: str, system: str, inc: Mapping) -> list[Concept]:
    filters = inc.get("filter") or ()
    if len(filters) > 1:
        # FHIR ANDs the filters of one include; every root here is meant as an alternative.
        raise KnowledgeError(rel, where, "one is-a filter per include (filters in one include are ANDed)")
    for f in filters:
        if system != ICD10CM or f.get("op") != "is-a" or f.get("property") != "concept":
            raise KnowledgeError(rel, where, "only 'concept is-a' filters on ICD-10-CM are supported")
    return [Concept(system, normalize_code(system, f["value"]), None, is_a=True,
                    unconfirmed=bool(_ext(inc, UNCONFIRMED_EXT)), source=_ext(inc, SOURCE_EXT))
            for f in filters]


def _load_valuesets(root: Path) -> dict[str, ValueSetDef]:
    """Every ``valuesets/*.json`` by id; urls unique; at least one."""
    valuesets: dict[str, ValueSetDef] = {}
    urls: dict[str, str] = {}
    for path in sorted((root / "valuesets").glob("*.json")):
        rel = f"valuesets/{path.name}"
        vs = _load_valueset(path, rel)
        if vs.url in urls:
            raise KnowledgeError(rel, "url", f"'{vs.url}' is also used by {urls[vs.url]}")
        urls[vs.url] = rel
        valuesets[vs.id] = vs
    if not valuesets:
        raise KnowledgeError("valuesets/", "directory", "no value sets found")
    return valuesets


# ---- shared checks ----------------------------------------------------------------------

def _need_valueset(valuesets: Mapping[str, ValueSetDef], rel: str, entry: str, vs_id: str | None) -> None:
    if vs_id is not None and vs_id not in valuesets:
        raise KnowledgeError(rel, entry, f"value set '{vs_id}' does not exist in valuesets/")


def _unique(rel: str, kind: str, ids: Iterable[str]) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise KnowledgeError(rel, f"{kind} '{i}'", "duplicate id")
        seen.add(i)


# ---- facts.json -------------------------------------------------------------------------

def _load_facts(root: Path, valuesets: Mapping[str, ValueSetDef]) -> FactsFile:
    """``facts.json``: ids unique and not reserved, value sets exist, derived and acuity
    facts name defined facts."""
    rel = "facts.json"
    ff: FactsFile = _parse(FactsFile, _read_json(root / rel, rel), rel)
    _check_fact_ids(rel, ff)
    for f in ff.facts:
        _need_valueset(valuesets, rel, f"fact '{f.id}'", f.valueSet)
        if f.valueSet is None and not f.optional:
            raise KnowledgeError(rel, f"fact '{f.id}'", "has no value set but is not marked optional")
    _check_fact_references(rel, ff)
    _check_acuity_labels(rel, ff)
    _check_facts_the_code_reads(rel, ff)
    return ff


def _check_fact_ids(rel: str, ff: FactsFile) -> None:
    ids = [*(f.id for f in ff.facts), *(q.id for q in ff.qualified), *(d.id for d in ff.derived)]
    for fid in ids:
        if fid in COMPUTED_FACTS:
            raise KnowledgeError(rel, f"fact '{fid}'", "this id is reserved for the built-in acuity fact")
    _unique(rel, "fact", ids)


def _check_fact_references(rel: str, ff: FactsFile) -> None:
    """Qualified facts name base facts; derived facts and the acuity rule name base or
    qualified facts (not derived ones)."""
    base = {f.id for f in ff.facts}
    qualified = {q.id for q in ff.qualified}
    for q in ff.qualified:
        for a in (q.of, *q.requires):
            if a not in base:
                raise KnowledgeError(rel, f"qualified '{q.id}'", f"unknown base fact '{a}'")
    for d in ff.derived:
        for a in d.anyOf:
            if a not in base | qualified:
                raise KnowledgeError(rel, f"derived '{d.id}'", f"unknown fact '{a}'")
    for a in ff.acuity.vcfFacts + ff.acuity.priorFacts:
        if a not in base | qualified:
            raise KnowledgeError(rel, "acuity", f"unknown fact '{a}'")


def _check_acuity_labels(rel: str, ff: FactsFile) -> None:
    """Each computed acuity fact has a label, and nothing else does."""
    for fact in ComputedFact:
        if fact not in ff.acuity.labels:
            raise KnowledgeError(rel, f"acuity.labels.{fact}", "missing: the service computes this fact and names it on cards")
    for key in ff.acuity.labels:
        if key not in COMPUTED_FACTS:
            raise KnowledgeError(rel, f"acuity.labels.{key}", f"not a computed fact ({', '.join(ComputedFact)})")


def _check_facts_the_code_reads(rel: str, ff: FactsFile) -> None:
    """Every fact the code names (contract.Fact) is defined, as a fact, a qualified or a derived fact."""
    defined = {f.id for f in ff.facts} | {q.id for q in ff.qualified} | {d.id for d in ff.derived}
    for fact in Fact:
        if fact not in defined:
            raise KnowledgeError(rel, f"fact '{fact}'", f"not defined, but the service reads it: {FACT_USES[fact]}")


def _fact_ids(ff: FactsFile) -> frozenset[str]:
    """Every fact a criterion may name: base, qualified, derived and the computed acuity facts."""
    return frozenset({f.id for f in ff.facts} | {q.id for q in ff.qualified} | {d.id for d in ff.derived}
                     | COMPUTED_FACTS)


def _fact_index(ff: FactsFile) -> dict[tuple[str, str], tuple[str, ...]]:
    """(value set, origin) -> the facts it yields, for the hot path."""
    index: dict[tuple[str, str], list[str]] = {}
    for f in ff.facts:
        if f.valueSet is not None:
            for origin in f.from_:
                index.setdefault((f.valueSet, origin), []).append(f.id)
    return {k: tuple(v) for k, v in index.items()}


# ---- acr/procedures.json ----------------------------------------------------------------

def _load_procedures(root: Path, valuesets: Mapping[str, ValueSetDef]) -> ProceduresFile:
    """``acr/procedures.json``: ids unique, value sets exist, preferred referrals orderable."""
    rel = "acr/procedures.json"
    pf: ProceduresFile = _parse(ProceduresFile, _read_json(root / rel, rel), rel)
    _unique(rel, "procedure", (p.id for p in pf.procedures))
    _unique(rel, "region", (r.id for r in pf.regions))
    for proc in pf.procedures:
        _need_valueset(valuesets, rel, f"procedure '{proc.id}'", proc.valueSet)
    for r in pf.regions:
        _need_valueset(valuesets, rel, f"region '{r.id}'", r.valueSet)
        _need_valueset(valuesets, rel, f"region '{r.id}'", r.fractureValueSet)
        for c in r.covers:
            if c not in {x.id for x in pf.regions}:
                raise KnowledgeError(rel, f"region '{r.id}'", f"covers unknown region '{c}'")
    _check_preferred(rel, pf)
    if not any(p.modality == MRI_MODALITY for p in pf.procedures):
        raise KnowledgeError(rel, "procedures", f"no procedure has modality '{MRI_MODALITY}', which the service "
                             "reads: an MRI after vertebral augmentation gets the post-augmentation note")
    return pf


# What each preferred procedure must be: (kind, category or None for any, as said in errors).
_PREFERRED = {
    "augmentation": ("treatment", AUGMENTATION, "a treatment of category 'augmentation' (the IR referral)"),
    "redFlagImaging": ("imaging", None, "an imaging procedure (the urgent red-flag study)"),
    "redFlagConsultation": ("treatment", None, "a treatment (the urgent red-flag consultation)"),
}


def _check_preferred(rel: str, pf: ProceduresFile) -> None:
    """The procedures the red-flag card and the IR referral suggest exist, can be ordered
    and are of the kind the cards say they are."""
    procedures = {p.id: p for p in pf.procedures}
    for name, (kind, category, what) in _PREFERRED.items():
        pid = getattr(pf.preferredReferral, name)
        if pid not in procedures:
            raise KnowledgeError(rel, f"preferredReferral.{name}", f"unknown procedure '{pid}'")
        if procedures[pid].valueSet is None:
            raise KnowledgeError(rel, f"preferredReferral.{name}", f"'{pid}' has no value set, so it cannot be ordered")
        if procedures[pid].kind != kind or category not in (None, procedures[pid].category):
            raise KnowledgeError(rel, f"preferredReferral.{name}", f"'{pid}' is not {what}")


# ---- ratings.json ---------------------------------------------------------------------------

def _load_ratings(root: Path) -> RatingsFile:
    """``ratings.json``: every ACR category and PAMA code the service uses, once each; score
    ranges in order."""
    rel = "ratings.json"
    rf: RatingsFile = _parse(RatingsFile, _read_json(root / rel, rel), rel)
    _unique(rel, "category", (c.code for c in rf.categories))
    _unique(rel, "pama", (p.code for p in rf.pama))
    defined = {c.code for c in rf.categories}
    for code in CATEGORIES:
        if code not in defined:
            raise KnowledgeError(rel, f"category '{code}'", "not defined, but ACR tables rate with it")
    for c in rf.categories:
        if c.lowestScore > c.highestScore:
            raise KnowledgeError(rel, f"category '{c.code}'", f"lowestScore {c.lowestScore} is above highestScore {c.highestScore}")
    for code in PAMA_RATINGS:
        if code not in {p.code for p in rf.pama}:
            raise KnowledgeError(rel, f"pama '{code}'", "not defined, but the service reports it")
    return rf


# ---- acr/<topic>.json ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Topics:
    topics: tuple[Topic, ...]
    variants: Mapping[str, Variant]
    variant_topic: Mapping[str, Topic]


def _load_topics(root: Path, fact_ids: frozenset[str], pf: ProceduresFile,
                 categories: Mapping[str, CategoryDef]) -> _Topics:
    """Every ``acr/*.json`` but procedures.json: variant ids unique across topics, each
    variant and rating checked against facts, regions and procedures; at least one variant."""
    procedures = {p.id: p for p in pf.procedures}
    region_ids = frozenset(r.id for r in pf.regions)
    topics: list[Topic] = []
    variants: dict[str, Variant] = {}
    variant_topic: dict[str, Topic] = {}
    variant_file: dict[str, str] = {}
    for path in sorted((root / "acr").glob("*.json")):
        if path.name == "procedures.json":
            continue
        rel = f"acr/{path.name}"
        topic: Topic = _parse(Topic, _read_json(path, rel), rel)
        for v in topic.variants:
            if v.id in variants:
                raise KnowledgeError(rel, f"variant '{v.id}'", f"duplicate variant id (also in {variant_file[v.id]})")
            _check_variant(rel, v, fact_ids, region_ids, procedures, categories)
            variants[v.id], variant_topic[v.id], variant_file[v.id] = v, topic, rel
        topics.append(topic)
    if not variants:
        raise KnowledgeError("acr/", "directory", "no ACR topic with variants found")
    return _Topics(tuple(topics), variants, variant_topic)


def _check_variant(rel: str, v: Variant, fact_ids: frozenset[str], region_ids: frozenset[str],
                   procedures: Mapping[str, Procedure], categories: Mapping[str, CategoryDef]) -> None:
    entry = f"variant '{v.id}'"
    for fact in v.criteria.all + v.criteria.none:
        if fact not in fact_ids:
            raise KnowledgeError(rel, entry, f"criteria name unknown fact '{fact}'")
    if not v.criteria.all:
        raise KnowledgeError(rel, entry, "criteria.all is empty: the variant would match every patient")
    for reg in v.regions:
        if reg not in region_ids:
            raise KnowledgeError(rel, entry, f"unknown region '{reg}'")
    rated: set[str] = set()
    for i, rt in enumerate(v.ratings):
        _check_rating(rel, f"{entry} rating {i} ('{rt.procedure}')", rt, v, procedures, rated, categories[rt.category])
        rated.add(rt.procedure)


def _check_rating(rel: str, where: str, rt: Rating, v: Variant, procedures: Mapping[str, Procedure],
                  rated: set[str], category: CategoryDef) -> None:
    proc = procedures.get(rt.procedure)
    if proc is None:
        raise KnowledgeError(rel, where, f"unknown procedure '{rt.procedure}'")
    if rt.procedure in rated:
        raise KnowledgeError(rel, where, "procedure rated twice in one variant")
    if proc.kind != v.orderKind:
        raise KnowledgeError(rel, where, f"{proc.kind} procedure in a {v.orderKind} variant")
    if rt.score is not None and not category.lowestScore <= rt.score <= category.highestScore:
        raise KnowledgeError(rel, where, f"score {rt.score} is outside category {rt.category}")
    if rt.rrl is not None and not re.fullmatch(r"O|☢{1,5}|Varies", rt.rrl):
        raise KnowledgeError(rel, where, f"relative radiation level '{rt.rrl}' is not O, ☢..☢☢☢☢☢ or Varies")


# ---- services.json, cards.json ---------------------------------------------------------

def _load_services(root: Path) -> ServicesFile:
    """``services.json``: ids unique and kebab-case, hooks supported, required prefetch templated."""
    rel = "services.json"
    sf: ServicesFile = _parse(ServicesFile, _read_json(root / rel, rel), rel)
    _unique(rel, "service", (s.id for s in sf.services))
    for s in sf.services:
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", s.id):
            raise KnowledgeError(rel, f"service '{s.id}'", "id must be kebab-case")
        if s.hook not in SUPPORTED_HOOKS:
            raise KnowledgeError(rel, f"service '{s.id}'", f"hook '{s.hook}' is not one of "
                                 f"{', '.join(SUPPORTED_HOOKS)}")
        for key in s.requiredPrefetch:
            if key not in s.prefetch:
                raise KnowledgeError(rel, f"service '{s.id}'", f"required prefetch '{key}' has no template")
    return sf


def _load_cards(root: Path, topics: Iterable[Topic], fact_ids: frozenset[str]) -> CardsFile:
    """``cards.json``: the cited topic exists; one entry per card kind the service issues;
    every shared text present; each text uses only the placeholders render.py fills."""
    rel = "cards.json"
    cf: CardsFile = _parse(CardsFile, _read_json(root / rel, rel), rel)
    # Cards without a variant (no rating, advisories) cite this topic.
    if cf.source.topic not in {t.id for t in topics}:
        raise KnowledgeError(rel, "source.topic", f"'{cf.source.topic}' is not an ACR topic id")
    _unique(rel, "override reason", (r["code"] for r in cf.overrideReasons["codes"]))
    _check_card_kinds(rel, cf, fact_ids)
    for key, allowed in CARD_TEXT.items():
        if key not in cf.text:
            raise KnowledgeError(rel, f"text.{key}", "missing")
        _check_template(rel, f"text.{key}", cf.text[key], allowed)
    for key in cf.text:
        if key not in CARD_TEXT:
            raise KnowledgeError(rel, f"text.{key}", "not a text the service uses")
    return cf


def _check_suggestion_rules(cf: CardsFile, pf: ProceduresFile, valuesets: Mapping[str, ValueSetDef]) -> None:
    """``cards.json`` ``suggestionRules``: procedures, value sets and regions it names exist."""
    rel = "cards.json"
    procedures = {p.id for p in pf.procedures}
    region_ids = {r.id for r in pf.regions}
    sr = cf.suggestionRules
    for pid in sr.neverReplaced.procedures:
        if pid not in procedures:
            raise KnowledgeError(rel, "suggestionRules.neverReplaced", f"unknown procedure '{pid}'")
    for key in (*sr.neverReplaced.procedures, *sr.neverReplaced.categories):
        if key not in sr.neverReplaced.why:
            raise KnowledgeError(rel, "suggestionRules.neverReplaced.why", f"no reason given for '{key}'")
    for rr in sr.recordRegions:
        _need_valueset(valuesets, rel, f"suggestionRules.recordRegions '{rr.region}'", rr.valueSet)
    named = [sr.wholeSpineRegion, *(rr.region for rr in sr.recordRegions)]
    named += [x for v in sr.regionExpansion.values() for x in v]
    named += [x for k, v in sr.redFlagImaging.byRegion.items() for x in (*v, k) if x != "unknown"]
    for reg in named:
        if reg not in region_ids:
            raise KnowledgeError(rel, "suggestionRules", f"unknown region '{reg}'")
    if "unknown" not in sr.redFlagImaging.byRegion:
        raise KnowledgeError(rel, "suggestionRules.redFlagImaging.byRegion", "no entry for 'unknown'")


def _check_card_kinds(rel: str, cf: CardsFile, fact_ids: frozenset[str]) -> None:
    for kind in CARD_KINDS:
        if kind not in cf.kinds:
            raise KnowledgeError(rel, f"kinds.{kind}", "missing: the service issues this card")
    for kind, card in cf.kinds.items():
        if kind not in CARD_PLACEHOLDERS:
            raise KnowledgeError(rel, f"kinds.{kind}", f"not a card the service issues ({', '.join(CARD_KINDS)})")
        summary, detail = CARD_PLACEHOLDERS[kind]
        _check_template(rel, f"kinds.{kind}.summary", card.summary, summary)
        _check_template(rel, f"kinds.{kind}.detail", card.detail, detail)
        if card.evidence and kind not in tuple(Advisory):
            raise KnowledgeError(rel, f"kinds.{kind}.evidence", "only advisory cards name the facts they list")
        for fact in card.evidence:
            if fact not in fact_ids:
                raise KnowledgeError(rel, f"kinds.{kind}.evidence", f"unknown fact '{fact}'")


def _check_template(rel: str, entry: str, template: str, allowed: frozenset[str]) -> None:
    """``template`` (str.format syntax) names only ``allowed`` placeholders, plainly."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise KnowledgeError(rel, entry, f"not a valid template ({exc}); write a literal brace twice") from None
    for name, spec, conv in fields:
        if name not in allowed:
            may = ", ".join(f"{{{a}}}" for a in sorted(allowed)) or "none"
            raise KnowledgeError(rel, entry, f"unknown placeholder {{{name}}} (this text may use: {may})")
        if spec or conv:
            raise KnowledgeError(rel, entry, f"placeholder {{{name}}} takes no format or conversion")


# ---- the whole directory ------------------------------------------------------------------

def _knowledge_root(directory: str | Path | None) -> Path:
    root = Path(directory) if directory else DEFAULT_DIR
    if not root.is_dir():
        raise KnowledgeError(str(root), "directory", "knowledge directory not found")
    return root


def _version(root: Path) -> str:
    """sha256 prefix over every file's path and bytes."""
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*.json")):
        digest.update(p.relative_to(root).as_posix().encode())
        digest.update(p.read_bytes())
    return digest.hexdigest()[:12]


def load_knowledge(directory: str | Path | None = None) -> Knowledge:
    """Load ``directory`` (default: the bundled ``cds_service/decision/data``) and cross-check it.

    Raises :class:`KnowledgeError` naming file and entry for: unreadable or invalid JSON,
    an invalid FHIR ValueSet, duplicate ids, a reference to a value set, fact, procedure or
    region that does not exist, an enum value out of range, a score outside its category.
    Files are read in this order, so of several problems the first file's is reported:
    value sets, facts, procedures, ratings, topics, services, cards, then ``reading/``
    (report, medication and lab reading, errors named ``reading/<file>``).
    """
    root = _knowledge_root(directory)
    version = _version(root)
    valuesets = _load_valuesets(root)
    ff = _load_facts(root, valuesets)
    pf = _load_procedures(root, valuesets)
    rf = _load_ratings(root)
    categories: dict[str, CategoryDef] = {c.code: c for c in rf.categories}
    acr = _load_topics(root, _fact_ids(ff), pf, categories)
    sf = _load_services(root)
    cf = _load_cards(root, acr.topics, _fact_ids(ff))
    _check_suggestion_rules(cf, pf, valuesets)
    reading = _load_reading(root)
    return Knowledge(
        directory=root,
        version=version,
        terminology=Terminology.build(valuesets),
        facts=MappingProxyType({f.id: f for f in ff.facts}),
        qualified=MappingProxyType({q.id: q for q in ff.qualified}),
        derived=MappingProxyType({d.id: d for d in ff.derived}),
        acuity=ff.acuity,
        procedures=MappingProxyType({p.id: p for p in pf.procedures}),
        regions=pf.regions,
        preferred=pf.preferredReferral,
        topics=acr.topics,
        variants=MappingProxyType(dict(acr.variants)),
        variant_topic=MappingProxyType(dict(acr.variant_topic)),
        services=MappingProxyType({s.id: s for s in sf.services}),
        cards=cf,
        categories=MappingProxyType(categories),
        pama=MappingProxyType({p.code: p for p in rf.pama}),
        fact_index=MappingProxyType(_fact_index(ff)),
        procedure_by_valueset=MappingProxyType({p.valueSet: p for p in pf.procedures if p.valueSet}),
        region_by_valueset=MappingProxyType({r.valueSet: r for r in pf.regions}),
        reading=reading,
    )


def _load_reading(root: Path) -> ReadingKnowledge:
    """``reading/``: what reads radiology reports, medications and labs (its own loader,
    :func:`cds_service.decision.reading.load_reading_knowledge`); its errors name
    ``reading/<file>``."""
    try:
        return load_reading_knowledge(root / "reading")
    except ReadingKnowledgeError as exc:
        file = "reading/" if exc.entry == "directory" else f"reading/{exc.file}"
        raise KnowledgeError(file, exc.entry, exc.problem) from None
