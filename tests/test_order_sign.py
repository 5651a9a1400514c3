"""The order-sign service (CDS Hooks library, order-sign hook): same engine, every draft order rated.

Each order-select fixture is sent as the EHR would send it at signing: hook ``order-sign``,
no ``selections``, the same draft orders and prefetch.
"""

from __future__ import annotations

import copy

import pytest
from conftest import FIXTURES, load_json

from cds_service.protocol.models import check_response

SIGN_URL = "/cds-services/vcf-order-sign"
SELECT_URL = "/cds-services/vcf-order-select"
CASES = [c for c in load_json(FIXTURES / "cases.json") if c["expect"]["status"] == 200]


def as_order_sign(body):
    body = copy.deepcopy(body)
    body["hook"] = "order-sign"
    body["context"].pop("selections")
    return body


def ratings(payload):
    """resource id -> PAMA rating code of each update systemAction."""
    out = {}
    for action in payload.get("systemActions", []):
        ext = {e["url"].rsplit("/", 1)[-1]: e for e in action["resource"].get("extension", [])}
        out[action["resource"]["id"]] = ext["pama-rating"]["valueCodeableConcept"]["coding"][0]["code"]
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_order_sign_rates_every_draft_order_as_order_select_rates_the_selected(case, client):
    body = load_json(FIXTURES / case["file"])
    signed = client.post(SIGN_URL, json=as_order_sign(body))
    assert signed.status_code == 200, signed.get_data(as_text=True)
    assert check_response(signed.get_json()) == []
    sign_ratings = ratings(signed.get_json())
    # Every order the case expects a rating for, whether or not it was selected, gets it at signing.
    for ref, pama in case["expect"]["ratings"].items():
        if pama is not None:
            assert sign_ratings.get(ref.split("/", 1)[1]) == pama, ref
    selected = client.post(SELECT_URL, json=body).get_json()
    for resource_id, pama in ratings(selected).items():
        assert sign_ratings[resource_id] == pama


def test_order_sign_rates_the_order_order_select_left_unselected(client):
    body = load_json(FIXTURES / "requests/multi-order-one-selected.json")
    assert ratings(client.post(SELECT_URL, json=body).get_json()) == {"sr-6ab1ee43-mri-wo": "appropriate"}
    signed = client.post(SIGN_URL, json=as_order_sign(body)).get_json()
    assert ratings(signed) == {"sr-6ab1ee43-mri-wo": "appropriate", "sr-6ab1ee43-mri-wwo": "not-appropriate"}
    warning = [c for c in signed["cards"] if c["indicator"] == "warning"]
    # 72148 is already among the draft orders: the advice is to drop 72158, not to add a second MRI.
    assert len(warning) == 1 and warning[0]["summary"].startswith("Drop MRI lumbar spine without and with contrast")


def test_order_sign_refuses_an_order_for_another_patient(client):
    body = as_order_sign(load_json(FIXTURES / "requests/multi-order.json"))
    body["context"]["draftOrders"]["entry"][1]["resource"]["subject"] = {"reference": "Patient/someone-else"}
    resp = client.post(SIGN_URL, json=body)
    assert resp.status_code == 400
    assert resp.get_json()["issue"][0]["expression"] == ["context.draftOrders.entry[1].resource"]


def test_each_service_answers_only_its_own_hook(client):
    body = load_json(FIXTURES / "requests/v1-new-vcf-mri-with-contrast.json")
    wrong = client.post(SIGN_URL, json=body)
    assert wrong.status_code == 400 and "answers 'order-sign'" in wrong.get_json()["issue"][0]["diagnostics"]
    wrong = client.post(SELECT_URL, json=as_order_sign(body))
    assert wrong.status_code == 400


def test_order_select_still_requires_selections(client):
    body = load_json(FIXTURES / "requests/v1-new-vcf-mri-with-contrast.json")
    body["context"].pop("selections")
    resp = client.post(SELECT_URL, json=body)
    assert resp.status_code == 400
    assert "selections" in resp.get_json()["issue"][0]["diagnostics"]
