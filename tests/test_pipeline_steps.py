"""Each step of the hook pipeline on its own, on the fixture requests (real FHIR JSON):
find_service -> parse_envelope -> complete_prefetch -> parse_record -> decide_orders ->
render_response -> validate_response, and evaluate as their composition."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
from conftest import FIXTURES, counter_ids, load_json

from cds_service.decision.knowledge import load_knowledge
from cds_service.decision.render import PAMA_BASE, RenderOptions
from cds_service.decision.scenario import yields_facts
from cds_service.pipeline import (
    InvalidResponse,
    complete_prefetch,
    decide_orders,
    evaluate,
    find_service,
    parse_envelope,
    parse_record,
    reading_queries,
    render_response,
    validate_response,
)
from cds_service.protocol.errors import RequestError
from cds_service.protocol.models import SUMMARY_MAX_CHARS

SELECT = "vcf-order-select"
TYPICAL = FIXTURES / "bench" / "typical-request.json"
V1 = FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json"
CONSULT_ID_URL = PAMA_BASE + "pama-rating-consult-id"
OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}


READING = ["radiologyReports", "medicationRequests", "medicationStatements", "coagulationLabs"]


class RecordingFhirClient:
    """Stands in for :class:`cds_service.fhir.client.FhirClient` (tested against a real HTTP
    server in test_fhir_fetch.py): records each fetch and answers from ``answers``."""

    def __init__(self, answers: dict[str, Any]):
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    def fetch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {key: copy.deepcopy(self.answers[key]) for key in kwargs["keys"]}


def envelope_of(body: dict[str, Any], schemas, knowledge, service_id: str = SELECT):
    return parse_envelope(body, hook=find_service(knowledge, service_id).hook, schemas=schemas)


def record_of(prefetch, envelope, knowledge, service_id: str = SELECT):
    service = find_service(knowledge, service_id)
    return parse_record(prefetch, patient_id=envelope.patient_id, required=service.requiredPrefetch,
                        reads=partial(yields_facts, knowledge))


# ------------------------------------------------------------------------- find_service


def test_find_service_returns_the_discovered_service(knowledge):
    service = find_service(knowledge, SELECT)
    assert (service.id, service.hook) == (SELECT, "order-select")
    assert find_service(knowledge, "vcf-order-sign").hook == "order-sign"


def test_find_service_unknown_id_is_404(knowledge):
    with pytest.raises(RequestError) as caught:
        find_service(knowledge, "no-such-service")
    assert (caught.value.status, caught.value.code) == (404, "not-found")


# ----------------------------------------------------------------------- parse_envelope


def test_parse_envelope_reads_the_envelope_and_leaves_prefetch_as_sent(knowledge, schemas):
    body = load_json(TYPICAL)
    envelope = envelope_of(body, schemas, knowledge)
    assert envelope.hook == "order-select" and envelope.hook_instance == body["hookInstance"]
    assert envelope.patient_id == body["context"]["patientId"]
    assert [s.reference for s in envelope.selections] == body["context"]["selections"]
    assert envelope.prefetch == body["prefetch"]
    assert body["context"]["patientId"] not in repr(envelope)  # repr is safe to log


def test_parse_envelope_does_not_require_prefetch(knowledge, schemas):
    """The 412 for missing conditions belongs to parse_record, after fetching had its chance."""
    body = load_json(V1)
    del body["prefetch"]
    envelope = envelope_of(body, schemas, knowledge)
    assert envelope.prefetch == {}
    assert envelope.fhir_server == "https://ehr.example.org/fhir"


def test_parse_envelope_refuses_the_wrong_hook(knowledge, schemas):
    with pytest.raises(RequestError) as caught:
        envelope_of(load_json(V1), schemas, knowledge, service_id="vcf-order-sign")
    assert (caught.value.status, caught.value.code) == (400, "not-supported")


def test_parse_envelope_keeps_the_access_token_out_of_repr(knowledge, schemas):
    body = load_json(V1)
    body["fhirAuthorization"] = {"access_token": "secret-token-123", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/Condition.read", "subject": "vcf-cds-hooks"}
    envelope = envelope_of(body, schemas, knowledge)
    assert envelope.access_token == "secret-token-123"
    assert "secret-token-123" not in repr(envelope)


# -------------------------------------------------------------------- complete_prefetch


def test_complete_prefetch_fetches_only_what_is_absent_or_an_operation_outcome(knowledge, schemas):
    body = load_json(FIXTURES / "requests" / "seed-004-coagulopathy.json")
    full = copy.deepcopy(body["prefetch"])
    del body["prefetch"]["procedures"]
    body["prefetch"]["conditions"] = OUTCOME
    envelope = envelope_of(body, schemas, knowledge)
    client = RecordingFhirClient({**full, **dict.fromkeys(READING, None)})

    prefetch = complete_prefetch(envelope, find_service(knowledge, SELECT), client)

    # One call, side by side; the radiology reports, medications and labs may fail alone.
    [call] = client.calls
    assert call["keys"] == ["conditions", "procedures", *READING]
    assert call["optional"] == READING
    assert call["fhir_server"] == body["fhirServer"]
    assert call["templates"] == find_service(knowledge, SELECT).prefetch
    assert prefetch["conditions"] == full["conditions"] and prefetch["procedures"] == full["procedures"]
    assert envelope.prefetch["conditions"] == OUTCOME  # the envelope is not changed


def test_complete_prefetch_runs_the_reading_queries_with_the_look_back_from_the_order_date(knowledge, schemas):
    body = load_json(V1)  # the order is authored 2026-11-16
    envelope = envelope_of(body, schemas, knowledge)
    service = find_service(knowledge, SELECT)
    client = RecordingFhirClient(dict.fromkeys(READING, None))

    queries = reading_queries(knowledge, envelope, service)
    complete_prefetch(envelope, service, client, queries=queries)

    [reading] = client.calls
    assert reading["keys"] == READING
    templates = reading["templates"]
    assert "date=ge2025-11-16" in templates["radiologyReports"]  # 365 days
    assert "date=ge2026-10-17" in templates["coagulationLabs"]  # 30 days
    assert all("{{context.patientId}}" in templates[k] for k in READING)


def test_reading_keys_the_client_could_not_fetch_stay_unavailable(knowledge, schemas):
    class Partial(RecordingFhirClient):
        # As FhirClient.fetch does with an optional key whose query failed: left out.
        def fetch(self, **kwargs: Any) -> dict[str, Any]:
            self.calls.append(kwargs)
            return {k: copy.deepcopy(self.answers[k]) for k in kwargs["keys"] if k != "radiologyReports"}

    envelope = envelope_of(load_json(V1), schemas, knowledge)
    prefetch = complete_prefetch(envelope, find_service(knowledge, SELECT), Partial(dict.fromkeys(READING)))
    assert "radiologyReports" not in prefetch
    assert record_of(prefetch, envelope, knowledge).unavailable == ("radiologyReports",)


def test_complete_prefetch_never_fetches_null_or_undeclared_keys(knowledge, schemas):
    body = load_json(V1)  # procedures: null (the EHR ran the query and found nothing)
    body["prefetch"].update(dict.fromkeys(READING))  # likewise the reports, medications and labs
    body["prefetch"]["patient"] = OUTCOME  # not a prefetch key of this service
    client = RecordingFhirClient({})
    prefetch = complete_prefetch(envelope_of(body, schemas, knowledge), find_service(knowledge, SELECT), client)
    assert client.calls == []
    assert prefetch == body["prefetch"]


@pytest.mark.parametrize("without", ["fhir_client", "fhirServer"])
def test_complete_prefetch_without_a_client_or_a_server_fetches_nothing(knowledge, schemas, without):
    body = load_json(V1)
    del body["prefetch"]
    if without == "fhirServer":
        del body["fhirServer"]
    client = RecordingFhirClient({})
    prefetch = complete_prefetch(envelope_of(body, schemas, knowledge), find_service(knowledge, SELECT),
                                 None if without == "fhir_client" else client)
    assert prefetch == {} and client.calls == []


def test_complete_prefetch_refuses_absurdly_nested_answers(knowledge, schemas):
    body = load_json(V1)
    del body["prefetch"]["conditions"]
    body["prefetch"].update(dict.fromkeys(READING))
    nested: dict[str, Any] = {"resourceType": "Bundle"}
    for _ in range(200):
        nested = {"x": nested}
    client = RecordingFhirClient({"conditions": nested})
    with pytest.raises(RequestError) as caught:
        complete_prefetch(envelope_of(body, schemas, knowledge), find_service(knowledge, SELECT), client, max_depth=100)
    assert (caught.value.status, caught.value.code) == (412, "too-long")
    assert caught.value.expression == ("prefetch.conditions",)


# ------------------------------------------------------------------------- parse_record


def test_parse_record_keeps_only_the_resources_the_decision_reads(knowledge, schemas):
    body = load_json(TYPICAL)
    envelope = envelope_of(body, schemas, knowledge)
    every = parse_record(envelope.prefetch, patient_id=envelope.patient_id)
    read = record_of(envelope.prefetch, envelope, knowledge)
    assert len(every.conditions) == 25 and len(every.procedures) == 5
    assert 0 < len(read.conditions) < len(every.conditions)
    assert all(yields_facts(knowledge, "Condition", c.raw) for c in read.conditions)
    assert read.procedures_available and read.issues == ()


def test_parse_record_reports_skipped_resources(knowledge, schemas):
    body = load_json(FIXTURES / "requests" / "negative-malformed-condition.json")
    envelope = envelope_of(body, schemas, knowledge)
    record = parse_record(envelope.prefetch, patient_id=envelope.patient_id)
    [issue] = record.issues
    assert issue.location.startswith("prefetch.conditions.entry[")
    assert "not a valid FHIR R4B Condition" in issue.diagnostic


@pytest.mark.parametrize("conditions", ["absent", "operation-outcome"])
def test_parse_record_missing_required_conditions_is_412(knowledge, schemas, conditions):
    body = load_json(V1)
    if conditions == "absent":
        del body["prefetch"]["conditions"]
    else:
        body["prefetch"]["conditions"] = OUTCOME
    envelope = envelope_of(body, schemas, knowledge)
    with pytest.raises(RequestError) as caught:
        record_of(envelope.prefetch, envelope, knowledge)
    assert (caught.value.status, caught.value.code) == (412, "required")
    assert caught.value.expression == ("prefetch.conditions",)
    # Nothing required: the same prefetch reads as "not known".
    record = parse_record(envelope.prefetch, patient_id=envelope.patient_id, required=())
    assert record.conditions == ()


def test_required_prefetch_comes_from_services_json(tmp_path, schemas):
    """requiredPrefetch in data/services.json, not the code, decides which keys are a 412."""
    data = tmp_path / "data"
    shutil.copytree(load_knowledge().directory, data)
    services = json.loads((data / "services.json").read_text(encoding="utf-8"))
    for service in services["services"]:
        service["requiredPrefetch"] = ["conditions", "procedures"]
    (data / "services.json").write_text(json.dumps(services), encoding="utf-8")
    strict = load_knowledge(data)
    body = load_json(V1)
    del body["prefetch"]["procedures"]

    assert evaluate(load_knowledge(), schemas, copy.deepcopy(body), service_id=SELECT, options=RenderOptions())
    with pytest.raises(RequestError) as caught:
        evaluate(strict, schemas, body, service_id=SELECT, options=RenderOptions())
    assert (caught.value.status, caught.value.code) == (412, "required")
    assert caught.value.expression == ("prefetch.procedures",)


# ---------------------------------------------------------------- decide and render


@pytest.fixture()
def typical(knowledge, schemas):
    envelope = envelope_of(load_json(TYPICAL), schemas, knowledge)
    return envelope, record_of(envelope.prefetch, envelope, knowledge)


def test_decide_orders_rates_each_selection(knowledge, typical):
    envelope, record = typical
    decision = decide_orders(knowledge, envelope, record)
    assert [od.ref for od in decision.orders] == [s.reference for s in envelope.selections]
    assert {od.variant.id for od in decision.orders if od.variant} == {"V1"}
    assert sorted(str(od.pama) for od in decision.orders) == ["appropriate", "not-appropriate"]


def test_render_response_carries_the_consult_id_of_each_rated_order(knowledge, typical):
    envelope, record = typical
    decision = decide_orders(knowledge, envelope, record)
    rendered = render_response(knowledge, envelope, record, decision, RenderOptions(new_id=counter_ids()))
    sent = {}
    for action in rendered.response["systemActions"]:
        resource = action["resource"]
        [consult] = [e["valueUri"] for e in resource["extension"] if e["url"] == CONSULT_ID_URL]
        sent[f"{resource['resourceType']}/{resource['id']}"] = consult
    assert {decision.orders[position].ref: cid for position, cid in rendered.consult_ids.items()} == sent
    assert set(rendered.card_kinds) == {c["uuid"] for c in rendered.response["cards"]}


def test_render_response_lists_skipped_resources(knowledge, schemas):
    body = load_json(FIXTURES / "requests" / "negative-malformed-condition.json")
    envelope = envelope_of(body, schemas, knowledge)
    record = parse_record(envelope.prefetch, patient_id=envelope.patient_id)
    rendered = render_response(knowledge, envelope, record, decide_orders(knowledge, envelope, record),
                               RenderOptions())
    skipped = rendered.response["extension"]["vcf-cds-hooks"]["skippedResources"]
    assert skipped == [issue.to_json() for issue in record.issues]


# ----------------------------------------------------------------- validate_response


def test_validate_response_accepts_what_render_builds(knowledge, typical):
    envelope, record = typical
    rendered = render_response(knowledge, envelope, record, decide_orders(knowledge, envelope, record),
                               RenderOptions())
    validate_response(rendered)


def test_validate_response_names_the_broken_rule(knowledge, typical):
    envelope, record = typical
    rendered = render_response(knowledge, envelope, record, decide_orders(knowledge, envelope, record),
                               RenderOptions())
    broken = copy.deepcopy(rendered.response)
    broken["cards"][0]["summary"] = "x" * (SUMMARY_MAX_CHARS + 1)
    del broken["systemActions"][0]["description"]
    with pytest.raises(InvalidResponse) as caught:
        validate_response(replace(rendered, response=broken))
    message = str(caught.value)
    assert "cards.0.summary" in message and "under 140 characters" in message
    assert "systemActions.0.description" in message
    assert envelope.patient_id not in message


# ------------------------------------------------------------------------- evaluate


def test_evaluate_is_the_steps_in_turn(knowledge, schemas):
    body = load_json(TYPICAL)
    out = evaluate(knowledge, schemas, copy.deepcopy(body), service_id=SELECT,
                   options=RenderOptions(new_id=counter_ids()))
    envelope = envelope_of(body, schemas, knowledge)
    record = record_of(envelope.prefetch, envelope, knowledge)
    by_steps = render_response(knowledge, envelope, record, decide_orders(knowledge, envelope, record),
                               RenderOptions(new_id=counter_ids()))
    assert out.rendered.response == by_steps.response
    assert out.rendered.consult_ids == by_steps.consult_ids
    assert out.envelope.hook_instance == envelope.hook_instance and out.record == record
