"""HTTP API: what an EHR calling the service would notice (status, body shape, headers).

Thin on purpose: clinical content is tested elsewhere; here every request goes through the
Flask test client exactly as a CDS Client would send it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from conftest import FIXTURES, load_json, make_app

from cds_service.protocol.models import CdsDiscovery, check_response

SERVICE_URL = "/cds-services/vcf-order-select"
CASES = load_json(FIXTURES / "cases.json")
CASE_BY_ID = {c["id"]: c for c in CASES}
PAMA_RATING_URL = "http://fhir.org/argonaut/Extension/pama-rating"
SYNTHEA_FILES = sorted((FIXTURES / "requests").glob("synthea-*.json"))

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_VALUE_RE = re.compile(rf"(urn:uuid:)?{_UUID}")
# A card's "Why this advice?" link is signed over the card's uuid, so it is fresh per card too.
_EXPLAIN_LINK_RE = re.compile(r"https?://[^/]+/explain\?token=[A-Za-z0-9_.-]+")


# ------------------------------------------------------------------------------ helpers


def request_body(case_id: str) -> dict[str, Any]:
    return load_json(FIXTURES / CASE_BY_ID[case_id]["file"])


def post(client, body: Any, url: str = SERVICE_URL):
    return client.post(url, data=json.dumps(body), content_type="application/json")


def post_raw(client, data: str | bytes, url: str = SERVICE_URL):
    return client.post(url, data=data, content_type="application/json")


def assert_operation_outcome(resp, status: int | None = None) -> dict[str, Any]:
    """A non-200 answer as an EHR sees it: JSON OperationOutcome, no stack trace."""
    if status is not None:
        assert resp.status_code == status, resp.get_data(as_text=True)[:500]
    assert resp.status_code != 200
    assert resp.mimetype == "application/json"
    text = resp.get_data(as_text=True)
    assert "Traceback" not in text
    assert 'File "' not in text
    body = json.loads(text)
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error"
    assert isinstance(issue["code"], str) and issue["code"]
    assert isinstance(issue["diagnostics"], str) and issue["diagnostics"].strip()
    return body


def normalise_uuids(value: Any) -> Any:
    """Replace every uuid (or urn:uuid:...) string value and explanation link with a placeholder."""
    if isinstance(value, dict):
        return {k: normalise_uuids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_uuids(v) for v in value]
    if isinstance(value, str) and _UUID_VALUE_RE.fullmatch(value):
        return "<uuid>"
    if isinstance(value, str) and _EXPLAIN_LINK_RE.fullmatch(value):
        return "<explain link>"
    return value


def service_requests(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a["resource"] for a in actions
            if isinstance(a.get("resource"), dict) and a["resource"].get("resourceType") == "ServiceRequest"]


def pama_codes(payload: dict[str, Any]) -> list[str]:
    codes = []
    for sr in service_requests(payload.get("systemActions", [])):
        for ext in sr.get("extension", []):
            if ext.get("url") == PAMA_RATING_URL:
                codes += [c["code"] for c in ext["valueCodeableConcept"]["coding"]]
    return sorted(codes)


def card_digest(payload: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((c["indicator"], c["summary"]) for c in payload["cards"])


# ---------------------------------------------------------------------------- discovery


def test_discovery_lists_the_order_select_and_order_sign_services(client):
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    payload = resp.get_json()
    CdsDiscovery.model_validate(payload)
    services = payload["services"]
    assert [(s["id"], s["hook"]) for s in services] == [("vcf-order-select", "order-select"),
                                                       ("vcf-order-sign", "order-sign")]
    for svc in services:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", svc["id"])
        assert svc["title"].strip()
        assert svc["description"].strip()
        prefetch = svc["prefetch"]
        # Only what the decision reads: the patient's Conditions and Procedures, and the
        # radiology reports, medications and labs the record reading reads (none required).
        assert set(prefetch) == {"conditions", "procedures", "radiologyReports", "medicationRequests",
                                 "medicationStatements", "coagulationLabs"}
        assert svc["prefetch"]["radiologyReports"].startswith("DiagnosticReport?patient={{context.patientId}}")
        assert all(isinstance(v, str) and "{{context.patientId}}" in v for v in prefetch.values())


# ------------------------------------------------------------------ every fixture request


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_fixture_request_gets_expected_status(client, case):
    resp = post(client, load_json(FIXTURES / case["file"]))
    expected = case["expect"]["status"]
    assert resp.status_code == expected, resp.get_data(as_text=True)[:500]
    if expected != 200:
        assert_operation_outcome(resp)
        return
    assert resp.mimetype == "application/json"
    payload = resp.get_json()
    assert check_response(payload) == []
    assert "cards" in payload
    top = service_requests(payload.get("systemActions", []))
    if top:
        copied = service_requests(payload["extension"]["systemActions"])
        assert copied == top
    else:
        assert "systemActions" not in payload.get("extension", {})


@pytest.mark.parametrize("case_id", [c["id"] for c in CASES
                                     if c["expect"]["status"] == 200 and any(c["expect"]["ratings"].values())])
def test_argonaut_copy_can_be_switched_off(case_id):
    client = make_app(ARGONAUT_SYSTEM_ACTIONS=False).test_client()
    resp = post(client, request_body(case_id))
    assert resp.status_code == 200
    payload = resp.get_json()
    assert check_response(payload) == []
    assert service_requests(payload["systemActions"])
    assert "systemActions" not in payload.get("extension", {})


# ------------------------------------------------------------------------------- 400s


@pytest.mark.parametrize("data", ["{", "[]", json.dumps([{"hook": "order-select"}]), '{"hook": NaN}',
                                  '{"a": Infinity}', "", "\xff\xfe"],
                         ids=["truncated", "empty-array", "array", "nan", "infinity", "empty", "not-utf8"])
def test_malformed_json_is_400(client, data):
    data = data.encode("latin-1") if data == "\xff\xfe" else data
    assert_operation_outcome(post_raw(client, data), 400)


def test_nan_inside_valid_request_is_400(client):
    text = json.dumps(request_body("v1-new-vcf-mri-with-contrast"))
    text = text.replace('"hookInstance": ', '"x": NaN, "hookInstance": ', 1)
    assert_operation_outcome(post_raw(client, text), 400)


def test_wrong_hook_is_400(client):
    assert_operation_outcome(post(client, request_body("negative-wrong-hook")), 400)


def test_missing_context_is_400(client):
    body = request_body("v1-new-vcf-mri-with-contrast")
    del body["context"]
    assert_operation_outcome(post(client, body), 400)


def test_unresolvable_selection_is_400(client):
    assert_operation_outcome(post(client, request_body("negative-unresolvable-selection")), 400)


# ---------------------------------------------------------------------- 404, 405, 413, 412


def test_unknown_service_is_404(client):
    assert_operation_outcome(post(client, request_body("v1-new-vcf-mri-with-contrast"), "/cds-services/no-such-service"), 404)


def test_unknown_path_is_404(client):
    assert_operation_outcome(client.get("/nope"), 404)


@pytest.mark.parametrize("method,url", [("GET", SERVICE_URL), ("PUT", "/cds-services")])
def test_wrong_method_is_405_with_allow(client, method, url):
    resp = client.open(url, method=method)
    assert_operation_outcome(resp, 405)
    assert resp.headers.get("Allow")
    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert ("POST" if url == SERVICE_URL else "GET") in allowed


@pytest.mark.parametrize("path", SYNTHEA_FILES, ids=[p.stem for p in SYNTHEA_FILES])
def test_body_over_limit_is_413(path):
    client = make_app(MAX_BODY_BYTES=2048).test_client()
    data = path.read_bytes()
    assert len(data) > 2048
    assert_operation_outcome(post_raw(client, data), 413)


def test_argonaut_request_without_prefetch_is_412(client):
    data = (FIXTURES / "requests" / "argonaut-scenario-01-as-sent.json").read_bytes()
    body = assert_operation_outcome(post_raw(client, data), 412)
    assert body["issue"][0]["diagnostics"]


# ------------------------------------------------------------------ junk never gives 500


def _draft(body: dict[str, Any]) -> dict[str, Any]:
    return body["context"]["draftOrders"]["entry"][0]["resource"]


def _first_condition(body: dict[str, Any]) -> dict[str, Any]:
    return body["prefetch"]["conditions"]["entry"][0]


def _set_draft(field: str, value: Any):
    def mutate(body):
        _draft(body)[field] = value
    return mutate


DEEP = "__DEEP__"


def _nested(depth: int) -> str:
    """A placeholder swapped for ``depth`` nested lists in the sent text (json.dumps of
    the real thing would itself hit the recursion limit)."""
    return DEEP + str(depth)


def _nested_extensions(levels: int) -> list[dict[str, Any]]:
    """Valid FHIR: an extension nesting ``levels`` complex extensions (2 JSON levels each)."""
    ext: dict[str, Any] = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(levels):
        ext = {"url": "http://example.org/x", "extension": [ext]}
    return [ext]


def _set_condition_resource(value: Any):
    def mutate(body):
        _first_condition(body)["resource"] = value
    return mutate


JUNK = {
    "draft-code-int": _set_draft("code", 5),
    "draft-subject-list": _set_draft("subject", []),
    "draft-status-object": _set_draft("status", {"a": 1}),
    "draft-extension-string": _set_draft("extension", "x"),
    "draft-id-int": _set_draft("id", 7),
    "draft-resourceType-int": _set_draft("resourceType", 1),
    "draft-is-string": lambda b: b["context"]["draftOrders"]["entry"].__setitem__(0, {"resource": "x"}),
    "deep-list-unknown-field": lambda b: b.__setitem__("junk", _nested(3000)),
    "deep-list-150-unknown-field": lambda b: b.__setitem__("junk", _nested(150)),
    "deep-list-90-in-draft": lambda b: _draft(b).__setitem__("note", _nested(90)),
    "deep-list-90-in-condition": lambda b: _first_condition(b)["resource"].__setitem__("note", _nested(90)),
    "nested-extensions-40-in-draft": lambda b: _draft(b).__setitem__("extension", _nested_extensions(40)),
    "nested-extensions-60-in-draft": lambda b: _draft(b).__setitem__("extension", _nested_extensions(60)),
    "deep-list-in-draft": lambda b: _draft(b).__setitem__("note", _nested(3000)),
    "deep-list-in-condition": lambda b: _first_condition(b)["resource"].__setitem__("note", _nested(3000)),
    "condition-is-list": _set_condition_resource([1, 2]),
    "condition-is-string": _set_condition_resource("Condition"),
    "condition-entry-is-string": lambda b: b["prefetch"]["conditions"]["entry"].__setitem__(0, "x"),
    "conditions-is-string": lambda b: b["prefetch"].__setitem__("conditions", "abc"),
    "conditions-is-list": lambda b: b["prefetch"].__setitem__("conditions", [1]),
    "conditions-entry-not-list": lambda b: b["prefetch"]["conditions"].__setitem__("entry", {"a": 1}),
    "condition-code-int": lambda b: _first_condition(b)["resource"].__setitem__("code", 5),
    "condition-unknown-resource-type": lambda b: _first_condition(b)["resource"].__setitem__("resourceType", "Nope"),
    "condition-abstract-resource-type": lambda b: _first_condition(b)["resource"].__setitem__("resourceType", "Resource"),
    "patient-is-string": lambda b: b["prefetch"].__setitem__("patient", "abc"),
    "prefetch-is-list": lambda b: b.__setitem__("prefetch", []),
    "selections-int": lambda b: b["context"].__setitem__("selections", 5),
    "huge-string-unknown-field": lambda b: b.__setitem__("junk", "x" * (1024 * 1024)),
    "huge-code-in-draft-status": lambda b: _draft(b).__setitem__("status", "x" * (512 * 1024)),
    "lone-surrogate-in-draft-text": lambda b: _draft(b)["code"].__setitem__("text", "\ud800"),
    "huge-string-in-draft-text": lambda b: _draft(b)["code"].__setitem__("text", "x" * (1024 * 1024)),
}


def _post_junk(client, mutate) -> None:
    body = request_body("v1-new-vcf-mri-with-contrast")
    mutate(body)
    text = json.dumps(body)
    text = re.sub(rf'"{DEEP}(\d+)"', lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)
    assert DEEP not in text
    resp = post_raw(client, text)
    assert resp.status_code in (200, 400, 412, 413), resp.get_data(as_text=True)[:500]
    if resp.status_code == 200:
        assert check_response(resp.get_json()) == []
    else:
        assert_operation_outcome(resp)


@pytest.mark.parametrize("name", list(JUNK))
def test_junk_is_never_500(client, name):
    _post_junk(client, JUNK[name])


@pytest.mark.parametrize("mutate", [
    lambda b: b.__setitem__("junk", _nested(900)),
    lambda b: _draft(b).__setitem__("note", _nested(900)),
    lambda b: _first_condition(b)["resource"].__setitem__("note", _nested(900)),
    lambda b: _draft(b).__setitem__("extension", _nested_extensions(200)),
    lambda b: _draft(b).__setitem__("extension", _nested_extensions(450)),
], ids=["unknown-field", "draft-note", "condition-note", "draft-extensions-200", "draft-extensions-450"])
def test_deep_junk_with_highest_depth_limit_is_never_500(mutate):
    """MAX_JSON_DEPTH=1000 lets deep JSON reach the FHIR models and the renderer."""
    _post_junk(make_app(MAX_JSON_DEPTH=1000).test_client(), mutate)


# ------------------------------------------------------------- malformed input is reported


def test_malformed_condition_is_skipped_and_reported(client):
    case = CASE_BY_ID["negative-malformed-condition"]
    resp = post(client, request_body(case["id"]))
    assert resp.status_code == 200
    payload = resp.get_json()
    assert check_response(payload) == []
    skipped = payload["extension"]["vcf-cds-hooks"]["skippedResources"]
    assert skipped
    reported = {f"{i.get('resource_type')}/{i.get('resource_id')}" for i in skipped}
    assert reported == set(case["malformed_resources"])
    assert all(i.get("diagnostic") for i in skipped)

    reference = post(client, request_body("v1-new-vcf-mri-with-contrast")).get_json()
    assert card_digest(payload) == card_digest(reference)
    assert pama_codes(payload) == pama_codes(reference)
    assert pama_codes(payload)


# ------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("case_id", ["v1-new-vcf-mri-with-contrast", "seed-000-neuro-red-flags-mri",
                                     "multi-order", "negative-malformed-condition"])
def test_same_request_same_answer(client, case_id):
    body = request_body(case_id)
    first = post(client, body)
    second = post(client, body)
    assert first.status_code == second.status_code == 200
    a, b = first.get_json(), second.get_json()
    assert normalise_uuids(a) == normalise_uuids(b)
    # the uuids themselves are fresh per response
    if a["cards"]:
        assert a["cards"][0]["uuid"] != b["cards"][0]["uuid"]


def test_null_members_of_a_draft_order_are_not_echoed_back(client):
    """FHIR JSON has no null members; the R4B models accept them as absent. The rating
    action and the update suggestions echo the draft order, so the EHR must get it back
    without them (found by the POST endpoint fuzz test: a null display in systemActions)."""
    body = request_body("v1-new-vcf-mri-with-contrast")
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["code"]["coding"][0]["display"] = None
    order["note"] = None
    resp = post(client, body)
    assert resp.status_code == 200
    payload = resp.get_json()
    assert check_response(payload) == []
    assert "null" not in resp.get_data(as_text=True)
    assert pama_codes(payload) == ["not-appropriate"]
