"""parse_envelope and parse_record against real request bodies and their damaged variants."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cds_service.protocol.errors import RequestError, operation_outcome
from cds_service.protocol.request import (
    Envelope,
    InputIssue,
    PatientRecord,
    load_request_schemas,
    parse_envelope,
    parse_record,
)

INTEROP = Path(__file__).resolve().parents[2] / "shared" / "interop"
ARGONAUT_REQUEST = INTEROP / "argonaut-pama" / "scenario-01-outbound-request.json"
SYNTHEA_RECORD = INTEROP / "synthea" / "Keira_Huel_279e1ce8-1a84-492b-bb78-b1d13a0d564c.json"

PATIENT_ID = "MRI-59879846"
SELECTION = "ServiceRequest/example-MRI-59879846"


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schemas():
    return load_request_schemas()


@pytest.fixture(scope="module")
def argonaut_request() -> dict[str, Any]:
    return _load(ARGONAUT_REQUEST)


@pytest.fixture
def body(argonaut_request) -> dict[str, Any]:
    """The Argonaut request with the one prefetch key this service cannot do without."""
    result = copy.deepcopy(argonaut_request)
    result["prefetch"] = {"conditions": None}
    return result


def _condition(cid: str, patient_ref: str = f"Patient/{PATIENT_ID}", **extra: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M80.08XA"}]},
        "subject": {"reference": patient_ref},
    }
    resource.update(extra)
    return resource


def _searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"urn:uuid:{r.get('id', i)}", "resource": r, "search": {"mode": "match"}}
            for i, r in enumerate(resources)
        ],
    }


def parse(body: Any, schemas, **limits: Any) -> tuple[Envelope, PatientRecord]:
    """Both parsing steps, as the pipeline runs them when nothing needs fetching; conditions
    required, as data/services.json says."""
    envelope = parse_envelope(body, schemas=schemas, **limits)
    return envelope, parse_record(envelope.prefetch, patient_id=envelope.patient_id, required=("conditions",))


def _raises(body: Any, schemas, **kwargs: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(body, schemas, **kwargs)
    return caught.value


# ------------------------------------------------------------------ the happy path


def test_argonaut_request_without_prefetch_is_412(argonaut_request, schemas):
    error = _raises(copy.deepcopy(argonaut_request), schemas)
    assert (error.status, error.code) == (412, "required")
    assert "prefetch 'conditions' is missing" in error.diagnostic
    assert error.expression == ("prefetch.conditions",)


def test_argonaut_request_with_null_conditions_parses(body, schemas):
    assert "type" not in body["context"]["draftOrders"]  # the spec example's own shape

    envelope, record = parse(body, schemas)

    assert isinstance(envelope, Envelope) and isinstance(record, PatientRecord)
    assert envelope.hook == "order-select"
    assert envelope.hook_instance == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert envelope.fhir_server == "http://hooks.smarthealthit.org"
    assert (envelope.patient_id, envelope.user_id, envelope.encounter_id) == (PATIENT_ID, "Practitioner/123", "89284")
    assert [o.reference for o in envelope.draft_orders] == [SELECTION]
    assert [s.reference for s in envelope.selections] == [SELECTION]
    selected = envelope.selections[0]
    assert selected.model.get_resource_type() == "ServiceRequest"
    assert selected.model.code.coding[0].code == "72133"
    assert selected.raw == body["context"]["draftOrders"]["entry"][0]["resource"]
    assert record.conditions == ()
    assert record.procedures == () and record.procedures_available is False
    assert record.issues == ()


def test_raw_is_a_private_copy(body, schemas):
    envelope, record = parse(body, schemas)
    body["context"]["draftOrders"]["entry"][0]["resource"]["status"] = "active"
    assert envelope.selections[0].raw["status"] == "draft"


def test_unknown_fields_and_extensions_are_tolerated(body, schemas):
    body["extension"] = {"com.example.trace": {"id": 1}}
    body["somethingNew"] = [1, 2, 3]
    body["context"]["extension"] = {"com.example.ctx": True}
    body["context"]["draftOrders"]["entry"][0]["fullUrl"] = "urn:uuid:whatever"
    envelope, record = parse(body, schemas)
    assert [s.reference for s in envelope.selections] == [SELECTION]


def test_optional_procedures_prefetch(body, schemas):
    procedure = {
        "resourceType": "Procedure",
        "id": "p1",
        "status": "completed",
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "22513"}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }
    body["prefetch"].update(procedures=_searchset(procedure))
    envelope, record = parse(body, schemas)
    assert [p.id for p in record.procedures] == ["p1"]
    assert record.procedures_available is True


@pytest.mark.parametrize(
    "value, available",
    [
        (None, True),
        ({"resourceType": "Bundle", "type": "searchset", "total": 0}, True),
        ({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}, False),
    ],
    ids=["null", "empty-bundle", "operation-outcome"],
)
def test_procedures_prefetch_availability(body, schemas, value, available):
    body["prefetch"]["procedures"] = value
    envelope, record = parse(body, schemas)
    assert record.procedures == ()
    assert record.procedures_available is available


# ------------------------------------------------------------- fatal request errors


@pytest.mark.parametrize("not_an_object", [[], "order-select", None, 42])
def test_body_that_is_not_an_object_is_400(schemas, not_an_object):
    error = _raises(not_an_object, schemas)
    assert (error.status, error.code) == (400, "structure")


def test_wrong_hook_is_400(body, schemas):
    body["hook"] = "order-sign"
    error = _raises(body, schemas)
    assert (error.status, error.code) == (400, "not-supported")
    assert "wrong hook" in error.diagnostic
    assert error.expression == ("hook",)


@pytest.mark.parametrize(
    "mutate, where, code",
    [
        (lambda b: b.pop("hookInstance"), "request body", "required"),
        (lambda b: b.pop("context"), "request body", "required"),
        (lambda b: b["context"].pop("patientId"), "context", "required"),
        (lambda b: b["context"].update(selections=[]), "context.selections", "invalid"),
        (lambda b: b["context"]["draftOrders"].update(resourceType="List"), "context.draftOrders.resourceType", "invalid"),
        (lambda b: b["context"]["draftOrders"].pop("entry"), "context.draftOrders", "required"),
        (lambda b: b.update(prefetch={"conditions": []}), "prefetch.conditions", "invalid"),
    ],
    ids=["no-hookInstance", "no-context", "no-patientId", "empty-selections", "not-a-bundle", "no-entry", "prefetch-array"],
)
def test_schema_violations_name_the_path(body, schemas, mutate, where, code):
    mutate(body)
    error = _raises(body, schemas)
    assert (error.status, error.code) == (400, code)
    assert error.diagnostic.startswith(f"{where}:")
    assert len(error.diagnostic) <= 300


def test_schema_diagnostics_do_not_echo_values(body, schemas):
    body["context"]["patientId"] = 59879846  # a patient identifier of the wrong type
    error = _raises(body, schemas)
    assert error.diagnostic == "context.patientId: must be of type string"

    body = copy.deepcopy(body)
    body["context"]["patientId"] = PATIENT_ID
    body["fhirAuthorization"] = {
        "access_token": "very-secret-token",
        "token_type": "very-secret-token",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "vcf-cds",
    }
    error = _raises(body, schemas)
    assert "very-secret-token" not in error.diagnostic
    assert error.diagnostic.startswith("fhirAuthorization.token_type:")


def test_fhir_authorization_requires_fhir_server(body, schemas):
    body["fhirAuthorization"] = {
        "access_token": "secret",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/Condition.read",
        "subject": "vcf-cds",
    }
    parse(body, schemas)  # fine with fhirServer
    del body["fhirServer"]
    error = _raises(body, schemas)
    assert (error.status, error.code) == (400, "required")
    assert "fhirServer" in error.diagnostic and "secret" not in error.diagnostic


def test_unresolvable_selection_is_400(body, schemas):
    body["context"]["selections"] = [SELECTION, "ServiceRequest/not-in-the-bundle"]
    error = _raises(body, schemas)
    assert (error.status, error.code) == (400, "not-found")
    assert "context.selections[1]" in error.diagnostic
    assert "ServiceRequest/not-in-the-bundle" in error.diagnostic


def test_draft_order_with_junk_is_400_naming_the_entry(body, schemas):
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order.update(status=12345, code="x", note=[[["nested"], [1, [2]]]])
    error = _raises(body, schemas)
    assert (error.status, error.code) == (400, "invalid")
    assert error.diagnostic.startswith("context.draftOrders.entry[0].resource (ServiceRequest/example-MRI-59879846)")
    assert "status" in error.diagnostic
    assert "Traceback" not in error.diagnostic and len(error.diagnostic) <= 300
    assert error.expression == ("context.draftOrders.entry[0].resource",)


@pytest.mark.parametrize("resource_type", ["ImagingOrder", "Coding", "DomainResource"])
def test_unknown_draft_order_resource_type_is_400(body, schemas, resource_type):
    body["context"]["draftOrders"]["entry"][0]["resource"]["resourceType"] = resource_type
    body["context"]["selections"] = [f"{resource_type}/example-MRI-59879846"]
    error = _raises(body, schemas)
    assert (error.status, error.code) == (400, "not-supported")
    assert resource_type in error.diagnostic


def test_duplicate_draft_order_is_400(body, schemas):
    entries = body["context"]["draftOrders"]["entry"]
    entries.append(copy.deepcopy(entries[0]))
    error = _raises(body, schemas)
    assert (error.status, error.code) == (400, "invalid")
    assert "entry[1]" in error.diagnostic


def test_absurd_nesting_does_not_crash(body, schemas):
    nested: list[Any] = []
    for _ in range(5000):
        nested = [nested]
    body["x-unknown"] = nested
    error = _raises(body, schemas)
    assert (error.status, error.code) == (400, "too-long")


def test_absurd_nesting_inside_a_draft_order_does_not_crash(body, schemas):
    nested: dict[str, Any] = {}
    for _ in range(5000):
        nested = {"x": nested}
    body["context"]["draftOrders"]["entry"][0]["resource"]["extension"] = [{"url": "urn:x", "valueString": nested}]
    error = _raises(body, schemas)
    assert error.status == 400


def test_depth_limit_is_adjustable(body, schemas):
    parse(body, schemas)
    error = _raises(body, schemas, max_depth=5)
    assert (error.status, error.code) == (400, "too-long")


# -------------------------------------------------------------------------- prefetch


def test_malformed_condition_is_skipped_and_reported(body, schemas):
    good = _condition("good")
    bad = _condition("bad", onsetDateTime={"not": "a date"}, code="M80.08XA")
    body["prefetch"]["conditions"] = _searchset(good, bad)
    envelope, record = parse(body, schemas)
    assert [c.id for c in record.conditions] == ["good"]
    [issue] = record.issues
    assert isinstance(issue, InputIssue)
    assert (issue.location, issue.resource_type, issue.resource_id) == ("prefetch.conditions.entry[1]", "Condition", "bad")
    assert "not a valid FHIR R4B Condition" in issue.diagnostic
    assert "M80.08XA" not in issue.diagnostic  # field paths only, no values


def test_other_resource_types_and_odd_entries_in_a_prefetch_bundle(body, schemas):
    bundle = _searchset(_condition("c1"), {"resourceType": "Encounter", "id": "e1", "status": "finished"})
    bundle["entry"].append({"fullUrl": "urn:uuid:gone", "request": {"method": "DELETE"}})  # no resource
    bundle["entry"].append(
        {
            "resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "incomplete"}]},
            "search": {"mode": "outcome"},
        }
    )
    body["prefetch"]["conditions"] = bundle
    envelope, record = parse(body, schemas)
    assert [c.id for c in record.conditions] == ["c1"]
    assert [(i.location, i.resource_type) for i in record.issues] == [("prefetch.conditions.entry[1]", "Encounter")]


def test_conditions_operation_outcome_is_412(body, schemas):
    body["prefetch"]["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden"}],
    }
    error = _raises(body, schemas)
    assert (error.status, error.code) == (412, "required")


def test_conditions_of_an_unusable_type_is_412(body, schemas):
    body["prefetch"]["conditions"] = {"resourceType": "Patient", "id": PATIENT_ID}
    error = _raises(body, schemas)
    assert error.status == 412


def test_single_condition_resource_instead_of_a_bundle(body, schemas):
    body["prefetch"]["conditions"] = _condition("only-one")
    envelope, record = parse(body, schemas)
    assert [c.id for c in record.conditions] == ["only-one"]
    assert record.conditions[0].raw["code"]["coding"][0]["code"] == "M80.08XA"
    assert record.issues == ()


@pytest.mark.parametrize(
    "reference, kept",
    [
        (f"Patient/{PATIENT_ID}", True),
        (f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}", True),
        (f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}/_history/3", True),
        (f"urn:uuid:{PATIENT_ID}", True),
        ("Patient/someone-else", False),
        ("https://ehr.example.org/fhir/Patient/someone-else", False),
        (f"Group/{PATIENT_ID}", False),
        ("urn:uuid:someone-else", False),
    ],
)
def test_condition_of_another_patient_is_skipped(body, schemas, reference, kept):
    body["prefetch"]["conditions"] = _searchset(_condition("c1", patient_ref=reference))
    envelope, record = parse(body, schemas)
    assert bool(record.conditions) is kept
    if not kept:
        [issue] = record.issues
        assert issue.location == "prefetch.conditions.entry[0]"
        assert "someone-else" not in issue.diagnostic


def test_prefetch_keys_the_service_does_not_read_are_ignored(body, schemas):
    body["prefetch"]["patient"] = {"resourceType": "Patient", "id": "someone-else"}
    body["prefetch"]["medications"] = {"resourceType": "Bundle", "entry": [{"resource": {"junk": True}}]}
    envelope, record = parse(body, schemas)
    assert record.issues == ()
    assert set(envelope.prefetch) == {"conditions", "patient", "medications"}  # kept as sent


def test_synthea_conditions_and_procedures_all_parse(body, schemas):
    record = _load(SYNTHEA_RECORD)
    resources = [entry["resource"] for entry in record["entry"]]
    [patient] = [r for r in resources if r["resourceType"] == "Patient"]
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    procedures = [r for r in resources if r["resourceType"] == "Procedure"]
    assert conditions and procedures

    body["context"]["patientId"] = patient["id"]
    for entry in body["context"]["draftOrders"]["entry"]:
        entry["resource"]["subject"] = {"reference": f"Patient/{patient['id']}"}
    body["prefetch"] = {
        "conditions": _searchset(*conditions),
        "procedures": _searchset(*procedures),
    }
    envelope, record = parse(body, schemas)

    assert record.issues == ()
    assert len(record.conditions) == len(conditions)
    assert len(record.procedures) == len(procedures)
    assert record.procedures_available is True
    assert {c.id for c in record.conditions} == {c["id"] for c in conditions}


# ---------------------------------------------------------------------------- errors


def test_operation_outcome_shape():
    assert operation_outcome(400, "not-found", "no such order", ["context.selections[0]"]) == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "not-found",
                "diagnostics": "no such order",
                "expression": ["context.selections[0]"],
            }
        ],
    }
    assert "expression" not in operation_outcome(412, "required", "x")["issue"][0]
    error = RequestError(412, "required", "missing")
    assert error.to_operation_outcome() == operation_outcome(412, "required", "missing")


def test_request_error_rejects_unknown_codes():
    with pytest.raises(ValueError):
        RequestError(400, "bogus", "x")
    with pytest.raises(ValueError):
        RequestError(200, "invalid", "x")
