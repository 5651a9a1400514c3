"""Which prefetched resources the service validates: only Conditions and Procedures the
decision reads (a code in a fact value set). What the EHR notices: a malformed resource the
decision reads is skipped and reported, one it never reads changes nothing and is not
reported, a resource of another patient is reported either way."""

from __future__ import annotations

import copy

from conftest import FIXTURES, load_json
from test_api import normalise_uuids, post

from cds_service.decision.scenario import yields_facts

BASE = load_json(FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json")
HYPERTENSION = {"system": "http://snomed.info/sct", "code": "59621000", "display": "Essential hypertension"}


def with_condition(**fields):
    body = copy.deepcopy(BASE)
    entries = body["prefetch"]["conditions"]["entry"]
    extra = copy.deepcopy(entries[0]["resource"])
    extra.update(id="c-extra", **fields)
    entries.append({"fullUrl": "https://ehr.example.org/fhir/Condition/c-extra", "resource": extra})
    return body


def skipped(payload):
    return payload.get("extension", {}).get("vcf-cds-hooks", {}).get("skippedResources", [])


def test_unread_malformed_condition_changes_nothing(client):
    reference = post(client, BASE).get_json()
    body = with_condition(code={"coding": [HYPERTENSION]}, clinicalStatus="active")  # not a CodeableConcept
    resp = post(client, body)
    assert resp.status_code == 200
    assert normalise_uuids(resp.get_json()) == normalise_uuids(reference)


def test_read_malformed_condition_is_still_skipped_and_reported(client):
    body = with_condition(clinicalStatus="active")  # the fixture's VCF code: the decision reads it
    [issue] = skipped(post(client, body).get_json())
    assert issue["resource_id"] == "c-extra" and "not a valid FHIR R4B Condition" in issue["diagnostic"]


def test_unread_condition_of_another_patient_is_still_reported(client):
    body = with_condition(code={"coding": [HYPERTENSION]}, subject={"reference": "Patient/someone-else"})
    [issue] = skipped(post(client, body).get_json())
    assert issue["resource_id"] == "c-extra" and "does not reference context.patientId" in issue["diagnostic"]


def test_yields_facts_reads_codes_only_and_survives_junk(knowledge):
    vcf = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M80.08XA"}]}
    assert yields_facts(knowledge, "Condition", {"code": vcf})
    assert not yields_facts(knowledge, "Condition", {"code": {"coding": [HYPERTENSION]}})
    # a CPT kyphoplasty is a fact as a Procedure (augmentation history), not as a Condition
    kypho = {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "22513"}]}
    assert yields_facts(knowledge, "Procedure", {"code": kypho})
    assert not yields_facts(knowledge, "Condition", {"code": kypho})
    for junk in ({"coding": [{"system": {"a": 1}, "code": "M80.08XA"}]}, {"coding": "M80.08XA"}, "M80.08XA", None):
        assert not yields_facts(knowledge, "Condition", {"code": junk})
    assert yields_facts(knowledge, "Patient", {})


def test_read_condition_is_checked_only_where_the_decision_reads_it(client):
    clean = normalise_uuids(post(client, with_condition()).get_json())
    # `note` is not read: junk there no longer costs the Condition its place in the decision
    junk = post(client, with_condition(note="not an array of Annotations")).get_json()
    assert skipped(junk) == [] and normalise_uuids(junk) == clean
    # a member sent as null is read as absent, as the R4B model reads it
    assert normalise_uuids(post(client, with_condition(abatementDateTime=None)).get_json()) == clean


def test_read_condition_with_a_number_for_its_onset_is_skipped_and_reported(client):
    [issue] = skipped(post(client, with_condition(onsetDateTime=20240101)).get_json())
    assert issue["resource_id"] == "c-extra"
    assert issue["diagnostic"] == "not a valid FHIR R4B Condition (onsetDateTime (invalid)); skipped"
