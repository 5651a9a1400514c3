"""Radiology reports, medications and labs read for the decision (issue 13), on the fixture
requests of fhir_fixtures/cases_reading.py: what the clinician sees on the cards."""

from __future__ import annotations

import base64
import copy
import json
from urllib.parse import urlsplit

from conftest import counter_ids, make_app, request_body

from cds_service.decision.render import RenderOptions
from cds_service.pipeline import evaluate

SERVICE = "vcf-order-select"
SENTENCE = "Extensive bone marrow edema is present throughout the vertebral body on STIR images"


def run(knowledge, schemas, body):
    return evaluate(knowledge, schemas, body, service_id=SERVICE, options=RenderOptions(new_id=counter_ids()))




def cards(out):
    return out.rendered.response["cards"]


def details(out) -> str:
    return "\n".join(c["detail"] for c in cards(out))


def test_seed_003_mri_report_gives_variant_6_and_augmentation_usually_appropriate(knowledge, schemas):
    out = run(knowledge, schemas, request_body("reading-seed-003-mri-report-v6"))
    [od] = out.decision.orders
    assert od.variant is not None and od.variant.id == "V6"
    assert od.rating is not None and od.rating.category == "UA"
    assert od.pama == "appropriate"
    [card] = cards(out)
    assert card["indicator"] == "info"
    # The edema is shown as the sentence it was read from, marked as unconfirmed report text.
    assert f"“{SENTENCE}" in card["detail"]
    assert "(from report text, unconfirmed)" in card["detail"]
    assert "DiagnosticReport/dr-seed003-mri-t-spine, 2026-11-09" in card["detail"]
    assert "no MRI showing bone marrow edema" not in card["detail"]
    skipped = out.rendered.response["extension"]["vcf-cds-hooks"]["skippedResources"]
    assert {"location": "prefetch.radiologyReports", "resource_type": "DiagnosticReport",
            "resource_id": "dr-seed003-mri-t-spine",
            "diagnostic": "content type not read (only text/plain): application/pdf"} in skipped


def test_without_the_report_seed_003_is_not_rated(knowledge, schemas):
    body = request_body("reading-seed-003-mri-report-v6")
    del body["prefetch"]["radiologyReports"]
    out = run(knowledge, schemas, body)
    [od] = out.decision.orders
    assert od.pama is None
    assert "Not available to this service, so not checked: radiology reports." in details(out)


def test_edema_at_another_level_than_the_fracture_is_not_variant_6(knowledge, schemas):
    body = request_body("reading-seed-003-mri-report-v6")
    report = body["prefetch"]["radiologyReports"]["entry"][0]["resource"]
    report["conclusion"] = "Acute compression fracture of L3 with extensive bone marrow edema at L3."
    body["prefetch"]["conditions"]["entry"][1]["resource"]["code"]["text"] = "Acute T8 compression fracture"
    out = run(knowledge, schemas, body)
    [od] = out.decision.orders
    # The MRI names its own acute L3 fracture, so the edema sits at a current fracture: still V6.
    assert od.variant is not None and od.variant.id == "V6"
    report["conclusion"] = "Chronic healed L3 compression deformity. Bone marrow edema at L3."
    out = run(knowledge, schemas, body)
    [od] = out.decision.orders
    assert od.pama is None  # edema at a healed L3, the current fracture is T8: not variant 6


def test_negated_edema_is_not_read_as_edema(knowledge, schemas):
    body = request_body("reading-seed-003-mri-report-v6")
    report = body["prefetch"]["radiologyReports"]["entry"][0]["resource"]
    report["conclusion"] = "Acute T8 compression fracture. No bone marrow edema. No intravertebral cleft."
    out = run(knowledge, schemas, body)
    [od] = out.decision.orders
    assert od.pama is None
    # A spine MRI was read: no 'no MRI evidence' reminder and no MRI suggestion.
    assert "no MRI showing bone marrow edema" not in details(out)
    assert not any(s for c in cards(out) for s in c.get("suggestions", ()) if "MRI" in s["label"])


def test_report_sentence_is_escaped_on_the_card(knowledge, schemas):
    body = request_body("reading-seed-003-mri-report-v6")
    report = body["prefetch"]["radiologyReports"]["entry"][0]["resource"]
    report["conclusion"] = "Acute T8 fracture with extensive bone marrow edema <img src=x> at T8 [see](http://x)."
    out = run(knowledge, schemas, body)
    detail = details(out)
    # CommonMark escapes: no raw HTML, no link can form.
    assert detail.count("<img") == detail.count("\\<img src=x\\>") == 1
    assert "[see](" not in detail and "\\[see\\]" in detail


def test_presented_form_text_is_read_when_there_is_no_conclusion(knowledge, schemas):
    body = request_body("reading-seed-003-mri-report-v6")
    report = body["prefetch"]["radiologyReports"]["entry"][0]["resource"]
    text = "FINDINGS: Acute T8 compression fracture. STIR hyperintensity in the T8 vertebral body."
    report["presentedForm"] = [{"contentType": "text/plain; charset=utf-8",
                                "data": base64.b64encode(text.encode()).decode()}]
    out = run(knowledge, schemas, body)
    [od] = out.decision.orders
    assert od.pama == "appropriate"


def test_no_spine_mri_on_record_suggests_an_mri_without_contrast_first(knowledge, schemas):
    out = run(knowledge, schemas, request_body("reading-seed-003-no-spine-mri"))
    checklist = next(c for c in cards(out) if c["summary"].startswith("Before vertebral augmentation"))
    assert "order an MRI of the thoracic spine without contrast first" in checklist["summary"]
    assert "no MRI showing bone marrow edema" not in checklist["detail"]
    [suggestion] = checklist["suggestions"]
    [action] = suggestion["actions"]
    assert action["type"] == "create"
    assert action["resource"]["code"]["coding"][0]["code"] == "72146"


def test_synthea_alendronate_record_gets_no_therapy_reminder(knowledge, schemas):
    body = request_body("reading-synthea-willia-alendronate-kyphoplasty")
    out = run(knowledge, schemas, body)
    assert "Osteoporosis therapy" not in details(out)
    assert "Alendronic acid 10 MG Oral Tablet (RxNorm 904419): osteoporosis therapy" in details(out)
    # The same record without its medications: the reminder, and the card says what was not read.
    del body["prefetch"]["medicationRequests"]
    out = run(knowledge, schemas, body)
    assert "**Osteoporosis therapy**: none on record" in details(out)
    assert "Not available to this service, so not checked: radiology reports, medications, INR and platelet results." \
        in details(out)
    # With the medications read and no reports: the card asking for MRI edema says it could not read them.
    body = request_body("reading-synthea-willia-alendronate-kyphoplasty")
    [card] = cards(run(knowledge, schemas, body))
    assert "Radiology reports were not available to this service" in card["detail"]


def test_synthea_mri_fixture_carries_the_medication_requests(knowledge, schemas):
    body = request_body("synthea-willia-runolfsdottir")
    entries = body["prefetch"]["medicationRequests"]["entry"]
    assert [e["resource"]["medicationCodeableConcept"]["coding"][0]["code"] for e in entries] == ["904419"]
    out = run(knowledge, schemas, body)
    assert cards(out) == []


def test_inr_2_8_two_days_before_kyphoplasty_is_named_with_the_sir_threshold(knowledge, schemas):
    out = run(knowledge, schemas, request_body("reading-inr-2-8-kyphoplasty"))
    [card] = cards(out)
    assert card["indicator"] == "warning"
    assert "INR 2.8 is out of range" in card["summary"]
    assert "INR 2.8 on 2026-11-14, outside the threshold for this procedure: INR 1.5-1.8 or less" in card["detail"]
    assert "Patel IJ" in card["detail"] and "J Vasc Interv Radiol 2019" in card["detail"]
    assert "warfarin sodium 5 MG Oral Tablet (RxNorm 855332)" in card["detail"]
    assert "Platelet count" not in card["detail"]  # 212 x 10^9/L is within the threshold
    assert out.decision.orders[0].pama == "appropriate"


def test_low_platelets_are_named_too(knowledge, schemas):
    body = request_body("reading-inr-2-8-kyphoplasty")
    labs = body["prefetch"]["coagulationLabs"]["entry"]
    labs[0]["resource"]["valueQuantity"]["value"] = 1.1
    labs[1]["resource"]["valueQuantity"]["value"] = 38
    [card] = cards(run(knowledge, schemas, body))
    assert "Platelet count 38 x 10^9/L on 2026-11-14" in card["detail"]
    assert "platelets 50 x 10^9/L or more" in card["detail"]
    assert "INR 1.1" not in card["detail"]


def test_old_labs_are_not_used(knowledge, schemas):
    body = request_body("reading-inr-2-8-kyphoplasty")
    for e in body["prefetch"]["coagulationLabs"]["entry"]:
        e["resource"]["effectiveDateTime"] = "2026-08-01T08:00:00-05:00"
    assert "INR 2.8" not in details(run(knowledge, schemas, body))


def test_edema_at_a_previously_augmented_level_is_not_a_new_fracture(knowledge, schemas):
    out = run(knowledge, schemas, request_body("reading-edema-at-treated-level"))
    [od] = out.decision.orders
    assert od.pama is None
    assert "the marrow edema in the report is at L1, a level treated by vertebral augmentation before" in details(out)
    assert "no MRI showing bone marrow edema" not in details(out)


def test_same_study_recently_names_the_earlier_report(knowledge, schemas):
    out = run(knowledge, schemas, request_body("reading-same-study-mri-thoracic"))
    [card] = cards(out)
    assert card["indicator"] == "info"
    assert card["summary"] == "Same study reported 2026-11-09: read that report first"
    assert "DiagnosticReport/dr-seed003-mri-t-spine" in card["detail"]
    assert out.decision.orders[0].pama == "appropriate"


def test_incidental_fracture_on_a_chest_ct_without_back_pain_reads_as_asymptomatic(knowledge, schemas):
    out = run(knowledge, schemas, request_body("reading-incidental-fracture-chest-ct"))
    [od] = out.decision.orders
    assert od.variant is not None and od.variant.id == "V5"
    warning = next(c for c in cards(out) if c["indicator"] == "warning")
    assert "“Incidental age-indeterminate compression deformity of T7" in warning["detail"]
    assert "(from report text, unconfirmed): asymptomatic" in warning["detail"]
    # With recent back pain on record the same report does not make the fracture asymptomatic.
    body = request_body("reading-incidental-fracture-chest-ct")
    pain = copy.deepcopy(body["prefetch"]["conditions"]["entry"][0])
    pain["resource"]["id"] = "c-pain"
    pain["resource"]["code"] = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.6",
                                            "display": "Pain in thoracic spine"}]}
    pain["resource"]["onsetDateTime"] = "2026-11-02"
    body["prefetch"]["conditions"]["entry"].append(pain)
    [od] = run(knowledge, schemas, body).decision.orders
    assert od.variant is None or od.variant.id != "V5"


def test_a_request_without_the_reading_keys_still_works_and_names_what_was_not_read(knowledge, schemas):
    out = run(knowledge, schemas, request_body("seed-004-v7-augmentation"))
    assert out.decision.orders[0].pama == "appropriate"
    assert "Not available to this service, so not checked: radiology reports, medications, INR and platelet results." \
        in details(out)


def test_why_this_advice_page_shows_the_report_sentence_escaped_and_unconfirmed(client):
    body = request_body("reading-seed-003-mri-report-v6")
    report = body["prefetch"]["radiologyReports"]["entry"][0]["resource"]
    report["conclusion"] = "Acute T8 compression fracture with extensive bone marrow edema at T8 <b>bold</b>."
    resp = client.post("/cds-services/vcf-order-select", json=body)
    assert resp.status_code == 200
    [card] = resp.get_json()["cards"]
    url = urlsplit(card["links"][0]["url"])
    page = client.get(f"{url.path}?{url.query}")
    assert page.status_code == 200
    markup = page.get_data(as_text=True)
    assert "<q>Acute T8 compression fracture with extensive bone marrow edema at T8 &lt;b&gt;bold&lt;/b&gt;.</q>" \
        in markup
    assert "<em>(from report text, unconfirmed)</em>" in markup
    assert "DiagnosticReport.conclusion" in markup
    assert "report 7 days before the order" in markup
    assert "the marrow edema read in DiagnosticReport.conclusion: from report text, unconfirmed" in markup
    # Still nothing that names the patient or the report.
    assert body["context"]["patientId"] not in markup and "dr-seed003-mri-t-spine" not in markup


def test_warm_up_reads_a_report_sentence_before_the_first_order(app):
    from cds_service.decision.reading import reports
    from cds_service.ops.server import warm_up

    reports.clear_cache()
    warm_up(app)
    # A report was read (and the reader built) by the warm-up, not by the first order.
    assert reports.cache_info()["size"] >= 1 and reports.cache_info()["misses"] >= 1


def test_a_drug_known_only_by_name_counts_and_is_marked_unconfirmed(knowledge, schemas):
    body = request_body("reading-synthea-willia-alendronate-kyphoplasty")
    [entry] = body["prefetch"]["medicationRequests"]["entry"]
    entry["resource"]["medicationCodeableConcept"] = {"text": "Fosamax 70 mg weekly"}
    out = run(knowledge, schemas, body)
    assert "Osteoporosis therapy" not in details(out)
    assert "Fosamax 70 mg weekly (drug name in the order, no listed RxNorm code: unconfirmed)" in details(out)


def test_a_stopped_order_counts_only_while_recent_and_says_so(knowledge, schemas):
    body = request_body("reading-synthea-willia-alendronate-kyphoplasty")
    [entry] = body["prefetch"]["medicationRequests"]["entry"]
    entry["resource"]["status"] = "stopped"
    entry["resource"]["dispenseRequest"] = {"validityPeriod": {"start": "2025-06-01", "end": "2026-06-01"}}
    out = run(knowledge, schemas, body)
    text = details(out)
    assert "Osteoporosis therapy" not in text and "(stopped " in text
    entry["resource"]["dispenseRequest"]["validityPeriod"]["end"] = "2024-06-01"
    assert "**Osteoporosis therapy**: none on record" in details(run(knowledge, schemas, body))


def test_a_malformed_report_is_skipped_and_listed(knowledge, schemas):
    body = request_body("reading-seed-003-mri-report-v6")
    bad = copy.deepcopy(body["prefetch"]["radiologyReports"]["entry"][0])
    bad["resource"]["id"] = "dr-broken"
    bad["resource"]["effectiveDateTime"] = "last Tuesday"
    body["prefetch"]["radiologyReports"]["entry"].append(bad)
    out = run(knowledge, schemas, body)
    skipped = out.rendered.response["extension"]["vcf-cds-hooks"]["skippedResources"]
    [issue] = [s for s in skipped if s.get("resource_id") == "dr-broken"]
    assert issue["location"] == "prefetch.radiologyReports.entry[1]"
    assert issue["diagnostic"].startswith("not a valid FHIR R4B DiagnosticReport")
    assert out.decision.orders[0].pama == "appropriate"  # the valid report is still read


def test_reading_keys_from_a_server_not_allowlisted_are_not_read_and_not_refused():
    body = request_body("reading-seed-003-mri-report-v6")
    for key in ("radiologyReports", "medicationRequests", "medicationStatements", "coagulationLabs"):
        del body["prefetch"][key]
    client = make_app(FHIR_ALLOWLIST="https://another-ehr.example.org/fhir").test_client()
    resp = client.post("/cds-services/vcf-order-select", json=body)
    assert resp.status_code == 200  # the record itself was sent: nothing required is missing
    assert "Not available to this service, so not checked: radiology reports, medications, INR and platelet " \
        "results." in json.dumps(resp.get_json())


def test_edema_whose_level_cannot_be_tied_to_the_fracture_is_shown_for_confirmation(knowledge, schemas):
    body = request_body("reading-seed-003-mri-report-v6")
    body["prefetch"]["conditions"]["entry"][1]["resource"]["code"]["text"] = "Osteoporotic compression fracture"
    report = body["prefetch"]["radiologyReports"]["entry"][0]["resource"]
    report["conclusion"] = "Bone marrow edema is present in a mid-thoracic vertebral body."
    out = run(knowledge, schemas, body)
    [od] = out.decision.orders
    assert od.pama is None  # not variant 6 on a guess
    missing = next(c for c in cards(out) if "cannot be rated" in c["detail"])
    assert "its level could not be tied to the current fracture" in missing["detail"]
    assert "“Bone marrow edema is present in a mid-thoracic vertebral body.” (from report text, unconfirmed)" \
        in missing["detail"]
