"""What the CDS Hooks sandbox sends and reads, checked on the service's answers.

Read from the sandbox's source (github.com/cds-hooks/sandbox, commit 3b7e255):

- its PAMA screen (src/components/Pama/pama.jsx, ``generateContext``) sends ``order-select``
  with ``selections: ["ServiceRequest/example-request-id"]`` and ``draftOrders``, a Bundle
  without ``type`` holding one ServiceRequest ``{id: "example-request-id", status: "draft",
  intent: "plan", code: {coding: [<study>], text}, subject, reasonCode: [{coding: [<reason>],
  text}]}`` (no ``authoredOn``); before a study is picked, ``code.coding`` is ``[{}]`` and
  ``reasonCode`` ``[]``;
- it reads ratings only from ``response.extension.systemActions`` (src/middleware/cds-execution.js):
  ``update`` actions whose ``resource.extension`` has ``url ==
  "http://fhir.org/argonaut/Extension/pama-rating"``; it shows
  ``valueCodeableConcept.coding[0].code`` of the first such action;
- a suggestion click applies only ``update`` actions; for each it reads the pama-rating
  extension (``[0]`` of the list: it throws when there is none), ``resource.code.coding[0]``
  as the new study and ``resource.reasonCode.map(c => c.coding[0])`` (it throws when
  ``reasonCode`` is absent), then calls the service again with that order.
"""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES, SHARED, load_json, make_app

PAMA_RATING = "http://fhir.org/argonaut/Extension/pama-rating"
PAMA_CODES = {"appropriate", "not-appropriate", "no-criteria-apply"}
CPT = "http://www.ama-assn.org/go/cpt"
SEED = load_json(FIXTURES / "requests" / "seed-001-v3-ct-with-contrast.json")


def sandbox_pama_request(study: dict | None, reasons: list[dict]) -> dict:
    """The order-select call of the sandbox's PAMA screen for the seed-001 patient, with the
    prefetch it fetched from the fixture FHIR server."""
    patient = SEED["context"]["patientId"]
    order = {"resourceType": "ServiceRequest", "id": "example-request-id", "status": "draft", "intent": "plan",
             "code": {"coding": [study or {}], **({"text": study["display"]} if study else {})},
             "subject": {"reference": f"Patient/{patient}"},
             "reasonCode": [{"coding": [r], "text": r["display"]} for r in reasons]}
    return {"hookInstance": "3ac2789d-7147-4c9c-bc41-cf382a123bc4", "hook": "order-select",
            "fhirServer": "http://127.0.0.1:8081/fhir",
            "context": {"patientId": patient, "userId": "Practitioner/COREPRACTITIONER1",
                        "selections": ["ServiceRequest/example-request-id"],
                        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": order}]}},
            "prefetch": SEED["prefetch"]}


@pytest.fixture(scope="module")
def client():
    return make_app().test_client()


def call(client, body: dict) -> dict:
    resp = client.post("/cds-services/vcf-order-select", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def sandbox_rating(response: dict) -> str | None:
    """The rating the sandbox's PAMA screen shows for a response (None: it shows none)."""
    for action in (response.get("extension") or {}).get("systemActions") or ():
        if action["type"] != "update":
            continue
        for ext in action["resource"].get("extension") or ():
            if ext.get("url") == PAMA_RATING:
                return ext["valueCodeableConcept"]["coding"][0]["code"]
    return None


def test_the_screen_before_a_study_is_picked_gets_an_answer(client):
    assert call(client, sandbox_pama_request(None, []))["cards"] == []


def test_the_rating_is_where_the_sandbox_reads_it(client):
    study = {"code": "72129", "display": "Computed tomography, thoracic spine; with contrast material", "system": CPT}
    backache = {"code": "161891005", "display": "Backache (finding)", "system": "http://snomed.info/sct"}
    response = call(client, sandbox_pama_request(study, [backache]))
    assert sandbox_rating(response) == "not-appropriate"
    assert response["cards"] and response["cards"][0]["indicator"] == "warning"
    without = {"code": "72128", "display": "Computed tomography, thoracic spine; without contrast material", "system": CPT}
    assert sandbox_rating(call(client, sandbox_pama_request(without, [backache]))) == "appropriate"


def update_actions_the_sandbox_applies(suggestion: dict) -> list[dict]:
    """The resources a suggestion click hands to the sandbox's order, checked as it reads them."""
    resources = []
    for action in suggestion["actions"]:
        if action["type"] != "update":
            continue
        resource = action["resource"]
        ratings = [e for e in resource.get("extension") or () if e.get("url") == PAMA_RATING]
        assert ratings, "no pama-rating extension: the sandbox throws"
        assert ratings[0]["valueCodeableConcept"]["coding"][0]["code"] in PAMA_CODES
        assert resource["code"]["coding"][0]["code"]
        assert isinstance(resource["reasonCode"], list), "no reasonCode: the sandbox throws"
        assert all(c["coding"][0] for c in resource["reasonCode"])
        resources.append(resource)
    return resources


def test_every_update_suggestion_in_the_expected_responses_is_one_the_sandbox_can_apply():
    for path in sorted((FIXTURES / "expected").glob("*.json")):
        body = load_json(path)["body"]
        for card in body.get("cards") or ():
            for suggestion in card.get("suggestions") or ():
                update_actions_the_sandbox_applies(suggestion)


BACKACHE = {"code": "161891005", "display": "Backache (finding)", "system": "http://snomed.info/sct"}
CT_THORACIC_WITH = {"code": "72129", "display": "Computed tomography, thoracic spine; with contrast material",
                    "system": CPT}


def test_clicking_a_suggestion_swaps_the_order_and_the_new_rating_shows(client):
    """The sandbox's loop: the not-appropriate order's recommended suggestion replaces the
    order's study and reasons with the update's; called again, the service rates it appropriate."""
    first = call(client, sandbox_pama_request(CT_THORACIC_WITH, [BACKACHE]))
    (card,) = first["cards"]
    suggestion = card["suggestions"][0]
    assert suggestion.get("isRecommended") is True
    assert [a["type"] for a in suggestion["actions"]] == ["update"]
    (resource,) = update_actions_the_sandbox_applies(suggestion)
    assert (resource["id"], resource["status"], resource["intent"]) == ("example-request-id", "draft", "plan")
    new_study = resource["code"]["coding"][0]
    reasons = [c["coding"][0] for c in resource["reasonCode"]]
    assert new_study["code"] == "72128" and reasons == [BACKACHE]  # CT thoracic WITHOUT contrast
    rating = next(e for e in resource["extension"] if e["url"] == PAMA_RATING)
    assert rating["valueCodeableConcept"]["coding"][0]["code"] == "appropriate"
    again = call(client, sandbox_pama_request(new_study, reasons))
    assert sandbox_rating(again) == "appropriate" and again["cards"] == []


def test_the_update_has_the_argonaut_pama_suggestion_shape(client):
    """Argonaut PAMA connectathon scenario 2: the suggestion updates the draft order (same id,
    status, intent, subject, reasons) with the new code and the rating extensions, pama-rating
    first, then qcdsm-consulted and consult-id."""
    scenario = load_json(SHARED / "interop" / "argonaut-pama"
                         / "scenario-02-suggestion-response.json")
    (theirs,) = scenario["cards"][0]["suggestions"][0]["actions"]
    request = sandbox_pama_request(CT_THORACIC_WITH, [BACKACHE])
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    (ours,) = call(client, request)["cards"][0]["suggestions"][0]["actions"]
    assert ours["type"] == theirs["type"] == "update"
    assert set(ours["resource"]) == set(theirs["resource"])
    assert {k: v for k, v in ours["resource"].items() if k not in ("code", "extension")} == \
        {k: v for k, v in draft.items() if k != "code"}
    urls = [e["url"] for e in ours["resource"]["extension"]]
    assert urls[:3] == [e["url"] for e in theirs["resource"]["extension"]]
    assert urls[3:] == ["http://fhir.org/argonaut/Extension/pama-rating-auc-applied"]


def test_an_order_without_reasons_gets_an_empty_reason_list(client):
    (card,) = call(client, sandbox_pama_request(CT_THORACIC_WITH, []))["cards"]
    for suggestion in card["suggestions"]:
        for resource in update_actions_the_sandbox_applies(suggestion):
            assert resource["reasonCode"] == []


def test_delete_and_create_only_where_an_update_cannot_say_it():
    """Across the reviewed responses, a suggestion that deletes the selected order never
    creates a coded study in its place: that is an update (the uncoded IR referral is the exception)."""
    for path in sorted((FIXTURES / "expected").glob("*.json")):
        for card in load_json(path)["body"].get("cards") or ():
            for suggestion in card.get("suggestions") or ():
                types = [a["type"] for a in suggestion["actions"]]
                if "delete" in types:
                    created = [a["resource"]["code"] for a in suggestion["actions"] if a["type"] == "create"]
                    assert all("coding" not in code for code in created), (path.name, suggestion["label"])
