"""Hardening a browser client or an operator would notice: CORS, request limits, the OpenAPI
document, and logs that hold no patient data and no token."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from client_tokens import BASE, SANDBOX_JKU, bearer, sandbox_file_app, sandbox_token
from conftest import FIXTURES, load_json, make_app
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from cds_service.protocol.errors import ISSUE_CODES, OperationOutcome
from cds_service.protocol.models import SUMMARY_MAX_CHARS, CdsDiscovery, CdsResponse, wire_json_schemas

SERVICE = "/cds-services/vcf-order-select"
SANDBOX_ORIGIN = "https://sandbox.cds-hooks.org"
CASES = load_json(FIXTURES / "cases.json")
REQUEST_FILES = sorted((FIXTURES / "requests").glob("*.json"))


def token_for(path: str) -> dict[str, str]:
    return bearer(sandbox_token(BASE + path, jku=SANDBOX_JKU))


# ------------------------------------------------------------------------------ CORS


@pytest.fixture()
def cors_client():
    return sandbox_file_app(CORS_ORIGINS=f"{SANDBOX_ORIGIN}, http://localhost:8080").test_client()


def test_preflight_from_the_sandbox_is_allowed_without_a_token(cors_client):
    resp = cors_client.options(SERVICE, headers={
        "Origin": SANDBOX_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == SANDBOX_ORIGIN
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "Origin" in resp.headers.get("Vary", "")


def test_cors_headers_on_get_post_and_errors(cors_client):
    origin = {"Origin": SANDBOX_ORIGIN}
    body = load_json(FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json")
    answers = [
        cors_client.get("/cds-services", headers={**origin, **token_for("/cds-services")}),
        cors_client.post(SERVICE, json=body, headers={**origin, **token_for(SERVICE)}),
        cors_client.post(SERVICE, json={"hook": "x"}, headers={**origin, **token_for(SERVICE)}),
        cors_client.post(SERVICE, json=body, headers=origin),  # no token: the browser must still read the 401
    ]
    assert [r.status_code for r in answers] == [200, 200, 400, 401]
    assert all(r.headers["Access-Control-Allow-Origin"] == SANDBOX_ORIGIN for r in answers)


def test_a_replay_found_after_the_view_still_gets_cors_headers():
    # Two workers on one database. A call to an unknown service has no audit record: its jti
    # is written after the view, and the other worker's 401 for the same token must still be
    # readable by the browser.
    first, second = (sandbox_file_app(CORS_ORIGINS=SANDBOX_ORIGIN).test_client() for _ in range(2))
    path = "/cds-services/unknown-service"
    headers = {"Origin": SANDBOX_ORIGIN, **token_for(path)}
    assert first.post(path, json={}, headers=headers).status_code == 404
    resp = second.post(path, json={}, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["Access-Control-Allow-Origin"] == SANDBOX_ORIGIN


def test_other_origins_get_no_cors_headers(cors_client):
    resp = cors_client.options(SERVICE, headers={"Origin": "https://evil.example",
                                                 "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_no_cors_headers_unless_origins_are_configured():
    client = make_app().test_client()
    for resp in (client.get("/cds-services", headers={"Origin": SANDBOX_ORIGIN}),
                 client.options(SERVICE, headers={"Origin": SANDBOX_ORIGIN, "Access-Control-Request-Method": "POST"})):
        assert not any(h.startswith("Access-Control-") for h in resp.headers.keys())  # noqa: SIM118 - Headers iterates (name, value) pairs


# ---------------------------------------------------------------------------- limits


def _post(client, path: Path):
    return client.post(SERVICE, data=path.read_bytes(), content_type="application/json")


def _outcome(resp, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)[:300]
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def test_too_many_draft_orders_is_413():
    path = FIXTURES / "requests" / "multi-order.json"
    assert _post(make_app(MAX_DRAFT_ORDERS=2).test_client(), path).status_code == 200
    issue = _outcome(_post(make_app(MAX_DRAFT_ORDERS=1).test_client(), path), 413)
    assert issue["code"] == "too-long"
    assert "draftOrders" in issue["diagnostics"] and "at most 1" in issue["diagnostics"]


def test_too_many_prefetch_entries_is_413():
    path = FIXTURES / "requests" / "synthea-keira-huel.json"  # 16 Conditions + 20 Procedures + 10 MedicationRequests
    assert _post(make_app(MAX_PREFETCH_ENTRIES=46).test_client(), path).status_code == 200
    issue = _outcome(_post(make_app(MAX_PREFETCH_ENTRIES=45).test_client(), path), 413)
    assert "prefetch holds 46 Bundle entries" in issue["diagnostics"]


def test_limits_hold_before_the_schema_is_checked():
    """A body that is wrong everywhere else still gets the limit's answer, not a slow validation."""
    junk = {"context": {"draftOrders": {"entry": [7] * 100}}}
    resp = make_app().test_client().post(SERVICE, json=junk)
    assert _outcome(resp, 413)["expression"] == ["context.draftOrders.entry"]


# ------------------------------------------------------------------- OpenAPI document


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    resp = make_app().test_client().get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return resp.get_json()


def test_openapi_document_is_valid_openapi_31(openapi):
    validate_openapi(openapi)
    assert openapi["openapi"] == "3.1.0"


def _served(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route the app serves (Flask's automatic HEAD/OPTIONS
    and its static files aside)."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        found |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return found


@pytest.mark.parametrize("metrics", [True, False], ids=["metrics-on", "metrics-off"])
def test_openapi_describes_every_endpoint_the_app_serves(metrics):
    app = make_app(METRICS_ENABLED=metrics)
    document = app.test_client().get("/openapi.json").get_json()
    validate_openapi(document)
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == _served(app)
    assert {"/explain", "/healthz", "/readyz"} <= set(document["paths"])
    assert ("/metrics" in document["paths"]) is metrics


def test_openapi_public_endpoints_need_no_token(openapi):
    public = {path for path, item in openapi["paths"].items() if item["get" if "get" in item else "post"].get("security") == []}
    assert public == {"/openapi.json", "/explain", "/healthz", "/readyz", "/metrics"}


def test_openapi_response_schemas_are_the_wire_models(openapi):
    """One definition of every rule: the components are generated from the models the pipeline
    checks each response with, so the summary limit is the spec's "<140 characters"."""
    schemas = openapi["components"]["schemas"]
    assert schemas["Card"]["properties"]["summary"]["maxLength"] == SUMMARY_MAX_CHARS == 139
    assert schemas == {**schemas, **wire_json_schemas(CdsDiscovery, CdsResponse, OperationOutcome,
                                                      ref_template="#/components/schemas/{model}")}
    assert schemas["CdsResponse"]["required"] == ["cards"]
    assert schemas["OutcomeIssue"]["properties"]["code"]["enum"] == sorted(ISSUE_CODES)


def test_openapi_lists_the_discovered_services(openapi):
    discovered = [s["id"] for s in make_app().test_client().get("/cds-services").get_json()["services"]]
    param = openapi["paths"]["/cds-services/{service_id}"]["post"]["parameters"][0]
    assert param["schema"]["enum"] == discovered


def _schema(openapi: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": openapi["components"]})


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_openapi_describes_every_fixture_call(openapi, case):
    """Requests the service answers match the request schema; every answer matches its response."""
    op = openapi["paths"]["/cds-services/{service_id}"]["post"]
    body = load_json(FIXTURES / case["file"])
    resp = make_app().test_client().post(SERVICE, json=body)
    documented = op["responses"][str(resp.status_code)]["content"]["application/json"]["schema"]
    assert list(_schema(openapi, documented).iter_errors(resp.get_json())) == []
    if resp.status_code == 200:
        request_schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert list(_schema(openapi, request_schema).iter_errors(body)) == []


# ---------------------------------------------------------------------------- logging


def _sensitive_strings(body: dict[str, Any]) -> set[str]:
    """What identifies the patient in a request: id, names, identifiers, birth date, contact details."""
    found = {body["context"]["patientId"]}
    patient = (body.get("prefetch") or {}).get("patient")
    if isinstance(patient, dict) and patient.get("resourceType") == "Patient":
        for name in patient.get("name", []):
            found.update(name.get("given", []))
            found.update([name["family"]] if "family" in name else [])
        found.update(i["value"] for i in patient.get("identifier", []) if "value" in i)
        found.update(t["value"] for t in patient.get("telecom", []) if "value" in t)
        for address in patient.get("address", []):
            found.update(address.get("line", []))
        found.update([patient["birthDate"]] if "birthDate" in patient else [])
    return {s for s in found if isinstance(s, str) and len(s) >= 3}


def test_no_patient_data_token_or_body_in_any_log_line(caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    client = sandbox_file_app(CORS_ORIGINS=SANDBOX_ORIGIN).test_client()
    secrets: set[str] = set()
    statuses = set()
    for path in REQUEST_FILES:
        text = path.read_text(encoding="utf-8")
        body = json.loads(text)
        token = sandbox_token(BASE + SERVICE, jku=SANDBOX_JKU)
        replayed = sandbox_token(BASE + SERVICE, jku=SANDBOX_JKU)
        client.post(SERVICE, json=body, headers=bearer(replayed))
        for headers in ({**bearer(token), "Origin": SANDBOX_ORIGIN}, bearer(replayed), bearer(token[:-4] + "AAAA")):
            resp = client.post(SERVICE, data=text, content_type="application/json", headers=headers)
            statuses.add(resp.status_code)
        secrets |= _sensitive_strings(body) | {token, replayed, token.split(".")[2], text[:80]}
    assert {200, 400, 401, 412} <= statuses  # answered, refused and rejected calls were all logged
    assert caplog.records
    leaked = sorted(s for s in secrets if s in caplog.text)
    assert leaked == []
