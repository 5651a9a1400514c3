"""Audit trail: every call that reached evaluation is recorded, without patient data, and a
database failure never changes what the EHR gets back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import FIXTURES, load_json, make_app
from dbsupport import env_for
from replay import CASES, SERVICE_URL, dump_text, overridden, post_feedback, replay_fixtures, table_rows
from sqlalchemy import text

from cds_service.app import state_of
from cds_service.decision.render import PAMA_BASE
from cds_service.ops.cli import main
from cds_service.store.audit import CallRecord, patient_hash, write_record
from cds_service.store.tables import AuditCall, AuditCard, AuditOrder, Feedback

DOWN_DATABASE = {"DATABASE_URL": "postgresql+psycopg://cds:secret@127.0.0.1:1/nowhere", "AUDIT_HMAC_KEY": "k" * 32}


def _consult_ids(response: dict) -> dict[str, str]:
    out = {}
    for action in response.get("systemActions", ()):
        res = action["resource"]
        for ext in res.get("extension", ()):
            if ext["url"] == PAMA_BASE + "pama-rating-consult-id":
                out[f"{res['resourceType']}/{res['id']}"] = ext["valueUri"]
    return out


def test_each_call_is_recorded_as_it_was_answered(db_app, database):
    replayed = replay_fixtures(db_app.test_client())
    assert state_of(db_app).audit.failures.value == 0
    calls = table_rows(database, AuditCall)
    orders, cards = table_rows(database, AuditOrder), table_rows(database, AuditCard)
    assert len(calls) == len(CASES)
    version = state_of(db_app).knowledge.version
    for r, call in zip(replayed, sorted(calls, key=lambda c: c["id"]), strict=False):
        cid = r.case["id"]
        assert call["hook_instance"] == r.request["hookInstance"], cid
        assert (call["status"], call["service_id"], call["knowledge_version"]) == (r.status, "vcf-order-select", version)
        assert call["latency_ms"] > 0
        assert call["called_at"].tzinfo is not None
        assert abs(call["called_at"] - datetime.now(UTC)) < timedelta(minutes=5)
        if r.status != 200:
            assert call["issue_code"] == r.response["issue"][0]["code"], cid
            assert call["patient_hmac"] is None
            assert not [o for o in orders if o["call_id"] == call["id"]]
            continue
        # Orders: the selected ones, in order, with the manifest's PAMA rating and the consult id sent.
        mine = sorted((o for o in orders if o["call_id"] == call["id"]), key=lambda o: o["position"])
        selected = r.selected_orders()
        assert [o["code"] for o in mine] == [s["code"]["coding"][0]["code"] for s in selected], cid
        expected = [r.case["expect"]["ratings"][f"ServiceRequest/{s['id']}"] for s in selected]
        assert [o["pama_rating"] for o in mine] == expected, cid
        sent = _consult_ids(r.response)
        assert [o["consult_id"] for o in mine] == [sent.get(f"ServiceRequest/{s['id']}") for s in selected], cid
        for o in mine:
            # A rated order names its variant; a variant may apply with the rating withheld
            # (an order that misses the fractured region, decision-rules.md §6.8).
            assert o["pama_rating"] is None or o["variant"] is not None, cid
            if o["pama_rating"] is not None and o["variant"] != "LBP-4":
                assert o["variant"] == r.case["expect"]["variant"], cid
        # Cards: every card sent, with indicator, summary and suggestion uuids.
        mine_cards = {c["uuid"]: c for c in cards if c["call_id"] == call["id"]}
        assert set(mine_cards) == {c["uuid"] for c in r.response["cards"]}, cid
        for card in r.response["cards"]:
            row = mine_cards[card["uuid"]]
            assert (row["indicator"], row["summary"]) == (card["indicator"], card["summary"])
            assert row["suggestions"] == [s["uuid"] for s in card.get("suggestions", ())]
            assert row["kind"] and row["kind"] != "unknown"
        assert sorted(c["indicator"] for c in mine_cards.values()) in [
            sorted(r.case["expect"]["indicators"]), *map(sorted, r.case["expect"].get("acceptable_indicators", []))]


def _names(resource: dict) -> list[str]:
    return [part for n in resource.get("name", ()) for part in [n.get("family"), *n.get("given", ())] if part]


def test_no_patient_id_name_or_token_is_stored(db_app, database):
    client = db_app.test_client()
    replayed = replay_fixtures(client)
    with_token = dict(replayed[0].request, fhirAuthorization={
        "access_token": "eyJhbGciOiJub25lIn0.secret-token", "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/*.read", "subject": "cds-service"})
    assert client.post(SERVICE_URL, json=with_token).status_code == 200
    cards = [c for r in replayed if r.status == 200 for c in r.response["cards"]]
    assert post_feedback(client, overridden(cards[0]["uuid"], comment="see note")).status_code == 200
    stored = dump_text(database)
    patients = {r.request["context"]["patientId"] for r in replayed if r.status == 200}
    names = {n for r in replayed for n in _names((r.request.get("prefetch") or {}).get("patient") or {})}
    assert names, "fixtures have named patients"
    for secret in [*patients, *names, "secret-token"]:
        assert secret not in stored


def test_patient_is_a_keyed_hash_stable_per_patient(db_app, database):
    client = db_app.test_client()
    replayed = replay_fixtures(client, [c for c in CASES if c["id"] == "v1-new-vcf-mri-with-contrast"] * 2
                               + [c for c in CASES if c["id"] == "v1-new-vcf-mri-without"])
    hashes = [c["patient_hmac"] for c in sorted(table_rows(database, AuditCall), key=lambda c: c["id"])]
    key = state_of(db_app).audit.key
    expected = [patient_hash(key, r.request.get("fhirServer"), r.request["context"]["patientId"]) for r in replayed]
    assert hashes == expected
    assert hashes[0] == hashes[1] != hashes[2]
    assert patient_hash(b"another key" * 4, replayed[0].request.get("fhirServer"),
                        replayed[0].request["context"]["patientId"]) != hashes[0]


def _digest(resp) -> list[tuple[str, str]]:
    return sorted((c["indicator"], c["summary"]) for c in resp.get_json()["cards"])


def test_database_down_the_hook_still_answers_and_counts_the_failure(caplog):
    healthy = make_app().test_client()
    down = make_app(**DOWN_DATABASE)
    client = down.test_client()
    caplog.clear()
    for n, case in enumerate(c for c in CASES if c["expect"]["status"] == 200):
        body = (FIXTURES / case["file"]).read_bytes()
        resp = client.post(SERVICE_URL, data=body, content_type="application/json")
        assert resp.status_code == 200, case["id"]
        assert _digest(resp) == _digest(healthy.post(SERVICE_URL, data=body, content_type="application/json"))
        assert state_of(down).audit.failures.value == n + 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "audit record of a vcf-order-select call not written (OperationalError)" in logged
    for case in CASES:
        assert load_json(FIXTURES / case["file"])["context"]["patientId"] not in logged
    assert "secret" not in logged
    state_of(down).database.dispose()


def test_database_down_feedback_is_503_with_retry_after():
    app = make_app(**DOWN_DATABASE)
    resp = post_feedback(app.test_client(), overridden("4e0a3a1e-3283-4575-ab82-028d55fe2719"))
    assert resp.status_code == 503
    assert int(resp.headers["Retry-After"]) > 0
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "transient"
    state_of(app).database.dispose()


def test_failed_audit_write_leaves_no_partial_record(db_app, database, caplog):
    client = db_app.test_client()
    with database.transaction() as conn:
        conn.execute(text("DROP TABLE audit_card"))
    body = (FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json").read_bytes()
    resp = client.post(SERVICE_URL, data=body, content_type="application/json")
    assert resp.status_code == 200 and resp.get_json()["cards"]
    assert state_of(db_app).audit.failures.value == 1
    # One transaction: the call and its orders were rolled back with the cards.
    assert table_rows(database, AuditCall) == [] and table_rows(database, AuditOrder) == []


def test_purge_deletes_what_is_older_than_the_retention(db_app, database, db_config, monkeypatch, capsys):
    now = datetime.now(UTC)
    for days_ago in (400, 366, 10, 0):
        call = {"called_at": now - timedelta(days=days_ago), "service_id": "vcf-order-select",
                "hook_instance": f"h-{days_ago}", "patient_hmac": None, "status": 200, "issue_code": None,
                "latency_ms": 1.0, "knowledge_version": "test"}
        write_record(database, CallRecord(call, [{"position": 0, "code_system": None, "code": "72148",
                                                  "procedure": None, "variant": None, "scenario": None,
                                                  "acr_category": None, "provenance": None, "pama_rating": None,
                                                  "consult_id": None}],
                                          [{"uuid": f"00000000-0000-4000-8000-{days_ago:012d}", "kind": "red-flag",
                                            "indicator": "critical", "summary": "s", "suggestions": []}]))
    client = db_app.test_client()
    assert post_feedback(client, overridden("00000000-0000-4000-8000-000000000400")).status_code == 200
    with database.transaction() as conn:
        conn.execute(Feedback.__table__.update().values(received_at=now - timedelta(days=400)))
    assert post_feedback(client, overridden("00000000-0000-4000-8000-000000000010")).status_code == 200
    for key, value in env_for(db_config).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VCF_CDS_AUDIT_RETENTION_DAYS", "365")

    assert main(["purge", "--dry-run"]) == 0
    assert "would delete 2 audit records of calls and 1 feedback entries older than 365 days" in capsys.readouterr().out
    assert len(table_rows(database, AuditCall)) == 4

    assert main(["purge"]) == 0
    assert "deleted 2 audit records of calls and 1 feedback entries" in capsys.readouterr().out
    assert sorted(c["hook_instance"] for c in table_rows(database, AuditCall)) == ["h-0", "h-10"]
    assert len(table_rows(database, AuditOrder)) == 2 and len(table_rows(database, AuditCard)) == 2
    assert [f["card_uuid"] for f in table_rows(database, Feedback)] == ["00000000-0000-4000-8000-000000000010"]

    assert main(["purge", "--days", "5"]) == 0
    assert [c["hook_instance"] for c in table_rows(database, AuditCall)] == ["h-0"]


@pytest.mark.parametrize("days", ["0", "-3", "x"])
def test_purge_refuses_a_retention_that_is_not_positive(days, capsys):
    with pytest.raises(SystemExit):
        main(["purge", "--days", days])
    assert "at least 1" in capsys.readouterr().err
