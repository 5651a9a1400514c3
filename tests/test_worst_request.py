"""The worst request within the default limits (fhir_fixtures/build_worst_request.py: 50
selected draft orders, 4,800 Conditions and 200 Procedures the decision reads, 7.4 MB) gets
a whole answer of bounded size: every order decided, the part of the record not read named
under skippedResources, and otherwise the same answer as for the record cut where the
service cut it; its audit record stays small and the "Why this advice?" page says what it
leaves out. Sizes and counts only: the benchmark prints what the call costs."""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest
from conftest import FIXTURES, make_app
from sqlalchemy import text
from test_api import normalise_uuids, post_raw
from test_explain import local, page_text

from cds_service.app import state_of
from cds_service.protocol.models import check_response
from cds_service.protocol.request import MAX_RECORD_READ
from cds_service.settings import Settings
from cds_service.store.explanation import FACTS_LISTED_MAX

sys.path.insert(0, str(FIXTURES))
import build_worst_request

# The response echoes each rated order twice (systemActions and the Argonaut copy) with
# its notes; everything else is bounded by the evidence lines per card.
RESPONSE_MAX_BYTES = 1_000_000


@pytest.fixture(scope="module")
def worst() -> dict:
    return build_worst_request.build()


@pytest.fixture(scope="module")
def worst_call(worst, tmp_path_factory):
    """(app, response JSON) of the worst request, the app's database in a temp dir."""
    app = make_app(DATA_DIR=str(tmp_path_factory.mktemp("worst-data")))
    resp = post_raw(app.test_client(), json.dumps(worst, separators=(",", ":")))
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    assert len(resp.get_data()) < RESPONSE_MAX_BYTES
    return app, resp.get_json()


@pytest.fixture(scope="module")
def worst_answer(worst_call) -> dict:
    return worst_call[1]


def test_worst_request_fills_the_default_limits(worst):
    defaults = Settings.load({})
    assert len(json.dumps(worst, ensure_ascii=False, separators=(",", ":")).encode()) < defaults.max_body_bytes
    assert len(worst["context"]["draftOrders"]["entry"]) == defaults.max_draft_orders
    assert len(worst["context"]["selections"]) == defaults.max_draft_orders
    entries = sum(len(v["entry"]) for v in worst["prefetch"].values() if isinstance(v, dict) and "entry" in v)
    assert entries == defaults.max_prefetch_entries
    assert defaults.max_record_read == MAX_RECORD_READ


def test_worst_request_is_rebuilt_identically():
    assert build_worst_request.build() == build_worst_request.build()


def test_worst_request_answers_every_order_within_the_size_bound(worst_answer):
    assert check_response(worst_answer) == []
    # One rating per order the ACR criteria rate, one card at least per order that needs one.
    assert worst_answer["cards"]
    assert worst_answer["systemActions"]


def test_worst_request_names_the_conditions_not_read(worst_answer):
    skipped = worst_answer["extension"]["vcf-cds-hooks"]["skippedResources"]
    assert skipped == [{
        "location": f"prefetch.conditions.entry[{MAX_RECORD_READ}]",
        "resource_type": "Condition",
        "diagnostic": f"4600 Condition resources from here on not read (prefetch.conditions.entry[{MAX_RECORD_READ}] "
                      f"to prefetch.conditions.entry[4799]): this service reads at most {MAX_RECORD_READ} per "
                      "request (setting MAX_RECORD_READ)",
    }]


NOT_READ_LINE = ("**Record partly read**: 4,600 Conditions on record were not read for this advice (more than the "
                 "service reads in one call); what they hold is not taken into account.")


def test_worst_request_says_on_every_card_that_the_record_was_partly_read(worst_answer):
    assert worst_answer["cards"]
    assert all(card["detail"].endswith("\n\n" + NOT_READ_LINE) for card in worst_answer["cards"])


def test_worst_request_answer_is_the_answer_for_the_record_read(worst, worst_answer):
    # What was not read changes nothing but the skippedResources entry: the same request with
    # only the Conditions the service read gets the same cards and ratings.
    cut = copy.deepcopy(worst)
    bundle = cut["prefetch"]["conditions"]
    bundle["entry"] = bundle["entry"][:MAX_RECORD_READ]
    bundle["total"] = MAX_RECORD_READ
    resp = post_raw(make_app().test_client(), json.dumps(cut))
    assert resp.status_code == 200
    expected = resp.get_json()
    assert "vcf-cds-hooks" not in expected.get("extension", {})
    got = copy.deepcopy(worst_answer)
    del got["extension"]["vcf-cds-hooks"]
    for card in got["cards"]:
        card["detail"] = card["detail"].removesuffix("\n\n" + NOT_READ_LINE)
    assert _without_ids(got) == _without_ids(expected)


def _without_ids(response: dict) -> str:
    # Card uuids, and the signed "Why this advice?" tokens inside card text, differ per call.
    return re.sub(r"token=[\w.-]+", "token=<token>", json.dumps(normalise_uuids(response)))


def test_the_limit_is_a_setting(worst):
    # A larger setting reads more: the whole record, here, and nothing is then skipped.
    client = make_app(MAX_RECORD_READ=5000).test_client()
    resp = post_raw(client, json.dumps(worst, separators=(",", ":")))
    assert resp.status_code == 200
    assert "vcf-cds-hooks" not in resp.get_json().get("extension", {})


def _conditions_bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def test_parse_record_counts_only_what_it_reads_and_validates(knowledge):
    from functools import partial

    import build_cases as bc

    from cds_service.decision.scenario import yields_facts
    from cds_service.protocol.request import parse_record

    pid = "pt-limit"
    fracture = [bc.condition(f"c-vcf-{n}", pid, icd="M48.56XA", onset="2026-11-09") for n in range(3)]
    # Essential hypertension (SNOMED CT 59621000): in no value set the decision reads.
    background = [dict(fracture[0], id=f"c-bg-{n}", code={"coding": [
        {"system": bc.SCT, "code": "59621000", "display": "Essential hypertension"}]}) for n in range(2)]
    broken = dict(fracture[0], id="c-broken", clinicalStatus="active")  # not a CodeableConcept
    resources = [background[0], broken, fracture[0], background[1], fracture[1], fracture[2]]
    reads = partial(yields_facts, knowledge)
    record = parse_record({"conditions": _conditions_bundle(resources)}, patient_id=pid, reads=reads, max_read=3)
    # The invalid Condition counts (it was validated), the hypertension ones do not (never read).
    assert [c.id for c in record.conditions] == ["c-vcf-0", "c-vcf-1"]
    assert [(i.location, i.resource_type) for i in record.issues] == [
        ("prefetch.conditions.entry[1]", "Condition"), ("prefetch.conditions.entry[5]", "Condition")]
    assert record.issues[1].diagnostic.startswith("1 Condition resources from here on not read")
    unbounded = parse_record({"conditions": _conditions_bundle(resources)}, patient_id=pid, reads=reads, max_read=4)
    assert [c.id for c in unbounded.conditions] == ["c-vcf-0", "c-vcf-1", "c-vcf-2"]
    assert len(unbounded.issues) == 1


def test_worst_request_audit_record_is_bounded_and_its_page_says_what_it_leaves_out(worst_call):
    app, answer = worst_call
    with state_of(app).audit.database.engine.connect() as conn:
        stored = [row[0] for row in conn.execute(text("SELECT evidence FROM audit_order"))]
    assert len(stored) == 50
    # Each order stores at most FACTS_LISTED_MAX codes: well under 100 kB, not the 200 kB an
    # order over this record stored before, 10 MB a call.
    assert max(len(e if isinstance(e, str) else json.dumps(e)) for e in stored) < 100_000
    card = next(c for c in answer["cards"] if c.get("links"))
    page = app.test_client().get(local(card["links"][0]["url"]))
    assert page.status_code == 200
    assert re.search(rf"And \d+ more codes in the record, not listed: the service keeps the first "
                     rf"{FACTS_LISTED_MAX} of each order\.", page_text(page))


@pytest.mark.parametrize("spoil", [
    pytest.param(lambda r: r.__setitem__("subject", {"reference": "Patient/someone-else"}), id="another-patient"),
    pytest.param(lambda r: r.__setitem__("clinicalStatus", "active"), id="invalid-r4"),
    pytest.param(lambda r: r.__setitem__("resourceType", "Observation"), id="not-a-condition"),
])
def test_worst_request_with_every_condition_unusable_still_answers_in_bounds(worst, spoil):
    # Each unusable Condition is listed on its own (or, past the limit, counted): the answer
    # grows with the request but stays within a few hundred bytes per prefetch entry.
    body = copy.deepcopy(worst)
    for entry in body["prefetch"]["conditions"]["entry"]:
        spoil(entry["resource"])
    resp = post_raw(make_app().test_client(), json.dumps(body, separators=(",", ":")))
    assert resp.status_code == 200
    assert len(resp.get_data()) < 2_000_000
    skipped = resp.get_json()["extension"]["vcf-cds-hooks"]["skippedResources"]
    assert {s["location"].split(".entry")[0] for s in skipped} == {"prefetch.conditions"}


def test_record_read_once_gives_each_order_its_own_encounter_diagnoses(knowledge):
    # The record's facts are read once per call; whether a Condition is an encounter
    # diagnosis of the order's encounter still depends on each order.
    from datetime import date

    import build_cases as bc

    from cds_service.decision.scenario import RecordFacts, extract_facts

    pid = "pt-encounters"
    pain = bc.condition("c-pain", pid, icd="M54.50", onset="2026-01-10")
    pain["category"][0]["coding"][0].update(code="encounter-diagnosis", display="Encounter Diagnosis")
    pain["encounter"] = {"reference": "Encounter/enc-1"}
    vcf = bc.condition("c-vcf", pid, icd="M48.56XA", onset="2026-11-09")
    orders = [bc.service_request(f"sr-{enc}", pid, "72158", enc) for enc in ("enc-1", "enc-2", "enc-1")]
    record = RecordFacts(knowledge, conditions=[pain, vcf], procedures=[])
    shared = [extract_facts(knowledge, conditions=[pain, vcf], procedures=[], order=o, as_of=date(2026, 11, 16),
                            record=record) for o in orders]
    alone = [extract_facts(knowledge, conditions=[pain, vcf], procedures=[], order=o, as_of=date(2026, 11, 16))
             for o in orders]
    assert shared == alone
    current = [{e.resource for e in f.all_evidence() if e.current_encounter} for f in shared]
    assert current == [{"Condition/c-pain"}, set(), {"Condition/c-pain"}]
