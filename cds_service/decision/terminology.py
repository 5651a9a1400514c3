"""Value set membership: (system, code) -> the ValueSets that contain it.

Implements the subset of FHIR R4 ``ValueSet.compose`` the knowledge uses
(http://hl7.org/fhir/R4/valueset.html#compose): ``include``/``exclude`` with
enumerated ``concept`` lists, and for ICD-10-CM the ``concept is-a <code>`` filter.
ICD-10-CM is a strict code hierarchy in which every descendant code extends its
parent's characters (M80.08 -> M80.08XA), so ``is-a`` is evaluated as a prefix test
without a terminology server. An ICD-10-CM block (``C00-C14``) is-a filter means every
code whose 3-character category lies in the block, as the tabular list nests categories in
blocks. No other system may use filters: SNOMED CT subsumption needs the full hierarchy,
which this service does not ship.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
KNOWN_SYSTEMS = frozenset({ICD10CM, SNOMED, CPT, LOINC, HCPCS})
# How code systems are named to a reader (cards, the explanation page).
# RxNorm codes are read by the record reading (data/reading/valuesets/), named here for display.
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SYSTEM_NAMES = {ICD10CM: "ICD-10-CM", SNOMED: "SNOMED CT", CPT: "CPT", LOINC: "LOINC", HCPCS: "HCPCS", RXNORM: "RxNorm"}

SOURCE_EXT = "urn:vcf-cds-hooks:StructureDefinition:source"
UNCONFIRMED_EXT = "urn:vcf-cds-hooks:StructureDefinition:unconfirmed"


def normalize_code(system: str, code: str) -> str:
    """Canonical form used for matching: ICD-10-CM upper-cased (codes are case-insensitive
    in practice, and EHRs send both), all systems stripped of surrounding blanks."""
    code = code.strip()
    return code.upper() if system == ICD10CM else code


@dataclass(frozen=True)
class Concept:
    """One enumerated code of a ValueSet, or one ICD-10-CM ``is-a`` root (``is_a`` True)."""

    system: str
    code: str
    display: str | None
    is_a: bool = False
    unconfirmed: bool = False
    source: str | None = None


@dataclass(frozen=True)
class ValueSetDef:
    """A loaded ValueSet: id, url, title, included and excluded concepts (in file order)."""

    id: str
    url: str
    title: str
    description: str
    include: tuple[Concept, ...]
    exclude: tuple[Concept, ...] = ()

    def contains(self, system: str, code: str) -> Concept | None:
        """The included concept matching (system, code), or None if absent or excluded."""
        code = normalize_code(system, code)
        hit = _match(self.include, system, code)
        if hit is None or _match(self.exclude, system, code) is not None:
            return None
        return hit

    def first_code(self, system: str, *, among: ValueSetDef | None = None) -> Concept | None:
        """First enumerated concept of ``system`` (also in ``among`` when given): the code a
        suggestion orders. File order is the knowledge author's preference order."""
        for c in self.include:
            if c.system == system and not c.is_a and (among is None or among.contains(c.system, c.code)):
                return c
        return None


def is_a(root: str, code: str) -> bool:
    """ICD-10-CM subsumption without a hierarchy: ``code`` extends ``root`` (M80.08 ->
    M80.08XA), or ``root`` is a block ``Xnn-Xnn`` and the category of ``code`` lies in it
    (C50.912 is-a C50; C34.90 is-a C30-C39). Both normalized (upper case, dots kept).
    Categories with a letter (C4A, C7A, D3A) sort after the digits of their decade, so a
    block spanning that position (C76-C80) contains them: list such categories on purpose."""
    if "-" in root:
        first, last = root.split("-", 1)
        return first <= code[:3] <= last
    return code.startswith(root)


def _match(concepts: Iterable[Concept], system: str, code: str) -> Concept | None:
    for c in concepts:
        if c.system != system:
            continue
        if c.code == code or (c.is_a and is_a(c.code, code)):
            return c
    return None


_MEMO_MAX = 20_000


@dataclass(frozen=True)
class Terminology:
    """All value sets, indexed for the hot path: exact codes are a dict lookup, ICD-10-CM
    ``is-a`` roots are tried by prefix (there are a few dozen)."""

    valuesets: Mapping[str, ValueSetDef]
    _exact: Mapping[tuple[str, str], tuple[str, ...]] = field(repr=False, default_factory=dict)
    _roots: tuple[tuple[str, str], ...] = field(repr=False, default=())
    # (system, code) -> memberships: the knowledge is frozen, so an answer never goes stale;
    # cleared when full, since the codes come from requests.
    _memo: dict[tuple[str, str], tuple[str, ...]] = field(repr=False, compare=False, default_factory=dict)
    # (value set, system, code) -> the matching concept, the same way: contains() scans the
    # set's concepts, and every call asks again for the codes of its record and orders.
    _concepts: dict[tuple[str, str, str], Concept | None] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def build(cls, valuesets: Mapping[str, ValueSetDef]) -> Terminology:
        exact: dict[tuple[str, str], list[str]] = {}
        roots: list[tuple[str, str]] = []
        for vs in valuesets.values():
            for c in vs.include:
                if c.is_a:
                    roots.append((c.code, vs.id))
                else:
                    exact.setdefault((c.system, c.code), []).append(vs.id)
        # Longest roots first only matters for readability of evidence; membership is a set.
        roots.sort(key=lambda r: (-len(r[0]), r[0], r[1]))
        return cls(
            valuesets=MappingProxyType(dict(valuesets)),
            _exact=MappingProxyType({k: tuple(v) for k, v in exact.items()}),
            _roots=tuple(roots),
        )

    def memberships(self, system: str | None, code: str | None) -> tuple[str, ...]:
        """Ids of the value sets containing (system, code), honouring excludes; () for
        missing system or code. Order: exact matches first, then is-a roots."""
        if not system or not code or not isinstance(code, str):
            return ()
        key = (system, code)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        code = normalize_code(system, code)
        found = list(self._exact.get((system, code), ()))
        if system == ICD10CM:
            found.extend(vs for root, vs in self._roots if is_a(root, code) and vs not in found)
        result = tuple(vs for vs in found if self.valuesets[vs].contains(system, code) is not None)
        if len(self._memo) >= _MEMO_MAX:
            self._memo.clear()
        self._memo[key] = result
        return result

    def concept(self, valueset_id: str, system: str, code: str) -> Concept | None:
        """The concept of ``valueset_id`` that (system, code) matched, for its display,
        source and unconfirmed flag."""
        key = (valueset_id, system, code)
        if key in self._concepts:
            return self._concepts[key]
        found = self.valuesets[valueset_id].contains(system, code)
        if len(self._concepts) >= _MEMO_MAX:
            self._concepts.clear()
        self._concepts[key] = found
        return found
