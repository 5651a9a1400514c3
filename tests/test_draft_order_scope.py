"""Draft orders in scope: only ServiceRequests are validated and rated; any other draft order
(the MedicationRequest of the CDS Hooks sandbox's Rx View and Rx Sign screens) is skipped,
listed under ``skippedResources`` and answered with 200.

The Rx bodies are the sandbox's own (github.com/cds-hooks/sandbox, src/reducers/
medication-reducers.js ``createFhirResource``, FHIR R4): ``MedicationRequest/request-123``,
``status: "draft"``, ``subject``, ``authoredOn``; before a medication is prescribable nothing
else (no ``intent``, which R4 requires); once it is, ``medicationCodeableConcept``,
``dosageInstruction``, ``dispenseRequest``, ``intent: "order"``, ``category`` as one object and
``reasonCode`` as one CodeableConcept (R4 has lists for both). Rx View (order-select) selects
it; Rx Sign (order-sign) sends no selections.
"""

from __future__ import annotations

import copy
import json

import pytest
from conftest import FIXTURES, load_json, make_app
from fhir.resources.R4B.medicationrequest import MedicationRequest
from test_api import normalise_uuids

SEED = load_json(FIXTURES / "requests" / "seed-001-v3-ct-with-contrast.json")
PATIENT = SEED["context"]["patientId"]
IMAGING_REF = SEED["context"]["selections"][0]
OSTEOPOROSIS = SEED["prefetch"]["conditions"]["entry"][0]["resource"]["code"]
RX_REF = "MedicationRequest/request-123"


def rx_draft(prescribed: bool) -> dict:
    """The sandbox's MedicationRequest draft: as first sent, or once a medication is prescribable."""
    resource: dict = {"resourceType": "MedicationRequest", "id": "request-123", "status": "draft",
                      "subject": {"reference": f"Patient/{PATIENT}"}, "authoredOn": "2026-11-30"}
    if prescribed:
        resource.update({
            "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                                   "doseAndRate": [{"doseQuantity": {"value": 1, "system": "http://unitsofmeasure.org",
                                                                     "code": "{pill}"}}]}],
            "dispenseRequest": {"expectedSupplyDuration": {"value": 7, "unit": "days",
                                                           "system": "http://unitsofmeasure.org", "code": "d"}},
            "intent": "order",
            "category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                                     "code": "community"}]},
            "medicationCodeableConcept": {"text": "Acetaminophen 325 MG Oral Tablet", "coding": [
                {"display": "Acetaminophen 325 MG Oral Tablet", "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                 "code": "313782"}]},
            "reasonCode": OSTEOPOROSIS,
        })
    return resource


def sandbox_rx_request(hook: str, prescribed: bool, *, with_imaging: bool = False) -> dict:
    """The sandbox's Rx View (order-select) or Rx Sign (order-sign) call for the seed-001
    patient; ``with_imaging``: the seed's imaging ServiceRequest is a draft (and selected) too."""
    entries = [{"resource": rx_draft(prescribed)}]
    if with_imaging:
        entries += copy.deepcopy(SEED["context"]["draftOrders"]["entry"])
    context: dict = {"patientId": PATIENT, "userId": "Practitioner/COREPRACTITIONER1",
                     "draftOrders": {"resourceType": "Bundle", "entry": entries}}
    if hook == "order-select":
        context["selections"] = [RX_REF, *([IMAGING_REF] if with_imaging else [])]
    return {"hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "hook": hook,
            "fhirServer": "http://127.0.0.1:8081/fhir", "context": context,
            "prefetch": copy.deepcopy(SEED["prefetch"])}


@pytest.fixture(scope="module")
def client():
    return make_app().test_client()


def call(client, body: dict):
    return client.post(f"/cds-services/vcf-{body['hook']}", data=json.dumps(body), content_type="application/json")


def skipped(response: dict) -> list[dict]:
    return response.get("extension", {}).get("vcf-cds-hooks", {}).get("skippedResources", [])


def test_the_sandbox_rx_draft_is_not_valid_r4():
    """Why it must not be validated: R4 refuses both of the sandbox's drafts."""
    for prescribed in (False, True):
        with pytest.raises(ValueError):
            MedicationRequest.model_validate(rx_draft(prescribed))


@pytest.mark.parametrize("prescribed", [False, True], ids=["first-call", "prescribed"])
@pytest.mark.parametrize("hook", ["order-select", "order-sign"], ids=["rx-view", "rx-sign"])
def test_rx_view_and_rx_sign_get_an_answer_listing_the_draft_as_skipped(client, hook, prescribed):
    resp = call(client, sandbox_rx_request(hook, prescribed))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["cards"] == [] and "systemActions" not in body
    (issue,) = skipped(body)
    assert issue["location"] == "context.draftOrders.entry[0].resource"
    assert (issue["resource_type"], issue["resource_id"]) == ("MedicationRequest", "request-123")
    assert "not rated" in issue["diagnostic"] and "ServiceRequest" in issue["diagnostic"]


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_an_imaging_order_beside_the_rx_draft_gets_the_same_answer_as_alone(client, hook):
    alone = copy.deepcopy(SEED)
    alone["hook"] = hook
    if hook == "order-sign":
        del alone["context"]["selections"]
    reference = call(client, alone)
    assert reference.status_code == 200
    resp = call(client, sandbox_rx_request(hook, prescribed=True, with_imaging=True))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert [i["resource_id"] for i in skipped(body)] == ["request-123"]
    body["extension"]["vcf-cds-hooks"].pop("skippedResources")
    if not body["extension"]["vcf-cds-hooks"]:
        del body["extension"]["vcf-cds-hooks"]
    assert normalise_uuids(body) == normalise_uuids(reference.get_json())
    # The skipped draft is not echoed: no action touches it.
    (rating,) = body["systemActions"]
    assert rating["resource"]["id"] == IMAGING_REF.split("/")[1]
    actions = [a for c in body["cards"] for s in c.get("suggestions", ()) for a in s["actions"]]
    assert body["cards"] and all(a.get("resource", {}).get("resourceType") != "MedicationRequest" and
                                 a.get("resourceId") != RX_REF for a in actions)


def test_a_malformed_imaging_order_beside_the_rx_draft_is_still_400(client):
    body = sandbox_rx_request("order-select", prescribed=False, with_imaging=True)
    body["context"]["draftOrders"]["entry"][1]["resource"]["status"] = 12345
    resp = call(client, body)
    assert resp.status_code == 400
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["context.draftOrders.entry[1].resource"]


def test_a_selection_in_no_draft_order_is_still_400(client):
    body = sandbox_rx_request("order-select", prescribed=False)
    body["context"]["selections"] = ["MedicationRequest/request-456"]
    resp = call(client, body)
    assert resp.status_code == 400 and resp.get_json()["issue"][0]["code"] == "not-found"


def test_a_draft_order_of_no_fhir_type_is_still_400(client):
    body = sandbox_rx_request("order-select", prescribed=False)
    body["context"]["draftOrders"]["entry"][0]["resource"]["resourceType"] = "MedicationOrder"  # DSTU2's name
    body["context"]["selections"] = ["MedicationOrder/request-123"]
    resp = call(client, body)
    assert resp.status_code == 400 and resp.get_json()["issue"][0]["code"] == "not-supported"
