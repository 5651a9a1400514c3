"""The "Why this advice?" link on every card and the page behind it, through the Flask test client.

What a clinician (and an EHR) would notice: each card carries one absolute link; the page
names the order, its rating, the variant and the facts behind it, the whole rating table
with the ordered row marked, what is unconfirmed and the guideline; an expired or forged
link is a plain 403; any worker sharing the database can answer the link.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import re
import shutil
import time
from urllib.parse import urlsplit

import pytest
from conftest import FIXTURES, load_json, make_app
from sqlalchemy import text

from cds_service.app import state_of
from cds_service.decision.knowledge import DEFAULT_DIR
from cds_service.decision.render import RenderOptions
from cds_service.pipeline import evaluate
from cds_service.protocol.models import check_response
from cds_service.security.links import ExplainLinks, InvalidLink, link_secret
from cds_service.settings import Settings, SettingsError
from cds_service.store.audit import build_record, write_record

SELECT_URL = "/cds-services/vcf-order-select"
CASES = [c for c in load_json(FIXTURES / "cases.json") if c["expect"]["status"] == 200]
DOI = "https://doi.org/10.1016/j.jacr.2023.02.015"


def post_case(client, case_id: str, body: dict | None = None, **kwargs) -> dict:
    body = body if body is not None else load_json(FIXTURES / "requests" / f"{case_id}.json")
    resp = client.post(SELECT_URL, data=json.dumps(body), content_type="application/json", **kwargs)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    return resp.get_json()


def link_of(card: dict) -> str:
    (link,) = card["links"]
    return link["url"]


def local(url: str) -> str:
    """The path and query of a link, to request it through the test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def page_text(resp) -> str:
    """The page as a reader sees it: tags removed, entities decoded, whitespace collapsed."""
    body = re.sub(r"<(style|svg)\b.*?</\1>", " ", resp.get_data(as_text=True), flags=re.S)
    body = re.sub(r"</?(code|strong|em|a)\b[^>]*>", "", body)  # inline: no word break
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def card_of_kind(client, case_id: str, kind_summary: str, body: dict | None = None) -> dict:
    cards = post_case(client, case_id, body)["cards"]
    return next(c for c in cards if kind_summary in c["summary"])


def open_page(client, card: dict):
    resp = client.get(local(link_of(card)))
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "text/html"
    return resp


# ------------------------------------------------------------------------------ the link


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_every_card_links_to_its_page_without_patient_data(client, case):
    body = load_json(FIXTURES / case["file"])
    payload = post_case(client, case["id"], body)
    assert check_response(payload) == []
    patient = body["context"]["patientId"]
    for card in payload["cards"]:
        (link,) = card["links"]
        assert (link["label"], link["type"]) == ("Why this advice?", "absolute")
        assert link["url"].startswith("http://localhost/explain?token=")
        assert patient not in link["url"]
        # The signed payload is the card's uuid and nothing else.
        token = urlsplit(link["url"]).query.removeprefix("token=")
        head = token.split(".")[0]
        assert json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))) == card["uuid"]


def test_links_are_built_on_the_public_base_url_when_set():
    client = make_app(PUBLIC_BASE_URL="https://cds.example.org/vcf/").test_client()
    card = post_case(client, "v1-new-vcf-mri-with-contrast")["cards"][0]
    assert link_of(card).startswith("https://cds.example.org/vcf/explain?token=")


def test_links_follow_the_host_the_request_came_in_on(client):
    card = post_case(client, "v1-new-vcf-mri-with-contrast", base_url="https://ehr-gw.example.net:8443")["cards"][0]
    assert link_of(card).startswith("https://ehr-gw.example.net:8443/explain?token=")
    assert client.get(local(link_of(card))).status_code == 200


def test_evaluate_without_the_link_option_sends_no_links(knowledge, schemas):
    body = load_json(FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json")
    out = evaluate(knowledge, schemas, body, service_id="vcf-order-select", options=RenderOptions())
    assert out.rendered.response["cards"] and all("links" not in c for c in out.rendered.response["cards"])


@pytest.mark.parametrize("name,value", [("PUBLIC_BASE_URL", "cds.example.org"), ("PUBLIC_BASE_URL", "ftp://x.org"),
                                        ("PUBLIC_BASE_URL", "https://x.org/?a=b"), ("EXPLAIN_LINK_SECRET", "short"),
                                        ("EXPLAIN_LINK_TTL_SECONDS", "0"), ("EXPLAIN_LINK_TTL_SECONDS", "86401")])
def test_unusable_link_settings_are_refused_by_name(name, value):
    with pytest.raises(SettingsError, match=f"VCF_CDS_{name}"):
        make_app(**{name: value})


def test_configured_secret_makes_links_valid_across_deployments():
    a = Settings.load({"EXPLAIN_LINK_SECRET": "s" * 40})
    links = ExplainLinks(link_secret(a, b"audit key one" * 3), 60)
    other_host = ExplainLinks(link_secret(a, b"audit key two" * 3), 60)
    uuid = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
    assert other_host.card_uuid(links.token(uuid)) == uuid
    derived = ExplainLinks(link_secret(Settings.load({}), b"audit key one" * 3), 60)
    with pytest.raises(InvalidLink):
        derived.card_uuid(links.token(uuid))


# ------------------------------------------------------------------------------ the page


def test_page_shows_the_order_rating_variant_facts_table_and_citation(client):
    body = load_json(FIXTURES / "requests" / "seed-001-v3-ct-with-contrast.json")
    card = card_of_kind(client, "seed-001-v3-ct-with-contrast", "Use CT thoracic spine WITHOUT contrast", body)
    resp = open_page(client, card)
    page = page_text(resp)
    for phrase in [
        "Why this advice?", card["summary"],
        "Order code CPT 72129", "ACR rating Usually not appropriate", "PAMA rating sent Not appropriate (not-appropriate)",
        "Source of the rating SEED", "Variant V3: New back pain with history of one or more VCFs. Initial imaging.",
        # facts: code, fact, element, timing (days before the order, not a date)
        "ICD-10-CM M54.6 Pain in thoracic spine back pain Condition.code onset 7 days before the order",
        "SNOMED CT 161891005 Backache back pain ServiceRequest.reasonCode",
        "CPT 22514", "Procedure.code performed 732 days (about 2.0 years) before the order",
        "Ordered CT spine area of interest with IV contrast Usually not appropriate",
        "Khan MA, et al. ACR Appropriateness Criteria® Management of Vertebral Compression Fractures: 2022 Update.",
    ]:
        assert phrase in page, phrase
    markup = resp.get_data(as_text=True)
    assert f'href="{DOI}"' in markup
    assert markup.count('class="ordered"') == 1
    # V3's six ratings: one row each; bone scan is drawn with three radiation icons.
    ratings = markup.split('class="ratings"')[1].split("</table>")[0]
    assert ratings.count("<tr") == 7
    bone = next(r for r in ratings.split("<tr")[1:] if "Bone scan whole body" in r)
    assert bone.count('class="rrl-icon"') == 3 and "3 of 5 (1-10 mSv adult effective dose)" in html.unescape(bone)
    mri = next(r for r in ratings.split("<tr")[1:] if "MRI spine area of interest without IV contrast" in r)
    assert "rrl-icon" not in mri and ">O</span>" in mri and "none: no ionizing radiation (0 mSv)" in mri
    # Nothing that names the patient or their resources.
    for secret in [body["context"]["patientId"], *[e["resource"]["id"] for e in body["prefetch"]["conditions"]["entry"]]]:
        assert secret not in markup


def test_red_flag_card_explains_every_order_and_the_routing_variant(client):
    card = card_of_kind(client, "seed-000-neuro-red-flags-mri", "")
    assert card["indicator"] == "critical"
    page = page_text(open_page(client, card))
    for phrase in ["This advice concerns every order sent with it", "Variant LBP-4",
                   "Neurologic red flags in the record outrank every variant", "neurologic red flag",
                   "ACR rating Usually appropriate", "PAMA rating sent Appropriate (appropriate)",
                   "What is unconfirmed", "the link to ACR Appropriateness Criteria: Low Back Pain",
                   "(link unconfirmed)", "Ordered MRI spine area of interest without and with IV contrast"]:
        assert phrase in page, phrase


def test_missing_facts_page_says_why_no_variant_and_what_to_record(client):
    card = card_of_kind(client, "seed-003-v6-augmentation", "")
    resp = open_page(client, card)
    page = page_text(resp)
    # The guideline is the one whose criteria were applied, not the red-flag routing topic.
    assert f'href="{DOI}"' in resp.get_data(as_text=True) and "Low Back Pain" not in page
    assert "No variant chosen." in page
    assert "The record does not say which ACR variant applies, so the order was not rated." in page
    assert "bone marrow edema or intravertebral cleft on MRI" in page
    assert "Variants that would apply: Variant V6" in page
    assert "PAMA rating sent none: the order was not rated" in page
    assert "All ratings of variant" not in page


def test_advisory_card_explains_its_own_order(client):
    card = card_of_kind(client, "seed-004-coagulopathy", "Before vertebral augmentation")
    page = page_text(open_page(client, card))
    assert "This advice concerns every order" not in page
    assert "Variant V7" in page and "coagulopathy" in page
    assert "the title of ACR variant V7 (not confirmed in the ACR's own wording)" in page


def test_unconfirmed_order_code_and_secondary_ratings_are_listed(client):
    body = load_json(FIXTURES / "requests" / "seed-004-v7-augmentation.json")
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["code"] = {"coding": [{"system": "http://snomed.info/sct", "code": "183546007",
                                 "display": "Neurosurgical referral (procedure)"}]}
    cards = post_case(client, "seed-004-v7-augmentation", body)["cards"]
    page = page_text(open_page(client, cards[0]))
    assert "the order code SNOMED CT 183546007 (unconfirmed code)" in page
    assert "Ordered Surgical consultation Usually appropriate" in page

    card = card_of_kind(client, "v8-pathologic-augmentation", "")
    page = page_text(open_page(client, card))
    assert "the rating of Radiation oncology consultation in variant V8: from a third-party summary" in page
    assert "ACR rating not rated" in page and "PAMA rating sent No criteria apply (no-criteria-apply)" in page
    assert "The ordered procedure, Percutaneous vertebral augmentation, is not in this variant's table." in page


def test_page_is_plain_html_that_leaks_no_token():
    client = make_app().test_client()
    card = post_case(client, "v1-new-vcf-mri-with-contrast")["cards"][0]
    resp = open_page(client, card)
    assert "<script" not in resp.get_data(as_text=True)
    assert "script-src" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"


def test_the_token_never_reaches_the_log(client, caplog):
    caplog.set_level("DEBUG")
    card = post_case(client, "v1-new-vcf-mri-with-contrast")["cards"][0]
    token = urlsplit(link_of(card)).query.removeprefix("token=")
    open_page(client, card)
    client.get(local(link_of(card))[:-3] + "xyz")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "explanation page: 403" in logged
    assert token not in logged and token[:40] not in logged


# --------------------------------------------------------------------- 403, 404, 503


def _assert_plain_error(resp, status: int, heading: str) -> str:
    assert resp.status_code == status
    assert resp.mimetype == "text/html"
    text_ = resp.get_data(as_text=True)
    assert f"<h1>{heading}</h1>" in text_
    assert "Traceback" not in text_ and "itsdangerous" not in text_ and "Signature" not in text_
    return text_


def test_expired_link_is_403_and_says_no_more_than_a_forged_one(client, app):
    card = post_case(client, "v1-new-vcf-mri-with-contrast")["cards"][0]
    links = state_of(app).explain_links
    start = time.time()
    links.clock = lambda: start + links.ttl_seconds - 5
    assert client.get(local(link_of(card))).status_code == 200
    links.clock = lambda: start + links.ttl_seconds + 2
    expired = _assert_plain_error(client.get(local(link_of(card))), 403, "This link is not valid")
    links.clock = time.time
    url = local(link_of(card))
    forged = _assert_plain_error(client.get(url[:-2] + ("AA" if not url.endswith("AA") else "BB")), 403,
                                 "This link is not valid")
    assert expired == forged


@pytest.mark.parametrize("query", ["", "?token=", "?token=abc", "?token=" + "x" * 5000, "?token=eyJ9.%00.%FF"])
def test_malformed_token_is_403(client, query):
    _assert_plain_error(client.get("/explain" + query), 403, "This link is not valid")


def test_link_signed_by_another_deployment_is_403(tmp_path):
    card = post_case(make_app().test_client(), "v1-new-vcf-mri-with-contrast")["cards"][0]
    elsewhere = make_app(DATA_DIR=str(tmp_path / "other-site")).test_client()  # another audit key
    _assert_plain_error(elsewhere.get(local(link_of(card))), 403, "This link is not valid")


def test_valid_link_to_a_card_never_recorded_is_404(app, client):
    token = state_of(app).explain_links.token("4e0a3a1e-3283-4575-ab82-028d55fe2719")
    _assert_plain_error(client.get(f"/explain?token={token}"), 404, "Advice not found")


def test_database_unreadable_is_503_with_retry_after(db_app, database):
    client = db_app.test_client()
    card = post_case(client, "v1-new-vcf-mri-with-contrast")["cards"][0]
    with database.transaction() as conn:
        conn.execute(text("DROP TABLE audit_card"))
    resp = client.get(local(link_of(card)))
    _assert_plain_error(resp, 503, "Explanation not available right now")
    assert int(resp.headers["Retry-After"]) > 0


# ------------------------------------------------------------- workers and knowledge versions


def test_another_worker_on_the_same_database_answers_the_link(app_factory):
    issuing, other = app_factory(), app_factory()
    card = post_case(issuing.test_client(), "seed-001-v3-ct-with-contrast")["cards"][0]
    page = page_text(open_page(other.test_client(), card))
    assert "ACR rating Usually not appropriate" in page and "Variant V3" in page


def test_page_says_when_the_knowledge_changed_since_the_advice(tmp_path):
    card = post_case(make_app().test_client(), "v1-new-vcf-mri-with-contrast")["cards"][0]
    changed = tmp_path / "knowledge"
    shutil.copytree(DEFAULT_DIR, changed)
    services = changed / "services.json"
    services.write_text(services.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    later = make_app(KNOWLEDGE_DIR=str(changed))
    assert state_of(later).knowledge.version != state_of(make_app()).knowledge.version
    page = page_text(open_page(later.test_client(), card))
    assert "The knowledge has changed since this advice was given" in page
    assert "ACR rating Usually not appropriate" in page
    assert "knowledge has changed" not in page_text(open_page(make_app().test_client(), card))


def test_record_written_before_evidence_was_kept_still_has_a_page(app, knowledge, schemas):
    body = load_json(FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json")
    out = evaluate(knowledge, schemas, copy.deepcopy(body), service_id="vcf-order-select", options=RenderOptions())
    state = state_of(app)
    write_record(state.database, build_record(out, service_id="vcf-order-select", latency_ms=1.0,
                                              knowledge_version=knowledge.version, key=state.audit.key))
    card = out.rendered.response["cards"][0]
    token = state.explain_links.token(card["uuid"])
    resp = app.test_client().get(f"/explain?token={token}")
    assert resp.status_code == 200
    page = page_text(resp)
    assert "ACR rating Usually not appropriate" in page and "Variant V1" in page
    assert "recorded before the service kept the facts behind its advice" in page


def test_migration_0002_keeps_records_written_before_it(db_app, database):
    """Downgrade to 0001, write a record of that schema, upgrade: the record is kept and its
    link opens a page (the facts behind it were not kept then, and the page says so)."""
    from alembic import command

    from cds_service.store.db import _alembic_config, head_revision

    def migrate(step, revision: str) -> None:
        cfg = _alembic_config()
        with database.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, revision)

    migrate(command.downgrade, "0001")
    assert database.revision() == "0001"
    with database.transaction() as conn:
        call_id = conn.execute(text(
            "INSERT INTO audit_call (called_at, service_id, hook_instance, status, latency_ms, knowledge_version) "
            "VALUES (:t, 'vcf-order-select', 'h-old', 200, 1.0, 'old') RETURNING id"),
            {"t": "2026-11-01 10:00:00"}).scalar_one()
        conn.execute(text("INSERT INTO audit_order (call_id, position, code_system, code, procedure, variant, scenario, "
                          "acr_category, provenance, pama_rating) VALUES (:c, 0, 'http://www.ama-assn.org/go/cpt', "
                          "'72158', 'mri-spine-without-and-with', 'V1', 'selected', 'UNA', 'OFFICIAL', 'not-appropriate')"),
                     {"c": call_id})
        conn.execute(text("INSERT INTO audit_card (uuid, call_id, kind, indicator, summary, suggestions) VALUES "
                          "('4e0a3a1e-3283-4575-ab82-028d55fe2719', :c, 'not-appropriate', 'warning', 'old card', '[]')"),
                     {"c": call_id})
    migrate(command.upgrade, "head")
    assert database.revision() == head_revision()
    token = state_of(db_app).explain_links.token("4e0a3a1e-3283-4575-ab82-028d55fe2719")
    page = page_text(db_app.test_client().get(f"/explain?token={token}"))
    for phrase in ["old card", "Order code CPT 72158", "ACR rating Usually not appropriate", "Variant V1",
                   "Ordered MRI spine area of interest without and with IV contrast",
                   "recorded before the service kept the facts behind its advice",
                   "The knowledge has changed since this advice was given"]:
        assert phrase in page, phrase
