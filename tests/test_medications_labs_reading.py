"""Reading medications (MedicationRequest / MedicationStatement) and labs (INR, platelet count)
from FHIR R4 JSON, and judging the labs against the SIR thresholds (Patel IJ et al., J Vasc
Interv Radiol 2019) for the procedure's bleeding-risk class."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import INTEROP, load_json
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation

from cds_service.decision.reading import load_reading_knowledge
from cds_service.decision.reading.labs import bleeding_risk_class, judge_labs, out_of_range_for_procedure, read_labs
from cds_service.decision.reading.medications import read_medications

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

# The active alendronate order of the Synthea record Willia Runolfsdottir, as Synthea wrote it.
SYNTHEA_ALENDRONATE = {
    "resourceType": "MedicationRequest", "id": "0cc8b72a-05a8-40a9-9c33-cb67ccd342c4", "status": "active", "intent": "order",
    "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "904419", "display": "Alendronic acid 10 MG Oral Tablet"}],
                                  "text": "Alendronic acid 10 MG Oral Tablet"},
    "subject": {"reference": "urn:uuid:54034a85-d558-4047-b32a-ad82008f7199"},
    "authoredOn": "2012-11-12T22:39:41+00:00",
}


def _request(rid, code, display, status="active", **extra):
    r = {"resourceType": "MedicationRequest", "id": rid, "status": status, "intent": "order",
         "subject": {"reference": "Patient/p1"}, "authoredOn": "2026-06-01"}
    if code:
        r["medicationCodeableConcept"] = {"coding": [{"system": RXNORM, "code": code, "display": display}], "text": display}
    else:
        r["medicationCodeableConcept"] = {"text": display}
    r.update(extra)
    MedicationRequest.model_validate(r)
    return r


def _observation(oid, code, value, unit, when, status="final", ucum=None):
    o = {"resourceType": "Observation", "id": oid, "status": status,
         "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "subject": {"reference": "Patient/p1"},
         "effectiveDateTime": when, "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                                                      "code": ucum or unit}}
    Observation.model_validate(o)
    return o


# ---------------------------------------------------------------------------------------
# Medications


def test_synthea_active_alendronate_is_osteoporosis_therapy_by_code():
    MedicationRequest.model_validate(SYNTHEA_ALENDRONATE)
    (fact,) = read_medications([SYNTHEA_ALENDRONATE], now=NOW)
    assert (fact.drug_class, fact.when, fact.matched_by, fact.code, fact.unconfirmed) == (
        "osteoporosis-therapy", "current", "code", "904419", False)
    assert fact.evidence() == {"resource": "MedicationRequest/0cc8b72a-05a8-40a9-9c33-cb67ccd342c4",
                               "class": "osteoporosis-therapy", "code": "904419", "system": RXNORM,
                               "display": "Alendronic acid 10 MG Oral Tablet", "date": "2012-11-12",
                               "status": "active", "when": "current", "matchedBy": "code", "unconfirmed": False}


def test_the_whole_synthea_record_yields_only_the_alendronate():
    path = next((INTEROP / "synthea").glob("Willia_Runolfsdottir_*.json"), None) if INTEROP.is_dir() else None
    if path is None:
        pytest.skip("shared Synthea records not beside this checkout")
    resources = [e["resource"] for e in load_json(path)["entry"]]
    facts = read_medications(resources, now=NOW)
    assert [(f.drug_class, f.code) for f in facts] == [("osteoporosis-therapy", "904419")]


def test_drug_name_without_a_listed_code_is_recognised_as_unconfirmed():
    facts = read_medications([_request("m1", None, "Romosozumab-aqqg 105 mg/1.17 mL syringe (Evenity)")], now=NOW)
    assert [(f.drug_class, f.matched_by, f.unconfirmed) for f in facts] == [("osteoporosis-therapy", "text", True)]
    # A word that merely contains a drug name is not a match.
    assert read_medications([_request("m2", None, "Anti-heparinoid cream")], now=NOW) == ()


def test_anticoagulant_antiplatelet_and_aspirin_are_separate_classes():
    facts = read_medications([
        _request("a", "1364445", "apixaban 5 MG Oral Tablet"),
        _request("c", "309362", "clopidogrel 75 MG Oral Tablet"),
        _request("s", "243670", "aspirin 81 MG Oral Tablet"),
        _request("w", "855332", "warfarin sodium 5 MG Oral Tablet"),
    ], now=NOW)
    assert [(f.resource_id, f.drug_class, f.matched_by) for f in facts] == [
        ("a", "anticoagulant", "code"), ("c", "antiplatelet", "code"), ("s", "aspirin", "code"), ("w", "anticoagulant", "code")]


def test_only_current_or_recent_orders_count():
    resources = [
        _request("stopped-long-ago", "855332", "warfarin sodium 5 MG Oral Tablet", status="stopped",
                 dispenseRequest={"validityPeriod": {"start": "2026-01-01", "end": "2026-06-01"}}),
        _request("stopped-last-week", "1364445", "apixaban 5 MG Oral Tablet", status="stopped",
                 dispenseRequest={"validityPeriod": {"start": "2026-09-01", "end": "2026-11-25"}}),
        _request("zoledronic-last-spring", "1114085", "100 ML zoledronic acid 0.04 MG/ML Injection", status="completed",
                 authoredOn="2026-04-02"),
        _request("cancelled", "904419", "Alendronic acid 10 MG Oral Tablet", status="cancelled"),
        _request("entered-in-error", "904419", "Alendronic acid 10 MG Oral Tablet", status="entered-in-error"),
        _request("completed-undated", "904419", "Alendronic acid 10 MG Oral Tablet", status="completed", authoredOn=None),
        _request("on-hold", "309362", "clopidogrel 75 MG Oral Tablet", status="on-hold"),
    ]
    resources[5].pop("authoredOn")
    facts = read_medications(resources, now=NOW)
    assert [(f.resource_id, f.when, f.date) for f in facts] == [
        ("stopped-last-week", "recent", "2026-11-25"), ("zoledronic-last-spring", "recent", "2026-04-02"),
        ("on-hold", "current", "2026-06-01")]
    # The zoledronic acid code is from one public source only: carried as unconfirmed.
    assert facts[1].unconfirmed


def test_medication_statement_and_contained_medication_reference():
    statement = {
        "resourceType": "MedicationStatement", "id": "ms1", "status": "active",
        "contained": [{"resourceType": "Medication", "id": "med1",
                       "code": {"coding": [{"system": RXNORM, "code": "1364445", "display": "apixaban 5 MG Oral Tablet"}]}}],
        "medicationReference": {"reference": "#med1"}, "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-10-01",
    }
    MedicationStatement.model_validate(statement)
    (fact,) = read_medications([statement], now=NOW)
    assert (fact.resource_type, fact.drug_class, fact.code, fact.date) == ("MedicationStatement", "anticoagulant", "1364445",
                                                                          "2026-10-01")


# ---------------------------------------------------------------------------------------
# Labs


def test_inr_of_2_8_two_days_before_kyphoplasty_is_out_of_range():
    labs = read_labs([
        _observation("inr-old", "6301-6", 1.1, "{INR}", "2026-09-01T08:00:00Z"),
        _observation("inr-new", "6301-6", 2.8, "{INR}", "2026-11-28T08:00:00Z"),
        _observation("plt", "777-3", 210, "10*3/uL", "2026-11-28T08:00:00Z"),
    ], now=NOW, lookback_days=120)
    assert labs["inr"].value == 2.8 and labs["inr"].observation_id == "inr-new" and labs["inr"].date == "2026-11-28"
    assert bleeding_risk_class("vertebral-augmentation") == ("high", True)
    (bad,) = out_of_range_for_procedure(labs, "vertebral-augmentation")
    assert (bad.lab, bad.state, bad.risk_class) == ("inr", "out-of-range", "high")
    assert "1.5-1.8" in bad.threshold and "Patel IJ" in bad.citation and bad.unconfirmed


def test_platelet_units_are_converted_and_thresholds_follow_the_class():
    labs = read_labs([_observation("plt", "26515-7", 45000, "/uL", "2026-11-29")], now=NOW)
    assert labs["platelets"].value == 45.0 and labs["platelets"].unit == "10*9/L"
    high = judge_labs(labs, "high")
    low = judge_labs(labs, "low")
    assert [(j.lab, j.state) for j in high] == [("platelets", "out-of-range")]
    assert [(j.lab, j.state) for j in low] == [("platelets", "within")]


def test_inr_inside_the_guideline_range_is_borderline():
    labs = read_labs([_observation("inr", "34714-6", 1.6, "{INR}", "2026-11-29")], now=NOW)
    (j,) = judge_labs(labs, "high")
    assert j.state == "borderline"
    assert out_of_range_for_procedure(labs, "vertebral-augmentation") == ()


def test_old_preliminary_unknown_unit_and_comparator_values_are_left_out():
    obs = [
        _observation("too-old", "6301-6", 3.5, "{INR}", "2026-09-01"),
        _observation("preliminary", "6301-6", 3.5, "{INR}", "2026-11-29", status="preliminary"),
        _observation("odd-unit", "777-3", 12, "g/dL", "2026-11-29"),
        _observation("other-lab", "718-7", 12, "g/dL", "2026-11-29"),
    ]
    less_than = _observation("comparator", "777-3", 20, "10*3/uL", "2026-11-29")
    less_than["valueQuantity"]["comparator"] = "<"
    assert read_labs([*obs, less_than], now=NOW) == {}


def test_unknown_procedure_has_no_class_and_unknown_class_raises():
    assert bleeding_risk_class("dxa") is None
    assert out_of_range_for_procedure({}, "dxa") == ()
    with pytest.raises(KeyError):
        judge_labs({}, "moderate")


def test_thresholds_are_the_cited_sir_numbers():
    th = load_reading_knowledge().thresholds
    classes = {c.id: c for c in th.classes}
    assert (classes["high"].inr.rangeLow, classes["high"].inr.rangeHigh, classes["high"].plateletsMin) == (1.5, 1.8, 50)
    assert (classes["low"].inr.rangeLow, classes["low"].inr.rangeHigh, classes["low"].plateletsMin) == (2.0, 3.0, 20)
    assert "J Vasc Interv Radiol 2019;30(8):1168-1184" in th.citation


def test_reading_value_sets_load_and_every_code_has_a_source():
    # The loader validates each file as an R4 ValueSet (fhir.resources R4B) and refuses a code without a source.
    k = load_reading_knowledge()
    assert set(k.valuesets) == {"osteoporosis-therapy-rxnorm", "anticoagulant-rxnorm", "antiplatelet-rxnorm",
                                "aspirin-rxnorm", "coagulation-labs-loinc"}
    for vs in k.valuesets.values():
        assert vs.url == "urn:vcf-cds-hooks:ValueSet:" + vs.id
        assert all(c.source for c in vs.concepts.values())
    osteo = k.valuesets["osteoporosis-therapy-rxnorm"].concepts
    assert not osteo[(RXNORM, "904419")].unconfirmed
    # Ingredient codes not found in a public copy are carried, marked unconfirmed.
    assert osteo[(RXNORM, "46041")].unconfirmed
