"""Checks on the FHIR ValueSet files in cds_service/decision/data/valuesets/."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from fhir.resources.R4B.valueset import ValueSet

with warnings.catch_warnings():
    # simple-icd-10-cm 1.5.0 loads its data with the deprecated importlib.resources.read_text
    warnings.simplefilter("ignore", DeprecationWarning)
    import simple_icd_10_cm as icd

VALUESET_DIR = Path(__file__).resolve().parents[1] / "cds_service" / "decision" / "data" / "valuesets"
FILES = sorted(VALUESET_DIR.glob("*.json"))

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
SOURCE_EXT = "urn:vcf-cds-hooks:StructureDefinition:source"
URL_PREFIX = "urn:vcf-cds-hooks:ValueSet:"
FORBIDDEN_SNOMED = "207957008"  # closed fracture of lumbar vertebra, NOT "compression fracture"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _components(data: dict):
    """Yield (kind, include-or-exclude) for every compose component."""
    compose = data.get("compose", {})
    for kind in ("include", "exclude"):
        for component in compose.get(kind, []):
            yield kind, component


def _has_source(element: dict) -> bool:
    return any(
        e.get("url") == SOURCE_EXT and isinstance(e.get("valueString"), str) and e["valueString"].strip()
        for e in element.get("extension", [])
    )


def test_valueset_files_exist():
    assert FILES, f"no value set files found in {VALUESET_DIR}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_parses_as_r4b_valueset(path: Path):
    data = _load(path)
    try:
        ValueSet.model_validate(data)
    except Exception as exc:  # pragma: no cover - message only
        pytest.fail(f"{path.name}: does not parse as an R4B ValueSet: {exc}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_id_and_url_match_file_name(path: Path):
    data = _load(path)
    assert data.get("resourceType") == "ValueSet", f"{path.name}: resourceType is {data.get('resourceType')!r}"
    assert data.get("id") == path.stem, f"{path.name}: id {data.get('id')!r} != file stem {path.stem!r}"
    assert data.get("url") == URL_PREFIX + path.stem, (
        f"{path.name}: url {data.get('url')!r} != {URL_PREFIX + path.stem!r}"
    )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_icd10cm_codes_and_filters_are_valid(path: Path):
    data = _load(path)
    for kind, component in _components(data):
        if component.get("system") != ICD10CM:
            continue
        for concept in component.get("concept", []):
            code = concept["code"]
            assert icd.is_valid_item(code), f"{path.name}: {kind} ICD-10-CM code {code} is not valid in simple_icd_10_cm"
        for flt in component.get("filter", []):
            assert flt.get("property") == "concept" and flt.get("op") == "is-a", (
                f"{path.name}: {kind} ICD-10-CM filter {flt} is not a concept is-a filter"
            )
            value = flt["value"]
            assert icd.is_valid_item(value), (
                f"{path.name}: {kind} ICD-10-CM is-a filter value {value} is not valid in simple_icd_10_cm"
            )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_duplicate_codes(path: Path):
    data = _load(path)
    seen: set[tuple[str, str]] = set()
    for _kind, component in _components(data):
        system = component.get("system", "")
        entries = [c["code"] for c in component.get("concept", [])]
        entries += [f["value"] for f in component.get("filter", [])]
        for code in entries:
            key = (system, code.upper())
            assert key not in seen, f"{path.name}: code {code} ({system}) appears more than once"
            seen.add(key)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_forbidden_snomed_code_absent(path: Path):
    data = _load(path)
    for kind, component in _components(data):
        for concept in component.get("concept", []):
            assert concept["code"] != FORBIDDEN_SNOMED, (
                f"{path.name}: {kind} uses SNOMED {FORBIDDEN_SNOMED} (closed fracture of lumbar vertebra)"
            )
        for flt in component.get("filter", []):
            assert flt.get("value") != FORBIDDEN_SNOMED, f"{path.name}: {kind} filter uses {FORBIDDEN_SNOMED}"
    assert FORBIDDEN_SNOMED not in path.read_text(encoding="utf-8"), (
        f"{path.name}: the text {FORBIDDEN_SNOMED} appears in the file"
    )


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_concept_has_a_source(path: Path):
    data = _load(path)
    for kind, component in _components(data):
        concepts = component.get("concept", [])
        filters = component.get("filter", [])
        assert concepts or filters, f"{path.name}: {kind} component has neither concept nor filter"
        for concept in concepts:
            assert _has_source(concept), (
                f"{path.name}: {kind} concept {concept.get('code')} ({component.get('system')}) has no source extension"
            )
            assert concept.get("display"), f"{path.name}: {kind} concept {concept.get('code')} has no display"
        if filters:
            values = ", ".join(f.get("value", "?") for f in filters)
            assert _has_source(component), f"{path.name}: {kind} filter include ({values}) has no source extension"


def test_compression_fracture_uses_42942008():
    data = _load(VALUESET_DIR / "vcf-compression-fracture.json")
    codes = [c["code"] for _, comp in _components(data) for c in comp.get("concept", [])]
    assert "42942008" in codes, f"vcf-compression-fracture.json: 42942008 missing (codes: {codes})"
