"""Load the reading knowledge (``data/reading/*.json`` and ``data/reading/valuesets/*.json``), validated.

Everything clinical the readers use lives in these files, with its source: target phrases per
report finding, ConText rules added to medspaCy's defaults, vertebral level patterns, report
classification, medication classes, laboratory thresholds (SIR consensus, Patel IJ et al., J Vasc
Interv Radiol 2019), prefetch proposals. Each file is validated by a pydantic model on load; any
problem raises :class:`ReadingKnowledgeError` naming the file and the entry, like
:class:`cds_service.decision.knowledge.KnowledgeError`, so the knowledge loader can call
:func:`load_reading_knowledge` and report the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "reading"

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SOURCE_EXT = "urn:vcf-cds-hooks:StructureDefinition:source"
UNCONFIRMED_EXT = "urn:vcf-cds-hooks:StructureDefinition:unconfirmed"

ContextCategory = Literal["NEGATED_EXISTENCE", "POSSIBLE_EXISTENCE", "HYPOTHETICAL", "HISTORICAL", "FAMILY", "PSEUDO", "TERMINATE"]
ContextDirection = Literal["FORWARD", "BACKWARD", "BIDIRECTIONAL", "TERMINATE", "PSEUDO"]


class ReadingKnowledgeError(Exception):
    """Reading knowledge that must not be used: message is ``<file>: <entry>: <problem>``."""

    def __init__(self, file: str, entry: str, problem: str):
        self.file, self.entry, self.problem = file, entry, problem
        super().__init__(f"{file}: {entry}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


# findings.json ---------------------------------------------------------------------------

class TargetPhrase(_Strict):
    """One phrase that names a finding; optional sentence conditions keep precision."""

    phrase: str = Field(min_length=1)
    requiresAny: tuple[str, ...] = ()
    excludeIfPreceding: tuple[str, ...] = ()
    excludeIfFollowing: tuple[str, ...] = ()


class FindingDef(_Strict):
    """A report finding: id, label, the phrases that name it, and whether 'uncertain' counts."""

    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    label: str
    uncertainCounts: bool
    historicalCounts: bool = False
    source: str = Field(min_length=1)
    targets: tuple[TargetPhrase, ...] = Field(min_length=1)


class AcuityTerm(_Strict):
    acuity: Literal["acute", "subacute", "chronic", "healed", "age-indeterminate"]
    phrases: tuple[str, ...] = Field(min_length=1)


class FractureAcuity(_Strict):
    source: str = Field(min_length=1)
    window: int = Field(ge=1, le=20)
    terms: tuple[AcuityTerm, ...] = Field(min_length=1)


class Incidental(_Strict):
    source: str = Field(min_length=1)
    phrases: tuple[str, ...] = Field(min_length=1)


class FindingsFile(_Strict):
    version: str
    description: str
    findings: tuple[FindingDef, ...] = Field(min_length=1)
    fractureAcuity: FractureAcuity
    incidental: Incidental


# context-rules.json ----------------------------------------------------------------------

class ContextRuleDef(_Strict):
    """A ConText modifier rule (medspaCy's ``ConTextRule``) with the key of its source."""

    literal: str = Field(min_length=1)
    category: ContextCategory
    direction: ContextDirection
    source: str


class ContextRulesFile(_Strict):
    version: str
    description: str
    sources: dict[str, str]
    rules: tuple[ContextRuleDef, ...] = Field(min_length=1)


# levels.json -----------------------------------------------------------------------------

class LevelsFile(_Strict):
    version: str
    description: str
    source: str = Field(min_length=1)
    order: tuple[str, ...] = Field(min_length=1)
    level: str
    letterAliases: dict[str, str]
    joiners: str
    rangeJoiners: tuple[str, ...]
    bareNumberAfterJoiner: str
    maxRange: int = Field(ge=1, le=30)
    notLevel: tuple[str, ...]

    _re = field_validator("level", "joiners", "bareNumberAfterJoiner")(_check_regex)

    @field_validator("notLevel")
    @classmethod
    def _regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            _check_regex(v)
        return value


# report-types.json -----------------------------------------------------------------------

class CodingDef(_Strict):
    system: str
    code: str
    display: str
    source: str = Field(min_length=1)


class ReportCodeDef(_Strict):
    code: str
    display: str
    modality: str
    region: str
    source: str = Field(min_length=1)
    unconfirmed: bool = False


class PatternDef(_Strict):
    modality: str | None = None
    region: str | None = None
    pattern: str

    _re = field_validator("pattern")(_check_regex)


class ReportTypesFile(_Strict):
    version: str
    description: str
    radiologyCategories: tuple[CodingDef, ...]
    reportCodes: tuple[ReportCodeDef, ...]
    headerChars: int = Field(ge=0)
    modalities: tuple[PatternDef, ...]
    regions: tuple[PatternDef, ...]
    spineRegions: tuple[str, ...]
    usableStatuses: tuple[str, ...]


# medications.json ------------------------------------------------------------------------

class MedicationClassDef(_Strict):
    """A medication class: its RxNorm value set, drug names for the text fallback, recent window."""

    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    label: str
    valueSet: str
    names: tuple[str, ...] = Field(min_length=1)
    recentDays: int = Field(ge=0)
    recentDaysReason: str = Field(min_length=1)
    source: str = Field(min_length=1)


class MedicationsFile(_Strict):
    version: str
    description: str
    classes: tuple[MedicationClassDef, ...] = Field(min_length=1)
    currentStatuses: dict[Literal["MedicationRequest", "MedicationStatement"], tuple[str, ...]]
    recentStatuses: dict[Literal["MedicationRequest", "MedicationStatement"], tuple[str, ...]]


# bleeding-thresholds.json ----------------------------------------------------------------

class LabDef(_Strict):
    id: Literal["inr", "platelets"]
    label: str
    unit: str
    codes: tuple[str, ...] = Field(min_length=1)
    units: dict[str, float]


class InrRange(_Strict):
    rangeLow: float = Field(gt=0)
    rangeHigh: float = Field(gt=0)


class RiskClassDef(_Strict):
    id: str
    label: str
    inr: InrRange
    plateletsMin: float = Field(gt=0)
    source: str = Field(min_length=1)


class ProcedureClassDef(_Strict):
    procedure: str
    valueSet: str
    # "class" is a Python keyword: the JSON key is kept, the attribute is risk_class.
    risk_class: str = Field(alias="class")
    source: str = Field(min_length=1)
    unconfirmed: bool = False
    unconfirmedReason: str | None = None


class ThresholdsFile(_Strict):
    version: str
    description: str
    citation: str = Field(min_length=1)
    checkedIn: str
    labs: tuple[LabDef, ...]
    classes: tuple[RiskClassDef, ...]
    procedures: tuple[ProcedureClassDef, ...]
    lookbackDays: int = Field(ge=1)
    lookbackReason: str


# prefetch.json ---------------------------------------------------------------------------

class PrefetchKey(_Strict):
    key: str
    template: str
    query: str
    lookbackDays: int = Field(ge=1)
    purpose: str
    source: str


class PrefetchFile(_Strict):
    version: str
    description: str
    keys: tuple[PrefetchKey, ...]


# imaging-rules.json ----------------------------------------------------------------------

class ImagingRulesFile(_Strict):
    version: str
    description: str
    recentMriDays: int = Field(ge=1)
    recentMriSource: str = Field(min_length=1)
    repeatStudyDays: int = Field(ge=1)
    repeatStudyReason: str = Field(min_length=1)
    repeatStudyUnconfirmed: bool
    oldFractureAcuities: tuple[str, ...]
    incidentalAcuities: tuple[str, ...]
    incidentalSource: str = Field(min_length=1)


# value sets ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CodedConcept:
    """One code of a reading value set: system, code, display, source, unconfirmed flag."""

    system: str
    code: str
    display: str
    source: str
    unconfirmed: bool


@dataclass(frozen=True)
class ReadingValueSet:
    """A FHIR ValueSet flattened to ``(system, code) -> CodedConcept``."""

    id: str
    url: str
    title: str
    concepts: Mapping[tuple[str, str], CodedConcept]


@dataclass(frozen=True)
class ReadingKnowledge:
    """Everything the readers need, validated and frozen. ``version`` hashes the files."""

    version: str
    findings: FindingsFile
    context: ContextRulesFile
    levels: LevelsFile
    report_types: ReportTypesFile
    medications: MedicationsFile
    thresholds: ThresholdsFile
    prefetch: PrefetchFile
    imaging: ImagingRulesFile
    valuesets: Mapping[str, ReadingValueSet]


_FILES: dict[str, type[BaseModel]] = {
    "findings.json": FindingsFile,
    "context-rules.json": ContextRulesFile,
    "levels.json": LevelsFile,
    "report-types.json": ReportTypesFile,
    "medications.json": MedicationsFile,
    "bleeding-thresholds.json": ThresholdsFile,
    "prefetch.json": PrefetchFile,
    "imaging-rules.json": ImagingRulesFile,
}


def _read_json(path: Path, rel: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReadingKnowledgeError(rel, "file", "not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReadingKnowledgeError(rel, "file", f"not readable JSON: {exc}") from None


def _problem(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    return ".".join(str(p) for p in err["loc"]) or "file", err["msg"]


def _ext(element: Mapping[str, Any], url: str) -> Any:
    for e in element.get("extension", ()) or ():
        if isinstance(e, dict) and e.get("url") == url:
            return e.get("valueString", e.get("valueBoolean"))
    return None


def _load_valueset(path: Path, rel: str) -> ReadingValueSet:
    from fhir.resources.R4B.valueset import ValueSet  # R4 data: R4B models (the plain import is R5)

    raw = _read_json(path, rel)
    try:
        ValueSet.model_validate(raw)
    except (ValidationError, ValueError, TypeError) as exc:
        raise ReadingKnowledgeError(rel, "ValueSet", f"not a valid FHIR R4 ValueSet: {str(exc).splitlines()[0]}") from None
    if raw.get("id") != path.stem:
        raise ReadingKnowledgeError(rel, "id", f"'{raw.get('id')}' does not match the file name '{path.stem}'")
    concepts: dict[tuple[str, str], CodedConcept] = {}
    for i, inc in enumerate((raw.get("compose") or {}).get("include") or ()):
        system = inc.get("system")
        if system not in (RXNORM, LOINC):
            raise ReadingKnowledgeError(rel, f"compose.include[{i}]", f"code system '{system}' is not RxNorm or LOINC")
        if inc.get("filter") or not inc.get("concept"):
            raise ReadingKnowledgeError(rel, f"compose.include[{i}]", "list concepts (no filters, no whole code system)")
        for c in inc["concept"]:
            source = _ext(c, SOURCE_EXT)
            if not isinstance(source, str) or not source.strip():
                raise ReadingKnowledgeError(rel, f"code {c.get('code')}", "has no source extension")
            key = (system, str(c["code"]).strip())
            if key in concepts:
                raise ReadingKnowledgeError(rel, f"code {key[1]}", "listed twice")
            concepts[key] = CodedConcept(system, key[1], c.get("display") or "", source, bool(_ext(c, UNCONFIRMED_EXT)))
    if not concepts:
        raise ReadingKnowledgeError(rel, "compose.include", "value set has no concepts")
    return ReadingValueSet(raw["id"], raw.get("url", ""), raw.get("title") or raw["id"], MappingProxyType(concepts))


def load_reading_knowledge(directory: str | Path | None = None) -> ReadingKnowledge:
    """Load and cross-check the reading knowledge in ``directory`` (default: the bundled ``data/reading``).

    ``directory`` is the ``reading`` folder itself. Raises :class:`ReadingKnowledgeError`
    (``<file>: <entry>: <problem>``) for a missing or invalid file, an invalid regular
    expression, a value set that is not valid FHIR R4 or whose codes lack a source, a medication
    class or procedure naming a value set that is absent, a lab code missing from the lab value
    set, or a procedure naming an unknown bleeding-risk class. Order-code value sets named by
    ``bleeding-thresholds.json`` procedures live in the main knowledge and are not checked here.
    """
    root = Path(directory) if directory is not None else DEFAULT_DIR
    if not root.is_dir():
        raise ReadingKnowledgeError(str(root), "directory", "reading knowledge directory not found")
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*.json")):
        digest.update(p.relative_to(root).as_posix().encode())
        digest.update(p.read_bytes())

    parsed: dict[str, Any] = {}
    for rel, model in _FILES.items():
        try:
            parsed[rel] = model.model_validate(_read_json(root / rel, rel))
        except ValidationError as exc:
            where, msg = _problem(exc)
            raise ReadingKnowledgeError(rel, where, msg) from None

    valuesets: dict[str, ReadingValueSet] = {}
    for path in sorted((root / "valuesets").glob("*.json")):
        vs = _load_valueset(path, f"valuesets/{path.name}")
        valuesets[vs.id] = vs

    meds: MedicationsFile = parsed["medications.json"]
    for mc in meds.classes:
        if mc.valueSet not in valuesets:
            raise ReadingKnowledgeError("medications.json", f"class '{mc.id}'", f"value set '{mc.valueSet}' not in valuesets/")
    thresholds: ThresholdsFile = parsed["bleeding-thresholds.json"]
    class_ids = {c.id for c in thresholds.classes}
    for pc in thresholds.procedures:
        if pc.risk_class not in class_ids:
            raise ReadingKnowledgeError("bleeding-thresholds.json", f"procedure '{pc.procedure}'", f"unknown class '{pc.risk_class}'")
    for rc in thresholds.classes:
        if rc.inr.rangeLow > rc.inr.rangeHigh:
            raise ReadingKnowledgeError("bleeding-thresholds.json", f"class '{rc.id}'", "INR rangeLow is above rangeHigh")
    lab_codes = {code for (system, code) in valuesets.get("coagulation-labs-loinc", ReadingValueSet("", "", "", {})).concepts}
    for lab in thresholds.labs:
        for code in lab.codes:
            if code not in lab_codes:
                raise ReadingKnowledgeError("bleeding-thresholds.json", f"lab '{lab.id}'",
                                            f"code {code} not in valuesets/coagulation-labs-loinc.json")
    ctx: ContextRulesFile = parsed["context-rules.json"]
    for r in ctx.rules:
        if r.source not in ctx.sources:
            raise ReadingKnowledgeError("context-rules.json", f"rule '{r.literal}'", f"unknown source key '{r.source}'")
    finding_ids = [f.id for f in parsed["findings.json"].findings]
    if len(set(finding_ids)) != len(finding_ids):
        raise ReadingKnowledgeError("findings.json", "findings", "duplicate finding id")

    return ReadingKnowledge(
        version=digest.hexdigest()[:12],
        findings=parsed["findings.json"],
        context=ctx,
        levels=parsed["levels.json"],
        report_types=parsed["report-types.json"],
        medications=meds,
        thresholds=thresholds,
        prefetch=parsed["prefetch.json"],
        imaging=parsed["imaging-rules.json"],
        valuesets=MappingProxyType(valuesets),
    )
