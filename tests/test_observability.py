"""Health endpoints, Prometheus metrics and JSON logs, as an operator scraping and reading
them would see them (Flask test client, single-process metrics registry)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import pytest
from conftest import FIXTURES, load_json, make_app
from prometheus_client import REGISTRY

from cds_service.observability import count_audit_write_failure, logging_config
from cds_service.web.health import register_readiness_check

sys.path.insert(0, str(FIXTURES))
from ehr_server import without_prefetch

SERVICE_URL = "/cds-services/vcf-order-select"
ROUTE = "/cds-services/<service_id>"
TOKEN = "tok-8c1f0e2d-bench-secret"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def post(client, body):
    return client.post(SERVICE_URL, data=json.dumps(body), content_type="application/json")


# ------------------------------------------------------------------------------- health


def test_healthz_answers_ok(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}


def test_readyz_reports_knowledge_and_database(client):
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ready", "checks": {"knowledge": "ok", "database": "ok"}}


def test_readyz_is_503_when_the_database_does_not_answer(monkeypatch):
    from cds_service.store.db import Database, DatabaseError

    def down(self):
        raise DatabaseError("cannot reach the sqlite database (OperationalError)")

    monkeypatch.setattr(Database, "ping", down)
    resp = make_app().test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["checks"]["database"] != "ok"


def test_readyz_is_503_when_a_registered_check_fails_without_leaking_its_message():
    app = make_app()
    register_readiness_check(app, "database", lambda: (_ for _ in ()).throw(ConnectionError("db.internal:5432 pw=hunter2")))
    register_readiness_check(app, "cache", lambda: False)
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json() == {"status": "not-ready", "checks": {
        "knowledge": "ok", "database": "failed (ConnectionError)", "cache": "failed"}}
    assert "hunter2" not in resp.get_data(as_text=True)


# ------------------------------------------------------------------------------ metrics


def test_metrics_count_requests_ratings_and_cards(client):
    before = {
        "ok": sample("vcf_cds_http_requests_total", endpoint=ROUTE, method="POST", status="200"),
        "bad": sample("vcf_cds_http_requests_total", endpoint=ROUTE, method="POST", status="400"),
        "lat": sample("vcf_cds_http_request_duration_seconds_count", endpoint=ROUTE, method="POST", status="200"),
        "una": sample("vcf_cds_ratings_total", code="not-appropriate", variant="V1"),
        "ua": sample("vcf_cds_ratings_total", code="appropriate", variant="V1"),
        "warn": sample("vcf_cds_cards_total", indicator="warning", kind="not-appropriate"),
    }
    assert post(client, load_json(FIXTURES / "bench" / "typical-request.json")).status_code == 200
    assert client.post(SERVICE_URL, data="{", content_type="application/json").status_code == 400
    text = client.get("/metrics").get_data(as_text=True)
    assert "vcf_cds_http_request_duration_seconds_bucket" in text
    assert sample("vcf_cds_http_requests_total", endpoint=ROUTE, method="POST", status="200") == before["ok"] + 1
    assert sample("vcf_cds_http_requests_total", endpoint=ROUTE, method="POST", status="400") == before["bad"] + 1
    assert sample("vcf_cds_http_request_duration_seconds_count", endpoint=ROUTE, method="POST",
                  status="200") == before["lat"] + 1
    # The typical request: 72158 Usually not appropriate and 72131 Usually appropriate in V1.
    assert sample("vcf_cds_ratings_total", code="not-appropriate", variant="V1") == before["una"] + 1
    assert sample("vcf_cds_ratings_total", code="appropriate", variant="V1") == before["ua"] + 1
    assert sample("vcf_cds_cards_total", indicator="warning", kind="not-appropriate") == before["warn"] + 1


def test_unknown_paths_and_methods_share_one_metric_label(client):
    before = sample("vcf_cds_http_requests_total", endpoint="(unmatched)", method="GET", status="404")
    for path in ("/Patient/123", "/no/such/thing"):
        assert client.get(path).status_code == 404
    assert sample("vcf_cds_http_requests_total", endpoint="(unmatched)", method="GET", status="404") == before + 2
    odd = sample("vcf_cds_http_requests_total", endpoint="(unmatched)", method="other", status="405")
    assert client.open("/healthz", method="BREW").status_code == 405
    assert sample("vcf_cds_http_requests_total", endpoint="(unmatched)", method="other", status="405") == odd + 1
    text = client.get("/metrics").get_data(as_text=True)
    assert "Patient/123" not in text and "BREW" not in text


def test_audit_write_failures_are_exposed():
    before = sample("vcf_cds_audit_write_failures_total")
    count_audit_write_failure()
    assert sample("vcf_cds_audit_write_failures_total") == before + 1


def test_metrics_endpoint_can_be_switched_off():
    client = make_app(METRICS_ENABLED=False).test_client()
    before = sample("vcf_cds_http_requests_total", endpoint=ROUTE, method="POST", status="200")
    assert post(client, load_json(FIXTURES / "bench" / "typical-request.json")).status_code == 200
    resp = client.get("/metrics")
    assert resp.status_code == 404
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    # Nobody can read them, so they are not kept.
    assert sample("vcf_cds_http_requests_total", endpoint=ROUTE, method="POST", status="200") == before


def test_fhir_fetch_latency_and_failures_by_prefetch_key(httpserver):
    base = httpserver.url_for("/fhir")
    body, ehr = without_prefetch(load_json(FIXTURES / "bench" / "typical-request.json"), fhir_server=base, token=TOKEN)
    httpserver.expect_request(re.compile("/fhir/.*")).respond_with_handler(ehr.handle)
    client = make_app(FHIR_ALLOWLIST=base, ALLOW_HTTP_LOOPBACK=True).test_client()
    ok_before = sample("vcf_cds_fhir_fetch_duration_seconds_count", prefetch_key="conditions", outcome="ok")
    assert post(client, body).status_code == 200
    assert sample("vcf_cds_fhir_fetch_duration_seconds_count", prefetch_key="conditions", outcome="ok") == ok_before + 1

    refused = sample("vcf_cds_fhir_fetch_failures_total", prefetch_key="conditions", outcome="not-allowed")
    elsewhere = dict(body, fhirServer="https://ehr.elsewhere.example/fhir")
    assert post(client, elsewhere).status_code == 412
    assert sample("vcf_cds_fhir_fetch_failures_total", prefetch_key="conditions",
                  outcome="not-allowed") == refused + 1
    assert "ehr.elsewhere" not in client.get("/metrics").get_data(as_text=True)


# --------------------------------------------------------------------------------- logs


@pytest.fixture()
def json_log_lines():
    """Every log record of the test, rendered by the service's JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging_config()["formatters"]["json"]["()"]())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_logs_are_json_lines_with_hook_instance_and_no_patient_data(httpserver, json_log_lines):
    typical = load_json(FIXTURES / "bench" / "typical-request.json")
    base = httpserver.url_for("/fhir")
    body, ehr = without_prefetch(typical, fhir_server=base, token=TOKEN)
    httpserver.expect_request(re.compile("/fhir/.*")).respond_with_handler(ehr.handle)
    client = make_app(FHIR_ALLOWLIST=base, ALLOW_HTTP_LOOPBACK=True).test_client()
    started = len(json_log_lines())
    assert post(client, body).status_code == 200
    # The loopback EHR server's own (werkzeug) log is not the service's.
    lines = [line for line in json_log_lines()[started:] if line["logger"].startswith("cds_service")]
    events = {(line["logger"], line["event"].split(" ")[0]) for line in lines}
    assert ("cds_service.access", "request") in events  # one access line per request
    assert ("cds_service.fhir.client", "fetched") in events  # the package's stdlib logging, as JSON
    assert all(line["hook_instance"] == body["hookInstance"] for line in lines)
    patient = typical["prefetch"]["patient"]
    text = "\n".join(json.dumps(line) for line in lines)
    for secret in (patient["id"], patient["name"][0]["family"], TOKEN, "M48.56XA"):
        assert secret not in text


def test_hook_instance_that_is_not_a_uuid_is_logged_as_a_hash(client, caplog):
    body = load_json(FIXTURES / "bench" / "typical-request.json")
    body["hookInstance"] = "MRN-4471 Okonkwo"
    with caplog.at_level(logging.INFO):
        assert post(client, body).status_code == 200
    access = [r.msg for r in caplog.records if r.name == "cds_service.access"]
    assert access and re.fullmatch(r"sha256:[0-9a-f]{16}", access[-1]["hook_instance"])
    assert "Okonkwo" not in caplog.text
