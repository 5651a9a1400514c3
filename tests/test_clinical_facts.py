"""Which codes count for which fact, and time (decision-rules.md §6), on the fixture requests.

Each test posts a complete order-select request (fhir_fixtures/requests/facts-*.json and the
seed cases) through the pipeline and asserts what a clinician sees: card indicators and
summaries, suggestions, and the PAMA rating sent back for the order.
"""

from __future__ import annotations

import copy
import html
import json
import re
from urllib.parse import urlsplit

import pytest
from conftest import counter_ids, make_app, request_body

from cds_service.decision.render import PAMA_BASE, RenderOptions
from cds_service.pipeline import evaluate
from cds_service.settings import Settings

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"




def respond(knowledge, schemas, body, **options) -> dict:
    out = evaluate(knowledge, schemas, body, service_id="vcf-order-select",
                   options=RenderOptions(new_id=counter_ids(), **options))
    return out.rendered.response


def ratings(response: dict) -> list[str]:
    """The PAMA rating codes sent back, one per rated order."""
    out = []
    for action in response.get("systemActions", []):
        for ext in action["resource"]["extension"]:
            if ext["url"] == PAMA_BASE + "pama-rating":
                out.append(ext["valueCodeableConcept"]["coding"][0]["code"])
    return out


def cards(response: dict, indicator: str | None = None) -> list[dict]:
    return [c for c in response["cards"] if indicator is None or c["indicator"] == indicator]


def conditions(body: dict) -> list[dict]:
    return [e["resource"] for e in body["prefetch"]["conditions"]["entry"]]


def condition(body: dict, suffix: str) -> dict:
    return next(c for c in conditions(body) if c["id"].endswith(suffix))


def add_condition(body: dict, cid: str, system: str, code: str, onset: str | None = None) -> dict:
    c = copy.deepcopy(conditions(body)[0])
    c["id"] = cid
    c["code"] = {"coding": [{"system": system, "code": code}]}
    c.pop("onsetDateTime", None)
    if onset:
        c["onsetDateTime"] = onset
    body["prefetch"]["conditions"]["entry"].append({"resource": c})
    return c


def order(body: dict) -> dict:
    return body["context"]["draftOrders"]["entry"][0]["resource"]


# ---- §6.1 malignancy ------------------------------------------------------------------

def test_active_breast_cancer_routes_to_v2_where_mri_with_contrast_is_appropriate(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("facts-active-breast-cancer-v2-mri"))
    assert ratings(response) == ["appropriate"]
    assert response["cards"] == []  # no 'replace with MRI without contrast'


@pytest.mark.parametrize("code", ["C34.90", "C50.912", "C61", "C64.1", "C73", "C81.90", "C90.00", "C79.51", "C4A.9"])
def test_active_primary_and_secondary_cancers_are_malignancy(knowledge, code):
    assert "malignancy" in knowledge.terminology.memberships(ICD, code)


@pytest.mark.parametrize("code", ["C44.91", "C44.311", "D05.10", "Z85.828"])
def test_skin_carcinoma_in_situ_and_skin_cancer_history_are_not_malignancy(knowledge, code):
    memberships = knowledge.terminology.memberships(ICD, code)
    assert "malignancy" not in memberships and "malignancy-history" not in memberships


def test_skin_cancer_history_leaves_an_osteoporotic_fracture_in_v7(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("facts-skin-cancer-history-kyphoplasty"))
    assert ratings(response) == ["appropriate"]
    assert not any("radiotherap" in json.dumps(c).lower() for c in response["cards"])
    assert {c["indicator"] for c in response["cards"]} == {"info"}


def test_renal_osteodystrophy_fracture_is_not_neoplastic(knowledge, schemas):
    body = request_body("facts-renal-osteodystrophy-kyphoplasty")
    response = respond(knowledge, schemas, body)
    assert ratings(response) == []
    assert not any("V8" in json.dumps(c) or "radiotherap" in json.dumps(c).lower() for c in response["cards"])
    # The same fracture coded as neoplastic (M84.58-) is V8.
    condition(body, "-vcf")["code"] = {"coding": [{"system": ICD, "code": "M84.58XA"}]}
    assert "V8" in json.dumps(respond(knowledge, schemas, body)["cards"])


# ---- §6.2 neurologic red flags ---------------------------------------------------------

def test_incontinence_since_2012_with_chronic_back_pain_gets_no_critical_card(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("facts-chronic-incontinence-lumbar-xr"))
    assert cards(response, "critical") == []
    assert response["cards"] == [] and ratings(response) == []


def test_unspecific_symptom_counts_when_recent_or_on_the_order(knowledge, schemas):
    recent = request_body("facts-chronic-incontinence-lumbar-xr")
    condition(recent, "-ui")["onsetDateTime"] = "2026-11-06"
    assert len(cards(respond(knowledge, schemas, recent), "critical")) == 1
    on_order = request_body("facts-chronic-incontinence-lumbar-xr")
    order(on_order)["reasonCode"].append({"coding": [{"system": ICD, "code": "R32"}]})
    assert len(cards(respond(knowledge, schemas, on_order), "critical")) == 1


def test_unspecific_symptom_needs_a_spine_problem(knowledge, schemas):
    body = request_body("facts-chronic-incontinence-lumbar-xr")
    condition(body, "-ui")["onsetDateTime"] = "2026-11-06"
    body["prefetch"]["conditions"]["entry"] = [e for e in body["prefetch"]["conditions"]["entry"]
                                               if not e["resource"]["id"].endswith("-lbp")]
    order(body)["reasonCode"] = [{"coding": [{"system": SCT, "code": "165232002"}]}]
    assert cards(respond(knowledge, schemas, body), "critical") == []


def test_cauda_equina_counts_whatever_its_date(knowledge, schemas):
    body = request_body("facts-chronic-incontinence-lumbar-xr")
    add_condition(body, "c-ces", ICD, "G83.4", onset="2015-01-01")
    (card,) = cards(respond(knowledge, schemas, body), "critical")
    assert "G83.4" in card["detail"]


def test_encounter_diagnosis_of_this_encounter_is_a_red_flag(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("facts-retention-encounter-diagnosis-mri"))
    (card,) = cards(response, "critical")
    assert "R33.9" in card["detail"] and "R32" not in card["detail"]  # 2012 incontinence is not the flag
    assert ratings(response) == ["appropriate"]  # MRI without contrast, ACR Low Back Pain variant 4
    # Diagnosed at another encounter and undated: no longer a red flag.
    body = request_body("facts-retention-encounter-diagnosis-mri")
    condition(body, "-ret")["encounter"] = {"reference": "Encounter/enc-last-year"}
    assert cards(respond(knowledge, schemas, body), "critical") == []


# ---- §6.3 time ----------------------------------------------------------------------------

def test_sequela_fracture_with_old_copd_dyspnea_is_not_rated_for_kyphoplasty(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("facts-sequela-fracture-copd-kyphoplasty"))
    assert ratings(response) == []
    assert any("current vertebral fracture" in c["detail"] for c in cards(response, "info"))


def test_worsening_needs_recent_onset(knowledge, schemas):
    body = request_body("facts-sequela-fracture-copd-kyphoplasty")
    condition(body, "-vcf")["code"] = {"coding": [{"system": ICD, "code": "M80.08XA"}]}
    condition(body, "-vcf")["onsetDateTime"] = "2026-10-26"
    assert ratings(respond(knowledge, schemas, body)) == []  # a current fracture, but dyspnea since 2019
    add_condition(body, "c-kyph", ICD, "M40.204", onset="2026-11-02")
    assert ratings(respond(knowledge, schemas, body)) == ["appropriate"]  # new kyphosis: V7


def test_fracture_healed_long_ago_is_not_current(knowledge, schemas):
    body = request_body("facts-skin-cancer-history-kyphoplasty")
    condition(body, "-vcf")["code"] = {"coding": [{"system": SCT, "code": "42942008"}]}
    condition(body, "-vcf")["onsetDateTime"] = "2023-05-01"
    assert ratings(respond(knowledge, schemas, body)) == []


# ---- §6.4 fragility fracture -------------------------------------------------------------

def test_traumatic_code_in_osteoporosis_is_read_as_fragility_fracture(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("facts-fragility-traumatic-code-mri"))
    assert ratings(response) == ["appropriate"]
    (card,) = response["cards"]
    assert card["indicator"] == "info" and "fragility" in card["summary"] and "I.C.13.d.2" in card["summary"]
    assert "S32.010A" in card["detail"]
    assert not any("outside the ACR VCF criteria" in c["summary"] for c in response["cards"])


def test_traumatic_code_without_osteoporosis_stays_outside_the_criteria(knowledge, schemas):
    body = request_body("facts-fragility-traumatic-code-mri")
    body["prefetch"]["conditions"]["entry"] = [e for e in body["prefetch"]["conditions"]["entry"]
                                               if not e["resource"]["id"].endswith("-op")]
    response = respond(knowledge, schemas, body)
    assert ratings(response) == []
    assert "outside the ACR VCF criteria" in response["cards"][0]["summary"]


# ---- §6.5 infection ------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["M46.24", "M46.46", "M46.56"])
def test_spinal_infection_with_augmentation_is_critical_and_unrated(knowledge, schemas, code):
    body = request_body("facts-osteomyelitis-kyphoplasty")
    condition(body, "-osm")["code"] = {"coding": [{"system": ICD, "code": code}]}
    response = respond(knowledge, schemas, body)
    (card,) = response["cards"]
    assert card["indicator"] == "critical" and "LCD L34228" in card["detail"]
    assert "systemActions" not in response and ratings(response) == []
    (remove,) = card["suggestions"]  # the one action offered: withdraw the augmentation order
    assert [a["type"] for a in remove["actions"]] == ["delete"]
    assert remove["actions"][0]["resourceId"] == f"ServiceRequest/{order(body)['id']}"


# ---- §6.10 ratings when candidate variants agree -------------------------------------------

def test_v2_and_v4_agree_on_mri_without_and_with_contrast(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("v4-asymptomatic-malignancy"))
    assert ratings(response) == ["appropriate"] and response["cards"] == []


def test_v6_and_v7_agree_that_ablation_is_not_appropriate(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("seed-003-ablation"))
    assert ratings(response) == ["not-appropriate"]
    (card,) = response["cards"]
    assert card["indicator"] == "warning" and "V6 or V7" in card["detail"]


def test_agreement_on_appropriate_needs_variants_that_cover_every_case(knowledge, schemas):
    # V6 (marrow edema) and V7 (recent worsening) both rate augmentation Usually appropriate,
    # but a fracture with neither is in neither: no guess, the missing fact is asked for.
    response = respond(knowledge, schemas, request_body("seed-003-v6-augmentation"))
    assert ratings(response) == []
    assert "bone marrow edema" in response["cards"][0]["detail"]


# ---- §6.8 region ---------------------------------------------------------------------------

def test_cervical_mri_for_a_lumbar_fracture_is_a_mismatch(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("facts-cervical-mri-for-lumbar-fracture"))
    assert ratings(response) == []
    (card,) = response["cards"]
    assert card["indicator"] == "warning"
    assert "cervical" in card["summary"] and "lumbar" in card["summary"]


def test_lumbar_kyphoplasty_for_a_thoracic_fracture_is_a_mismatch(knowledge, schemas):
    body = request_body("facts-lumbar-kyphoplasty-for-thoracic-fracture")
    response = respond(knowledge, schemas, body)
    assert ratings(response) == []
    (warning,) = cards(response, "warning")
    assert "lumbar" in warning["summary"] and "thoracic" in warning["summary"]
    # The same patient with a thoracic kyphoplasty: V7, appropriate, no mismatch.
    order(body)["code"] = {"coding": [{"system": CPT, "code": "22513"}]}
    response = respond(knowledge, schemas, body)
    assert ratings(response) == ["appropriate"] and cards(response, "warning") == []


# ---- §6.9 asymptomatic ---------------------------------------------------------------------

def test_augmentation_for_an_asymptomatic_fracture_gets_a_warning(knowledge, schemas):
    response = respond(knowledge, schemas, request_body("facts-asymptomatic-fracture-kyphoplasty"))
    (warning,) = cards(response, "warning")
    assert "Asymptomatic" in warning["summary"] and "medical management" in warning["summary"]
    assert "appropriate" not in ratings(response)


# ---- PAMA_OFFICIAL_ONLY ----------------------------------------------------------------------

def test_official_only_sends_no_rating_for_secondary_or_seed_cells(knowledge, schemas):
    assert ratings(respond(knowledge, schemas, request_body("v2-malignancy-mri"))) == ["appropriate"]
    assert ratings(respond(knowledge, schemas, request_body("v2-malignancy-mri"), pama_official_only=True)) == []
    assert ratings(respond(knowledge, schemas, request_body("seed-001-v3-ct-without"), pama_official_only=True)) == []
    official = respond(knowledge, schemas, request_body("v1-new-vcf-mri-with-contrast"), pama_official_only=True)
    assert ratings(official) == ["not-appropriate"]


def test_official_only_is_a_setting(tmp_path):
    assert Settings.load({"PAMA_OFFICIAL_ONLY": "true"}).pama_official_only is True
    assert Settings.load({}).pama_official_only is False
    client = make_app(PAMA_OFFICIAL_ONLY="true", DATA_DIR=str(tmp_path)).test_client()
    resp = client.post("/cds-services/vcf-order-select", data=json.dumps(request_body("v2-malignancy-mri")),
                       content_type="application/json")
    assert resp.status_code == 200 and "systemActions" not in resp.get_json()


# ---- the "Why this advice?" page names the new scenarios ------------------------------------

def _page(client, body: dict, summary_part: str) -> str:
    resp = client.post("/cds-services/vcf-order-select", data=json.dumps(body), content_type="application/json")
    card = next(c for c in resp.get_json()["cards"] if summary_part in c["summary"])
    url = urlsplit(card["links"][0]["url"])
    page = client.get(f"{url.path}?{url.query}")
    assert page.status_code == 200
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page.get_data(as_text=True))))


def test_explanation_says_variants_agreed_or_an_absolute_exclusion(client):
    agreed = _page(client, request_body("seed-003-ablation"), "")
    assert "each rates this order alike" in agreed
    excluded = _page(client, request_body("facts-osteomyelitis-kyphoplasty"), "")
    assert "absolute exclusion" in excluded and "CMS LCD L34228" in excluded
