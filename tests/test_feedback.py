"""Feedback endpoint (CDS Hooks 2.0 §Feedback) as a CDS Client uses it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from conftest import FIXTURES, make_app
from dbsupport import run_in_processes
from replay import FEEDBACK_URL, SERVICE_URL, accepted, overridden, post_feedback, table_rows

from cds_service.app import state_of
from cds_service.store.tables import Feedback

UNKNOWN_CARD = "9368d37b-283f-44a0-93ea-547cebab93ed"


def _cards(client, case_file: str = "v1-new-vcf-mri-with-contrast.json") -> list[dict]:
    body = (FIXTURES / "requests" / case_file).read_bytes()
    resp = client.post(SERVICE_URL, data=body, content_type="application/json")
    assert resp.status_code == 200
    return resp.get_json()["cards"]


def _assert_outcome(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    if code:
        assert body["issue"][0]["code"] == code
    return body["issue"][0]


def test_accepted_suggestion_is_stored_with_its_ids(db_app, database):
    client = db_app.test_client()
    card = _cards(client)[0]
    resp = post_feedback(client, accepted(card, when="2021-12-11T10:05:31.52+01:00"))
    assert resp.status_code == 200
    assert resp.get_json() == {"received": 1, "stored": 1, "duplicates": 0, "flagged": 0}
    (row,) = table_rows(database, Feedback)
    assert row["card_uuid"] == card["uuid"] and row["outcome"] == "accepted"
    assert row["accepted_suggestions"] == [card["suggestions"][0]["uuid"]]
    assert row["outcome_at"] == datetime(2021, 12, 11, 9, 5, 31, 520000, tzinfo=UTC)
    assert row["flag"] is None


def test_override_with_reason_and_comment_is_stored(db_app, database):
    client = db_app.test_client()
    card = _cards(client)[0]
    reason = card["overrideReasons"][1]
    resp = post_feedback(client, overridden(card["uuid"], {"system": reason["system"], "code": reason["code"]},
                                            comment="Ordered by the spine surgeon"))
    assert resp.status_code == 200
    (row,) = table_rows(database, Feedback)
    assert (row["outcome"], row["override_system"], row["override_code"]) == ("overridden", reason["system"], reason["code"])
    assert row["user_comment"] == "Ordered by the spine surgeon"
    assert row["accepted_suggestions"] == []


def test_override_without_reason_is_stored(db_app, database):
    client = db_app.test_client()
    card = _cards(client)[0]
    assert post_feedback(client, overridden(card["uuid"])).status_code == 200
    (row,) = table_rows(database, Feedback)
    assert row["override_code"] is None and row["flag"] is None


def test_same_feedback_twice_is_stored_once(db_app, database):
    client = db_app.test_client()
    card = _cards(client)[0]
    entry = accepted(card)
    assert post_feedback(client, entry, entry).get_json() == {"received": 2, "stored": 1, "duplicates": 1, "flagged": 0}
    # The same instant written another way is the same feedback.
    again = dict(entry, outcomeTimestamp=entry["outcomeTimestamp"].replace("Z", "+00:00"))
    assert post_feedback(client, again).get_json()["duplicates"] == 1
    assert len(table_rows(database, Feedback)) == 1
    # A later interaction with the same card is new feedback (the spec allows several).
    assert post_feedback(client, overridden(card["uuid"])).get_json()["stored"] == 1
    assert len(table_rows(database, Feedback)) == 2


def test_feedback_for_a_card_never_issued_is_stored_and_flagged(db_app, database):
    client = db_app.test_client()
    resp = post_feedback(client, overridden(UNKNOWN_CARD))
    assert resp.get_json() == {"received": 1, "stored": 1, "duplicates": 0, "flagged": 1}
    (row,) = table_rows(database, Feedback)
    assert row["flag"] == "unknown-card"


def test_feedback_naming_a_suggestion_the_card_did_not_carry_is_flagged(db_app, database):
    client = db_app.test_client()
    first, other = _cards(client)[0], _cards(client, "seed-001-v3-ct-with-contrast.json")[0]
    entry = {**accepted(first), "acceptedSuggestions": [{"id": other["suggestions"][0]["uuid"]}]}
    assert post_feedback(client, entry).get_json()["flagged"] == 1
    assert table_rows(database, Feedback)[0]["flag"] == "unknown-suggestion"


def test_feedback_for_a_card_of_another_service_is_flagged(app_factory, database):
    client = app_factory().test_client()
    card = _cards(client)[0]
    # Same card uuid, but recorded as sent by a different service id: not ours to count.
    with database.transaction() as conn:
        conn.exec_driver_sql("UPDATE audit_call SET service_id = 'other-service'")
    assert post_feedback(client, overridden(card["uuid"])).get_json()["flagged"] == 1


def test_uuids_are_matched_case_insensitively(db_app, database):
    client = db_app.test_client()
    card = _cards(client)[0]
    assert post_feedback(client, overridden(card["uuid"].upper())).get_json()["flagged"] == 0


GOOD = {"card": UNKNOWN_CARD, "outcome": "overridden", "outcomeTimestamp": "2020-12-11T00:00:00Z"}


@pytest.mark.parametrize("body,where,code", [
    ({}, "feedback", "required"),
    ({"feedback": []}, "feedback", "invalid"),
    ({"feedback": {}}, "feedback", "invalid"),
    ([GOOD], "request body", "invalid"),
    ({"feedback": [{k: v for k, v in GOOD.items() if k != "card"}]}, "feedback[0].card", "required"),
    ({"feedback": [{**GOOD, "card": "not-a-uuid"}]}, "feedback[0].card", "invalid"),
    ({"feedback": [{**GOOD, "card": 5}]}, "feedback[0].card", "invalid"),
    ({"feedback": [{**GOOD, "outcome": "ignored"}]}, "feedback[0].outcome", "invalid"),
    ({"feedback": [{k: v for k, v in GOOD.items() if k != "outcome"}]}, "feedback[0].outcome", "required"),
    ({"feedback": [{**GOOD, "outcome": "accepted"}]}, "feedback[0]", "required"),
    ({"feedback": [{**GOOD, "outcome": "accepted", "acceptedSuggestions": []}]}, "feedback[0]", "required"),
    ({"feedback": [{**GOOD, "outcome": "accepted", "acceptedSuggestions": [{"id": "x"}]}]},
     "feedback[0].acceptedSuggestions[0].id", "invalid"),
    ({"feedback": [{**GOOD, "outcome": "accepted", "acceptedSuggestions": [{}]}]},
     "feedback[0].acceptedSuggestions[0].id", "required"),
    ({"feedback": [{**GOOD, "acceptedSuggestions": [{"id": UNKNOWN_CARD}]}]}, "feedback[0]", "invalid"),
    ({"feedback": [{**GOOD, "outcome": "accepted", "acceptedSuggestions": [{"id": UNKNOWN_CARD}],
                    "overrideReason": {"userComment": "x"}}]}, "feedback[0]", "invalid"),
    ({"feedback": [{**GOOD, "overrideReason": {"reason": {"code": "x"}}}]},
     "feedback[0].overrideReason.reason.system", "required"),
    ({"feedback": [{**GOOD, "overrideReason": "too expensive"}]}, "feedback[0].overrideReason", "invalid"),
    ({"feedback": [{k: v for k, v in GOOD.items() if k != "outcomeTimestamp"}]}, "feedback[0].outcomeTimestamp", "required"),
    ({"feedback": [{**GOOD, "outcomeTimestamp": "2020-12-11"}]}, "feedback[0].outcomeTimestamp", "invalid"),
    ({"feedback": [{**GOOD, "outcomeTimestamp": "2020-12-11T00:00:00"}]}, "feedback[0].outcomeTimestamp", "invalid"),
    ({"feedback": [{**GOOD, "outcomeTimestamp": "2020-13-11T00:00:00Z"}]}, "feedback[0].outcomeTimestamp", "invalid"),
    ({"feedback": [{**GOOD, "outcomeTimestamp": 1607644800}]}, "feedback[0].outcomeTimestamp", "invalid"),
    ({"feedback": [GOOD, {**GOOD, "outcome": None}]}, "feedback[1].outcome", "invalid"),
], ids=lambda v: None if isinstance(v, (dict, list)) else str(v))
def test_invalid_feedback_is_400_naming_the_member_and_stores_nothing(app, body, where, code):
    issue = _assert_outcome(app.test_client().post(FEEDBACK_URL, json=body), 400, code)
    assert issue["expression"] == [where]
    assert issue["diagnostics"].startswith(where + ": ")
    assert table_rows(state_of(app).database, Feedback) == []


@pytest.mark.parametrize("data", ["{", "", '{"feedback": NaN}', "\xff"])
def test_malformed_json_is_400(client, data):
    _assert_outcome(client.post(FEEDBACK_URL, data=data.encode("latin-1"),
                                              content_type="application/json"), 400)


def test_unknown_values_are_never_echoed(client):
    resp = post_feedback(client, {**GOOD, "card": "Patient/secret-123"})
    assert "secret-123" not in resp.get_data(as_text=True)


def test_unknown_members_and_extensions_are_accepted(client):
    entry = {**GOOD, "extension": {"org.example.ui": "sidebar"}, "somethingNew": 1}
    resp = client.post(FEEDBACK_URL, json={"feedback": [entry], "extension": {"x": 1}})
    assert resp.status_code == 200


def test_unknown_service_is_404(client):
    _assert_outcome(post_feedback(client, GOOD, url="/cds-services/nope/feedback"), 404, "not-found")


def test_get_is_405_with_allow(client):
    resp = client.get(FEEDBACK_URL)
    _assert_outcome(resp, 405)
    assert "POST" in resp.headers["Allow"]


def test_body_over_limit_is_413():
    client = make_app(MAX_BODY_BYTES=2048).test_client()
    entries = [dict(GOOD, outcomeTimestamp=f"2020-12-11T00:00:{i:02d}Z") for i in range(60)]
    _assert_outcome(client.post(FEEDBACK_URL, data=json.dumps({"feedback": entries}),
                                content_type="application/json"), 413)


def test_storage_failure_is_503_and_nothing_is_lost_on_retry(db_app, database):
    client = db_app.test_client()
    card = _cards(client)[0]
    with database.transaction() as conn:
        conn.exec_driver_sql("ALTER TABLE feedback RENAME TO feedback_away")
    resp = post_feedback(client, accepted(card))
    issue = _assert_outcome(resp, 503, "transient")
    assert "again" in issue["diagnostics"]
    assert int(resp.headers["Retry-After"]) > 0
    with database.transaction() as conn:
        conn.exec_driver_sql("ALTER TABLE feedback_away RENAME TO feedback")
    assert post_feedback(client, accepted(card)).get_json()["stored"] == 1
    assert len(table_rows(database, Feedback)) == 1


def test_feedback_from_several_processes_at_once_is_all_stored(db_app, database):
    """Four workers post 20 feedback requests each at the same moment, plus one entry they
    all send (a client retrying through different workers): every row is there once."""
    client = db_app.test_client()
    cards = [c for f in ("v1-new-vcf-mri-with-contrast.json", "seed-001-v3-ct-with-contrast.json",
                         "seed-000-neuro-red-flags-mri.json", "seed-004-coagulopathy.json") for c in _cards(client, f)]
    shared = overridden(cards[0]["uuid"], when="2026-11-20T12:00:00Z")
    database.dispose()

    def worker(n: int) -> list[int]:
        database.engine.dispose(close=False)  # connections of its own, as a gunicorn worker has
        statuses = []
        for i in range(20):
            card = cards[(n + i) % len(cards)]
            entry = overridden(card["uuid"], when=f"2026-11-20T10:{n:02d}:{i:02d}.{n}Z")
            statuses.append(post_feedback(client, entry).status_code)
        statuses.append(post_feedback(client, shared).status_code)
        return statuses

    results = run_in_processes(worker, list(range(4)))
    assert all(s == 200 for statuses in results for s in statuses)
    rows = table_rows(database, Feedback)
    assert len(rows) == 4 * 20 + 1
    stamps = {r["outcome_at"] for r in rows}
    for n in range(4):
        for i in range(20):
            assert datetime(2026, 11, 20, 10, n, i, n * 100000, tzinfo=UTC) in stamps
    assert all(r["flag"] is None for r in rows)
