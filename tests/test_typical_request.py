"""The benchmark's typical request (fhir_fixtures/bench/typical-request.json): it is what the
issue says (Patient, 25 Conditions, 5 Procedures, 2 draft orders), valid FHIR R4B, rebuilt
identically by its script, answered sensibly, and answered the same when the service has to
fetch its prefetch from the EHR's FHIR server (the benchmark's no-prefetch scenario)."""

from __future__ import annotations

import re
import sys

from conftest import FIXTURES, load_json, make_app
from fhir.resources.R4B import get_fhir_model_class
from test_api import normalise_uuids, pama_codes, post

from cds_service.protocol.models import check_response

sys.path.insert(0, str(FIXTURES))
import build_typical_request
from ehr_server import without_prefetch

TYPICAL = FIXTURES / "bench" / "typical-request.json"


def test_typical_request_has_the_issue_shape_and_every_resource_is_valid_r4b():
    body = load_json(TYPICAL)
    prefetch = body["prefetch"]
    resources = [prefetch["patient"], *(e["resource"] for key in ("conditions", "procedures")
                                        for e in prefetch[key]["entry"]),
                 *(e["resource"] for e in body["context"]["draftOrders"]["entry"])]
    counts = {}
    for r in resources:
        get_fhir_model_class(r["resourceType"]).model_validate(r)  # raises when invalid
        counts[r["resourceType"]] = counts.get(r["resourceType"], 0) + 1
    assert counts == {"Patient": 1, "Condition": 25, "Procedure": 5, "ServiceRequest": 2}
    assert len(body["context"]["selections"]) == 2


def test_typical_request_is_rebuilt_identically_from_its_sources():
    assert build_typical_request.build() == load_json(TYPICAL)


def test_typical_request_rates_both_orders_under_v1(client):
    resp = post(client, load_json(TYPICAL))
    assert resp.status_code == 200
    payload = resp.get_json()
    assert check_response(payload) == []
    # V1: MRI without and with contrast (72158) Usually not appropriate, CT without (72131)
    # Usually appropriate; one warning card replacing the MRI; no resource skipped.
    assert pama_codes(payload) == ["appropriate", "not-appropriate"]
    assert [c["indicator"] for c in payload["cards"]] == ["warning"]
    assert payload["cards"][0]["source"]["topic"]["code"] == "V1"
    assert "vcf-cds-hooks" not in payload.get("extension", {})


def test_typical_request_without_prefetch_gets_the_same_answer_from_the_fhir_server(httpserver):
    typical = load_json(TYPICAL)
    base = httpserver.url_for("/fhir")
    body, ehr = without_prefetch(typical, fhir_server=base, token="bench-token")
    httpserver.expect_request(re.compile("/fhir/.*")).respond_with_handler(ehr.handle)
    client = make_app(FHIR_ALLOWLIST=base, ALLOW_HTTP_LOOPBACK=True).test_client()
    fetched = post(client, body)
    assert fetched.status_code == 200, fetched.get_data(as_text=True)
    pid = typical["context"]["patientId"]
    # The record, then the radiology reports, medications and labs (none on this server).
    assert sorted(s.path for s in ehr.seen) == ["/fhir/Condition", "/fhir/DiagnosticReport", "/fhir/MedicationRequest",
                                                "/fhir/MedicationStatement", "/fhir/Observation", "/fhir/Procedure"]
    assert all(s.args["patient"] == pid for s in ehr.seen)
    assert all(s.authorization == "Bearer bench-token" for s in ehr.seen)
    with_prefetch = post(make_app().test_client(), typical)
    assert normalise_uuids(fetched.get_json()) == normalise_uuids(with_prefetch.get_json())
