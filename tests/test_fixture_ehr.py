"""The fixture FHIR server (``make sandbox-ehr``) answers what the CDS Hooks sandbox asks.

The sandbox (github.com/cds-hooks/sandbox, src/retrieve-data-helpers/) reads ``{base}/metadata``
(and takes ``fhirVersion`` from it), lists patients with ``GET {base}/Patient`` (reading
``name[0].given`` and ``family``), reads ``Patient/{id}`` and ``Condition?patient={id}``, and
fills each prefetch template of a service, trying ``POST {base}/{Type}/_search`` (form
parameters) before ``GET``. All from another origin, so every answer needs CORS headers.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import FIXTURES, load_json
from werkzeug.test import Client

sys.path.insert(0, str(FIXTURES))
from ehr_server import fixture_server

ORIGIN = "http://127.0.0.1:8000"
PATIENT = "pt-9697fe64"  # seed-001-v3-ct-with-contrast


@pytest.fixture(scope="module")
def ehr() -> Client:
    return Client(fixture_server(cors_origin="*").wsgi)


def get(ehr: Client, path: str, **kwargs):
    resp = ehr.get(path, headers={"Origin": ORIGIN, "Accept": "application/json+fhir"}, **kwargs)
    return resp, json.loads(resp.get_data(as_text=True))


def test_metadata_is_an_r4_capability_statement(ehr):
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    resp, body = get(ehr, "/fhir/metadata")
    assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.0.1"
    served = {r["type"] for r in body["rest"][0]["resource"]}
    assert {"Patient", "Condition", "Procedure"} <= served


def test_patient_search_lists_every_fixture_patient_as_the_sandbox_reads_them(ehr):
    resp, bundle = get(ehr, "/fhir/Patient")
    assert resp.status_code == 200 and bundle["type"] == "searchset"
    ids = {e["resource"]["id"] for e in bundle["entry"]}
    expected = {load_json(FIXTURES / c["file"])["prefetch"]["patient"]["id"] for c in load_json(FIXTURES / "cases.json")
                if isinstance((load_json(FIXTURES / c["file"]).get("prefetch") or {}).get("patient"), dict)}
    assert ids == expected and PATIENT in ids
    for entry in bundle["entry"]:
        name = entry["resource"]["name"][0]
        assert name["given"] and name["family"]
    _, by_name = get(ehr, "/fhir/Patient", query_string={"name": "lindq"})
    assert PATIENT in {e["resource"]["id"] for e in by_name["entry"]}
    assert all(e["resource"]["name"][0]["family"] == "Lindqvist-Test" for e in by_name["entry"])
    _, by_id = get(ehr, "/fhir/Patient", query_string={"_id": PATIENT})
    assert [e["resource"]["id"] for e in by_id["entry"]] == [PATIENT]


def test_patient_read_and_unknown_patient(ehr):
    resp, patient = get(ehr, f"/fhir/Patient/{PATIENT}")
    assert resp.status_code == 200 and patient["id"] == PATIENT
    resp, outcome = get(ehr, "/fhir/Patient/nobody")
    assert resp.status_code == 404 and outcome["resourceType"] == "OperationOutcome"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_the_services_prefetch_templates_return_the_fixture_prefetch(ehr, knowledge):
    """Each discovery prefetch template, filled as the sandbox fills it, by POST _search and by GET."""
    request = load_json(FIXTURES / "requests" / "seed-001-v3-ct-with-contrast.json")
    templates = knowledge.services["vcf-order-select"].prefetch
    for key, template in templates.items():
        query = template.replace("{{context.patientId}}", PATIENT)
        # A key this fixture does not carry (no reports, medications or labs on record) is
        # an empty search: the sandbox then sends the service an empty Bundle.
        expected = request["prefetch"].get(key)
        if "?" not in query:
            _, resource = get(ehr, f"/fhir/{query}")
            assert resource == expected
            continue
        resource_type, params = query.split("?", 1)
        posted = ehr.post(f"/fhir/{resource_type}/_search", data=params, headers={"Origin": ORIGIN},
                          content_type="application/x-www-form-urlencoded")
        _, searched = get(ehr, f"/fhir/{query}")
        assert posted.status_code == 200 and posted.headers["Access-Control-Allow-Origin"] == "*"
        assert json.loads(posted.get_data(as_text=True))["entry"] == searched["entry"]
        want = sorted(e["resource"]["id"] for e in (expected or {}).get("entry") or ())
        assert sorted(e["resource"]["id"] for e in searched["entry"]) == want


def test_cors_preflight_and_a_read_only_server(ehr):
    pre = ehr.open("/fhir/Condition/_search", method="OPTIONS",
                   headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                            "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    refused = ehr.post("/fhir/Condition", json={"resourceType": "Condition"}, headers={"Origin": ORIGIN})
    assert refused.status_code == 405


def test_a_named_origin_is_echoed_and_no_cors_without_one():
    named = Client(fixture_server(cors_origin=ORIGIN).wsgi).get("/fhir/metadata", headers={"Origin": ORIGIN})
    assert named.headers["Access-Control-Allow-Origin"] == ORIGIN and named.headers["Vary"] == "Origin"
    plain = Client(fixture_server(cors_origin=None).wsgi).get("/fhir/metadata")
    assert "Access-Control-Allow-Origin" not in plain.headers
