"""Fetching what prefetch lacks from the EHR's FHIR server (CDS Hooks 2.0 §Prefetch Template).

A real HTTP server on loopback (pytest-httpserver) plays the EHR's FHIR server, serving the
fixtures' own FHIR resources and the Synthea records of ../shared/interop/synthea with search
and paging (fhir_fixtures/ehr_server.py).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections import Counter

import pytest
from conftest import FIXTURES, INTEROP, load_json, make_app
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Response

from cds_service.fhir.client import fill_template
from cds_service.fhir.policy import parse_allowlist
from cds_service.settings import SettingsError

CASES = [c for c in load_json(FIXTURES / "cases.json") if c["expect"]["status"] == 200]
SERVICE_URL = "/cds-services/vcf-order-select"
TOKEN = "eyJhbGciOiJub25lIn0.ehr-access-token-7f3a9c.sig"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def ehr_module():
    import sys

    sys.path.insert(0, str(FIXTURES))
    import ehr_server

    return ehr_server


EhrFhirServer = ehr_module().EhrFhirServer


def normalised(payload) -> str:
    """The response with its uuids (cards, suggestions) replaced by their order of appearance
    and its explanation link tokens (signed over a card uuid) by a placeholder."""
    text = re.sub(r"/explain\?token=[A-Za-z0-9_.-]+", "/explain?token=<token>", json.dumps(payload, sort_keys=True))
    seen: dict[str, str] = {}
    return UUID_RE.sub(lambda m: seen.setdefault(m.group(0), f"uuid-{len(seen)}"), text)


def without_prefetch(body, *, server_url, patient=None, keys=("patient", "conditions", "procedures")):
    body = copy.deepcopy(body)
    for key in keys:
        (body.get("prefetch") or {}).pop(key, None)
    body["fhirServer"] = server_url
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/Patient.read patient/Condition.read patient/Procedure.read",
                                 "subject": "vcf-cds-hooks"}
    if patient:
        body["fhirAuthorization"]["patient"] = patient
    return body


def served_from_prefetch(body) -> EhrFhirServer:
    server = EhrFhirServer(token=TOKEN, max_count=3)  # small pages: every case pages
    for value in (body.get("prefetch") or {}).values():
        if not value:
            continue
        if value.get("resourceType") == "Bundle":
            server.add_bundle(value)
        else:
            server.add([value])
    return server


@pytest.fixture(scope="module")
def threaded_httpserver():
    server = HTTPServer(threaded=True)  # the service sends a call's prefetch queries side by side
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture()
def httpserver(threaded_httpserver):
    """The loopback FHIR server, empty at the start of each test."""
    yield threaded_httpserver
    threaded_httpserver.clear()


@pytest.fixture()
def ehr(httpserver: HTTPServer):
    """Returns a function installing an EhrFhirServer on the loopback server; yields its base URL."""

    def install(server: EhrFhirServer) -> str:
        httpserver.expect_request(re.compile(r"^/fhir(/.*)?$")).respond_with_handler(server.handle)
        return httpserver.url_for("/fhir")

    return install


def fetching_app(httpserver: HTTPServer, **overrides):
    base = httpserver.url_for("/fhir")
    # A roomy budget: on a loaded CI machine the big Synthea pages can take a while; the
    # budget itself is tested with its own small value.
    return make_app(**{"FHIR_ALLOWLIST": base, "ALLOW_HTTP_LOOPBACK": True, "FHIR_BUDGET_SECONDS": 10, **overrides})


# The record-reading keys (radiology reports, medications, labs). A fixture that does not send
# one is posted with it null (the EHR ran the query and found nothing), so these tests fetch
# only the record's Conditions and Procedures; test_reading_keys_are_fetched... fetches them.
READING = ("radiologyReports", "medicationRequests", "medicationStatements", "coagulationLabs")


def post(app, body, *, fetch_reading=False):
    if not fetch_reading and isinstance(body.get("prefetch"), dict):
        body = {**body, "prefetch": {**dict.fromkeys(READING), **body["prefetch"]}}
    return app.test_client().post(SERVICE_URL, json=body)


# --------------------------------------------------------------------- same answer


# Every case whose prefetch holds conditions to serve (the others send null: nothing to fetch).
SERVABLE = [c for c in CASES if isinstance((load_json(FIXTURES / c["file"]).get("prefetch") or {}).get("conditions"), dict)]


@pytest.mark.parametrize("case", SERVABLE, ids=[c["id"] for c in SERVABLE])
def test_no_prefetch_gets_the_same_response_as_full_prefetch(case, httpserver, ehr):
    body = load_json(FIXTURES / case["file"])
    app = fetching_app(httpserver)
    expected = post(app, body)
    server = served_from_prefetch(body)
    url = ehr(server)
    got = post(app, without_prefetch(body, server_url=url, patient=body["context"]["patientId"]))
    assert got.status_code == expected.status_code == 200
    assert normalised(got.get_json()) == normalised(expected.get_json())
    assert server.seen, "the FHIR server was not asked"
    assert all(s.authorization == f"Bearer {TOKEN}" for s in server.seen)
    patient = body["context"]["patientId"]
    # The service's prefetch templates (discovery): the Patient resource is never asked for.
    assert {s.path for s in server.seen} == {"/fhir/Condition", "/fhir/Procedure"}
    assert all(s.args.get("patient") == patient for s in server.seen)


def test_reading_keys_are_fetched_with_the_services_own_queries(httpserver, ehr):
    """Seed 003 with its MRI report, nothing prefetched: the reports, medications and labs
    are fetched with the look-back from the order date, and the answer is the same (V6)."""
    body = load_json(FIXTURES / "requests/reading-inr-2-8-kyphoplasty.json")
    server = served_from_prefetch(body)
    url = ehr(server)
    bare = without_prefetch(body, server_url=url, keys=("patient", "conditions", "procedures", *READING))
    got = post(fetching_app(httpserver), bare, fetch_reading=True)
    assert got.status_code == 200
    assert normalised(got.get_json()) == normalised(post(fetching_app(httpserver), body).get_json())
    seen = {s.path: s.args for s in server.seen}
    assert {"/fhir/DiagnosticReport", "/fhir/MedicationRequest", "/fhir/MedicationStatement",
            "/fhir/Observation"} <= set(seen)
    assert seen["/fhir/DiagnosticReport"]["date"] == "ge2025-11-16"  # a year before the order
    assert seen["/fhir/DiagnosticReport"]["category"] == "http://loinc.org|LP29684-5"
    assert seen["/fhir/Observation"]["date"] == "ge2026-10-17"  # 30 days
    assert "V6" in json.dumps(got.get_json())


def test_a_failed_reading_fetch_is_answered_without_it(httpserver, ehr):
    body = load_json(FIXTURES / "requests/reading-seed-003-mri-report-v6.json")
    server = served_from_prefetch(body)
    httpserver.expect_request("/fhir/DiagnosticReport").respond_with_data("down", status=500)
    url = ehr(server)
    got = post(fetching_app(httpserver), without_prefetch(body, server_url=url, keys=READING), fetch_reading=True)
    assert got.status_code == 200
    answer = got.get_json()
    # Only the reports failed: medications and labs were fetched (none on the server).
    assert "Not available to this service, so not checked: radiology reports." in json.dumps(answer)
    assert "systemActions" not in answer  # without the MRI report: no variant 6, no rating
    assert {s.path for s in server.seen} >= {"/fhir/MedicationRequest", "/fhir/Observation"}


SYNTHEA = [c for c in CASES if c["id"].startswith("synthea-")]


@pytest.mark.parametrize("case", SYNTHEA, ids=[c["id"] for c in SYNTHEA])
def test_synthea_record_served_as_a_fhir_server(case, httpserver, ehr):
    body = load_json(FIXTURES / case["file"])
    patient = body["context"]["patientId"]
    record = next(r for r in map(load_json, sorted((INTEROP / "synthea").glob("*.json")))
                  if any(e["resource"]["resourceType"] == "Patient" and e["resource"]["id"] == patient
                         for e in r["entry"]))
    server = EhrFhirServer(token=TOKEN).add_bundle(record)  # every resource of the record, 50 a page
    app = fetching_app(httpserver)
    got = post(app, without_prefetch(body, server_url=ehr(server)))
    assert got.status_code == 200
    assert normalised(got.get_json()) == normalised(post(app, body).get_json())
    conditions = sum(1 for e in record["entry"] if e["resource"]["resourceType"] == "Condition")
    pages = sum(1 for s in server.seen if s.path == "/fhir/Condition")
    assert pages == max(1, -(-conditions // 50))


def test_open_fhir_server_is_called_without_authorization(httpserver, ehr):
    body = load_json(FIXTURES / "requests/v2-malignancy-mri.json")
    server = served_from_prefetch(body)
    server.token = None
    open_body = without_prefetch(body, server_url=ehr(server))
    del open_body["fhirAuthorization"]
    got = post(fetching_app(httpserver), open_body)
    assert got.status_code == 200
    assert normalised(got.get_json()) == normalised(post(fetching_app(httpserver), body).get_json())
    assert [s.authorization for s in server.seen] == [None] * len(server.seen)


def test_only_missing_keys_are_fetched_and_an_operation_outcome_counts_as_missing(httpserver, ehr):
    body = load_json(FIXTURES / "requests/seed-001-v3-ct-with-contrast.json")
    server = served_from_prefetch(body)
    url = ehr(server)
    partial = without_prefetch(body, server_url=url, keys=("procedures",))
    partial["prefetch"]["patient"] = {"resourceType": "OperationOutcome",
                                      "issue": [{"severity": "error", "code": "forbidden"}]}
    got = post(fetching_app(httpserver), partial)
    assert got.status_code == 200
    # 'patient' is no prefetch key of this service: an OperationOutcome there is not fetched.
    assert {s.path for s in server.seen} == {"/fhir/Procedure"}
    assert normalised(got.get_json()) == normalised(post(fetching_app(httpserver), body).get_json())


def test_null_prefetch_means_no_data_and_is_not_fetched(httpserver, ehr):
    body = load_json(FIXTURES / "requests/seed-001-v3-ct-with-contrast.json")
    server = served_from_prefetch(body)
    nulls = without_prefetch(body, server_url=ehr(server), keys=())
    nulls["prefetch"]["procedures"] = None
    got = post(fetching_app(httpserver), nulls)
    assert got.status_code == 200
    assert server.seen == []
    # Without the prior kyphoplasty on record the scenario is no longer ACR variant 3.
    assert normalised(got.get_json()) != normalised(post(fetching_app(httpserver), body).get_json())


# --------------------------------------------------------------------- failures: 412


def v1_body(url):
    body = load_json(FIXTURES / "requests/v1-new-vcf-mri-with-contrast.json")
    return without_prefetch(body, server_url=url)


def outcome_of(resp, status=412):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert TOKEN not in resp.get_data(as_text=True)
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    return outcome["issue"][0]


def test_fhir_server_401_is_a_412_naming_the_query(httpserver, ehr):
    server = EhrFhirServer(token="another-token")
    issue = outcome_of(post(fetching_app(httpserver), v1_body(ehr(server))))
    assert "prefetch 'conditions' (Condition?patient={{context.patientId}})" in issue["diagnostics"]
    assert "HTTP 401" in issue["diagnostics"]
    assert len(server.seen) == 2, "each of the two queries once: a 4xx is never retried"


def test_search_not_found_is_a_412(httpserver):
    httpserver.expect_request(re.compile("^/fhir/")).respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]},
        status=404, content_type="application/fhir+json")
    issue = outcome_of(post(fetching_app(httpserver), v1_body(httpserver.url_for("/fhir"))))
    assert "HTTP 404" in issue["diagnostics"] and "'conditions'" in issue["diagnostics"]


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_is_a_412_after_one_retry_for_gateway_errors(status, httpserver):
    httpserver.expect_request(re.compile("^/fhir/")).respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]},
        status=status, content_type="application/fhir+json")
    issue = outcome_of(post(fetching_app(httpserver), v1_body(httpserver.url_for("/fhir"))))
    assert f"HTTP {status}" in issue["diagnostics"]
    # The two prefetch queries run side by side; each is tried twice only on a gateway error.
    per_query = Counter(request.path for request, _ in httpserver.log)
    assert per_query == {path: 2 if status == 503 else 1 for path in ("/fhir/Condition", "/fhir/Procedure")}


def test_one_503_then_success_is_retried_within_the_budget(httpserver, ehr):
    body = load_json(FIXTURES / "requests/v1-new-vcf-mri-with-contrast.json")
    server = served_from_prefetch(body)
    httpserver.expect_oneshot_request("/fhir/Condition").respond_with_data("busy", status=503)
    url = ehr(server)
    got = post(fetching_app(httpserver), without_prefetch(body, server_url=url))
    assert got.status_code == 200
    assert normalised(got.get_json()) == normalised(post(fetching_app(httpserver), body).get_json())


def test_slow_answer_past_the_budget_is_a_412_timeout(httpserver):
    def slow(request):
        time.sleep(0.6)
        return Response("{}", content_type="application/fhir+json")

    httpserver.expect_request(re.compile("^/fhir/")).respond_with_handler(slow)
    started = time.monotonic()
    issue = outcome_of(post(fetching_app(httpserver, FHIR_BUDGET_SECONDS=0.2), v1_body(httpserver.url_for("/fhir"))))
    assert time.monotonic() - started < 0.55, "the budget was not kept"
    assert issue["code"] == "timeout"


def test_unreachable_server_is_a_412(httpserver):
    closed = HTTPServer(host="localhost", port=0)
    closed.start()
    url = closed.url_for("/fhir")
    closed.stop()
    app = make_app(FHIR_ALLOWLIST=url, ALLOW_HTTP_LOOPBACK=True)
    issue = outcome_of(post(app, v1_body(url)))
    assert "could not be reached" in issue["diagnostics"]


def test_redirect_to_another_host_is_not_followed(httpserver):
    other = HTTPServer(host="127.0.0.1", port=0)
    other.start()
    try:
        other.expect_request(re.compile(".*")).respond_with_data("should never be asked")
        httpserver.expect_request(re.compile("^/fhir/")).respond_with_data(
            "", status=302, headers={"Location": other.url_for("/fhir/Patient/elsewhere")})
        issue = outcome_of(post(fetching_app(httpserver), v1_body(httpserver.url_for("/fhir"))))
        assert "redirected" in issue["diagnostics"]
        assert other.log == []
    finally:
        other.clear()
        other.stop()


def test_redirect_within_the_allowlisted_server_is_followed(httpserver, ehr):
    body = load_json(FIXTURES / "requests/v1-new-vcf-mri-with-contrast.json")
    server = served_from_prefetch(body)
    patient = body["context"]["patientId"]
    httpserver.expect_request("/fhir/Procedure").respond_with_data(
        "", status=301, headers={"Location": f"/fhir/Procedure/?patient={patient}"})
    url = ehr(server)
    got = post(fetching_app(httpserver), without_prefetch(body, server_url=url))
    assert got.status_code == 200
    assert "/fhir/Procedure/" in {seen.path for seen in server.seen}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_huge_answer_is_cut_off_at_the_size_cap(chunked, httpserver):
    bundle = {"resourceType": "Bundle", "type": "searchset",
              "entry": [{"resource": {"resourceType": "Condition", "id": f"c{i}", "note": [{"text": "x" * 1000}]}}
                        for i in range(200)]}
    data = json.dumps(bundle).encode()

    def huge(request):
        if chunked:  # a generator body goes out chunked, without Content-Length
            return Response((data[i:i + 4096] for i in range(0, len(data), 4096)), content_type="application/fhir+json")
        return Response(data, content_type="application/fhir+json")

    httpserver.expect_request(re.compile("^/fhir/")).respond_with_handler(huge)
    issue = outcome_of(post(fetching_app(httpserver, FHIR_MAX_RESPONSE_BYTES=65536), v1_body(httpserver.url_for("/fhir"))))
    assert "larger than 65536 bytes" in issue["diagnostics"]


@pytest.mark.parametrize("answer, content_type, expected", [
    ("<html><body>Login</body></html>", "text/html", "not FHIR JSON"),
    ("{not json", "application/fhir+json", "not valid JSON"),
    ('{"hello": "world"}', "application/json", "no resourceType"),
    ('{"resourceType": "Observation", "id": "x"}', "application/fhir+json", "not a search Bundle"),
], ids=["html", "broken-json", "not-fhir", "wrong-type"])
def test_answers_that_are_not_fhir_are_a_412(answer, content_type, expected, httpserver):
    httpserver.expect_request(re.compile("^/fhir/")).respond_with_data(answer, content_type=content_type)
    issue = outcome_of(post(fetching_app(httpserver), v1_body(httpserver.url_for("/fhir"))))
    assert expected in issue["diagnostics"]


def test_next_link_to_another_server_is_not_followed(httpserver, ehr):
    body = load_json(FIXTURES / "requests/v1-new-vcf-mri-with-contrast.json")
    patient = body["context"]["patientId"]
    httpserver.expect_request("/fhir/Condition").respond_with_json(
        {"resourceType": "Bundle", "type": "searchset", "entry": [],
         "link": [{"relation": "next", "url": "http://169.254.169.254/latest/meta-data/"}]},
        content_type="application/fhir+json")
    url = ehr(served_from_prefetch(body))
    issue = outcome_of(post(fetching_app(httpserver), without_prefetch(body, server_url=url, patient=patient)))
    assert "next link points outside" in issue["diagnostics"]


def test_page_cap_is_a_412(httpserver, ehr):
    body = load_json(FIXTURES / "requests/seed-000-neuro-red-flags-mri.json")
    server = served_from_prefetch(body)  # 3 resources a page
    url = ehr(server)
    issue = outcome_of(post(fetching_app(httpserver, FHIR_MAX_PAGES=1), without_prefetch(body, server_url=url)))
    assert "more than 1 pages" in issue["diagnostics"] and "'conditions'" in issue["diagnostics"]


# --------------------------------------------------------------------- SSRF guard, 400


@pytest.mark.parametrize("fhir_server", [
    "http://localhost:1/fhir",            # another port
    "http://127.0.0.1:{port}/fhir",       # another host name
    "http://localhost:{port}/fhirx",      # not below the base path
    "https://localhost:{port}/fhir",      # another scheme
    "http://user@localhost:{port}/fhir",  # credentials in the URL
])
def test_fhir_server_off_the_allowlist_is_never_contacted(fhir_server, httpserver):
    httpserver.expect_request(re.compile(".*")).respond_with_data("should never be asked")
    url = fhir_server.format(port=httpserver.port)
    issue = outcome_of(post(fetching_app(httpserver), v1_body(url)))
    assert "allowlist" in issue["diagnostics"]
    assert httpserver.log == []


def test_without_an_allowlist_nothing_is_fetched(httpserver):
    httpserver.expect_request(re.compile(".*")).respond_with_data("should never be asked")
    issue = outcome_of(post(make_app(), v1_body(httpserver.url_for("/fhir"))))
    assert issue["expression"] == ["fhirServer"]
    assert httpserver.log == []


@pytest.mark.parametrize("allowlist, loopback", [
    ("http://ehr.example.org/fhir", True),    # http off loopback
    ("http://localhost:8080/fhir", False),    # http on loopback without the setting
    ("https://ehr.example.org/fhir?x=1", False),
    ("ftp://ehr.example.org/fhir", False),
    ("ehr.example.org/fhir", False),
])
def test_unsafe_allowlist_entries_stop_start_up(allowlist, loopback):
    with pytest.raises(SettingsError, match="FHIR_ALLOWLIST"):
        make_app(FHIR_ALLOWLIST=allowlist, ALLOW_HTTP_LOOPBACK=loopback)


def test_allowlist_matches_scheme_host_port_and_path_prefix():
    (base,) = parse_allowlist("https://EHR.example.org/fhir/r4/", allow_http_loopback=False)
    assert base.allows("https://ehr.example.org:443/fhir/r4")
    assert base.allows("https://ehr.example.org/fhir/r4/Condition?patient=1")
    assert not base.allows("https://ehr.example.org/fhir/r4x")
    assert not base.allows("https://ehr.example.org:8443/fhir/r4")
    assert not base.allows("https://ehr.example.org.evil.test/fhir/r4")


def test_authorization_for_another_patient_is_a_400(httpserver):
    body = load_json(FIXTURES / "requests/v1-new-vcf-mri-with-contrast.json")
    body = without_prefetch(body, server_url="https://ehr.example.org/fhir", keys=(), patient="someone-else")
    issue = outcome_of(post(make_app(), body), status=400)
    assert issue["expression"] == ["fhirAuthorization.patient"]


def test_missing_conditions_without_fhir_server_is_a_412():
    body = load_json(FIXTURES / "requests/negative-missing-conditions-prefetch.json")
    body.pop("fhirServer")
    issue = outcome_of(post(make_app(), body))
    assert "names no fhirServer" in issue["diagnostics"]


# --------------------------------------------------------------------- templates, logs


def test_template_tokens_are_filled_and_encoded():
    context = {"patientId": "123", "encounterId": "e/1&_include=*"}
    assert fill_template("Condition?patient={{context.patientId}}", context, None) == "Condition?patient=123"
    assert fill_template("Encounter/{{context.encounterId}}", context, None) == "Encounter/e%2F1%26_include%3D%2A"
    assert fill_template("Practitioner/{{userPractitionerId}}", context, "Practitioner/abc") == "Practitioner/abc"
    assert fill_template("PractitionerRole/{{userPractitionerRoleId}}", context, "Practitioner/abc") is None
    assert fill_template("Observation?patient={{context.nothing}}", context, None) is None


def test_token_and_patient_never_reach_the_logs(httpserver, ehr, caplog):
    body = load_json(FIXTURES / "requests/seed-001-v3-ct-with-contrast.json")
    patient = body["context"]["patientId"]
    server = EhrFhirServer(token="wrong")
    caplog.set_level(logging.INFO)
    bad = post(fetching_app(httpserver), without_prefetch(body, server_url=ehr(server)))
    httpserver.clear()
    good_server = served_from_prefetch(body)
    good = post(fetching_app(httpserver), without_prefetch(body, server_url=ehr(good_server)))
    assert (bad.status_code, good.status_code) == (412, 200)
    # The loopback FHIR server's own access log (werkzeug) is the EHR's, not ours.
    text = "\n".join(r.getMessage() for r in caplog.records if r.name != "werkzeug")
    assert "fetched prefetch conditions" in text and "failed" in text
    assert TOKEN not in text and patient not in text
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    post(fetching_app(httpserver), without_prefetch(body, server_url=httpserver.url_for("/fhir")))
    assert TOKEN not in "\n".join(r.getMessage() for r in caplog.records if r.name != "werkzeug")
