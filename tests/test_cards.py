"""Cards and suggestions as a clinician meets them (issue 12).

Suggestions never remove care the service cannot judge; the red-flag card covers the
fracture level and says everything in one card; anticoagulants get the SIR wording;
provenance of SEED / SECONDARY ratings is said in words; summaries lead with the action;
one checklist card per augmentation order; evidence grouped, capped and escaped. Each test
runs a fixture request (fhir_fixtures/requests/) through the service, without HTTP.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil

import pytest
from conftest import FIXTURES, counter_ids, load_json, request_body

from cds_service.decision.knowledge import KnowledgeError, load_knowledge
from cds_service.decision.render import RenderOptions, md_escape
from cds_service.pipeline import evaluate

SERVICE = "vcf-order-select"
CASES = load_json(FIXTURES / "cases.json")
OK_CASES = [c["id"] for c in CASES if c["expect"]["status"] == 200]


def run(knowledge, schemas, case_id, body=None, **options):
    body = body if body is not None else request_body(case_id)
    return evaluate(knowledge, schemas, body, service_id=SERVICE,
                    options=RenderOptions(new_id=counter_ids(), **options))


def cards(knowledge, schemas, case_id, body=None, **options):
    return run(knowledge, schemas, case_id, body, **options).rendered.response["cards"]


def actions(card):
    return [a for s in card.get("suggestions", ()) for a in s["actions"]]


def created_codes(card):
    """Codes the card's suggestions order: created, or the draft order updated to them."""
    return [a["resource"]["code"]["coding"][0]["code"] for a in actions(card)
            if a["type"] in ("create", "update") and "coding" in a["resource"]["code"]]


def evidence_lines(card):
    lines = card["detail"].splitlines()
    start = lines.index("**Evidence in the record**") + 1
    return list(itertools.takewhile(lambda ln: ln.startswith("- "), lines[start:]))


# ---- suggestions never remove needed care ------------------------------------------------


@pytest.mark.parametrize("case_id", ["v8-pathologic-augmentation", "cards-v8-ablation-kept",
                                     "cards-v8-surgical-consultation-kept"])
def test_an_order_whose_cell_the_service_lacks_is_kept_and_radiation_oncology_added(knowledge, schemas, case_id):
    out = run(knowledge, schemas, case_id)
    assert out.decision.orders[0].pama == "no-criteria-apply"
    (card,) = [c for c in out.rendered.response["cards"] if c["summary"].startswith("Add radiation oncology")]
    assert card["indicator"] == "info"
    assert "not available to this service" in card["detail"]
    assert "not rated by the ACR" not in json.dumps(out.rendered.response)
    # Nothing is deleted: the only action creates the radiation oncology consultation.
    assert [a["type"] for c in out.rendered.response["cards"] for a in actions(c)] == ["create"]
    assert created_codes(card) == ["306256000"]


def test_dxa_after_a_fragility_fracture_is_left_alone(knowledge, schemas):
    out = run(knowledge, schemas, "cards-dxa-after-fragility-fracture")
    assert out.decision.orders[0].pama == "no-criteria-apply"
    assert out.rendered.response["cards"] == []


def test_a_study_already_among_the_draft_orders_is_not_suggested_again(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "multi-order")
    assert card["summary"] == ("Drop MRI lumbar spine without and with contrast: "
                               "MRI lumbar spine WITHOUT contrast is already ordered (ACR)")
    (suggestion,) = card["suggestions"]
    assert suggestion["actions"] == [{"type": "delete", "resourceId": "ServiceRequest/sr-cb843c80-mri-wwo",
                                      "description": "Remove the draft order ServiceRequest/sr-cb843c80-mri-wwo"}]


def test_ir_referral_is_not_offered_when_augmentation_is_already_drafted(knowledge, schemas):
    body = load_json(FIXTURES / "requests" / "seed-004-v7-augmentation.json")
    entries = body["context"]["draftOrders"]["entry"]
    consult = copy.deepcopy(entries[0])
    consult["resource"]["id"] = "sr-consult"
    consult["resource"]["code"] = {"coding": [{"system": "http://snomed.info/sct", "code": "308482002",
                                               "display": "Referral to neurosurgeon (procedure)"}]}
    entries.append(consult)
    body["context"]["selections"] = ["ServiceRequest/sr-consult"]
    assert not [c for c in cards(knowledge, schemas, "", body) if "IR referral" in c["summary"]]
    entries.pop(0)  # without the kyphoplasty order the referral is offered again
    body["context"]["selections"] = ["ServiceRequest/sr-consult"]
    assert [c for c in cards(knowledge, schemas, "", body) if "IR referral" in c["summary"]]


def test_replacement_imaging_takes_its_region_from_the_fracture_code(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "cards-bone-scan-region-from-fracture")
    assert card["summary"].startswith("Consider MRI thoracic spine WITHOUT contrast")
    assert created_codes(card) == ["72146", "72128"]  # thoracic, from M48.54XA; not a whole-spine study
    assert "whole spine" not in card["detail"]


def test_replacement_imaging_covers_the_whole_spine_only_when_the_region_is_unknown_and_says_so(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "cards-bone-scan-region-unknown")
    assert created_codes(card) == ["36531-2"]  # LOINC MR spine without contrast
    assert "covers the whole spine" in card["detail"]


# ---- neurologic red flags ----------------------------------------------------------------


def test_kyphoplasty_with_red_flags_gets_one_critical_card_covering_thoracic_and_lumbar(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "seed-000-kyphoplasty-with-neuro-deficit")
    assert card["indicator"] == "critical"
    assert "relative exclusion" in card["summary"] and "L34228" in card["summary"]
    assert "not indicated" not in card["detail"]
    mri, consult = card["suggestions"]
    # Seed 000's cord compression was at T10 and the fracture code names no level.
    assert created_codes({"suggestions": [mri]}) == ["72146", "72148"]
    assert consult["label"] == "Order urgent: spine surgery consultation"


def test_red_flag_mri_already_ordered_at_the_lumbar_fracture_is_not_suggested_again(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "cards-red-flag-lumbar-fracture-mri-ordered")
    assert card["summary"] == "Urgent spine surgery consultation: neurologic red flags on record"
    assert [s["label"] for s in card["suggestions"]] == ["Order urgent: spine surgery consultation"]


# ---- bleeding, infection, checklist ----------------------------------------------------------


def test_anticoagulant_use_asks_for_peri_procedural_management_not_a_contraindication(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "seed-004-coagulopathy")
    assert card["indicator"] == "info"
    assert "check INR and platelets" in card["summary"]
    assert "Patel IJ et al., J Vasc Interv Radiol 2019;30:1168-1184" in card["detail"]
    assert "is a contraindication" not in card["detail"]


def test_coagulopathy_is_a_relative_exclusion_warning(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "seed-004-coagulopathy-d68")
    assert card["indicator"] == "warning" and "relative exclusion" in card["summary"]
    assert "CMS LCD L34228" in card["detail"] and card["overrideReasons"]


def test_one_checklist_card_per_augmentation_order(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "seed-004-coagulopathy")
    for item in ("**MRI evidence**", "**Osteoporosis therapy**", "**Bleeding**"):
        assert item in card["detail"]


def test_spinal_infection_with_augmentation_is_a_critical_card(knowledge, schemas):
    body = load_json(FIXTURES / "requests" / "seed-004-v7-augmentation.json")
    infection = copy.deepcopy(body["prefetch"]["conditions"]["entry"][0])
    infection["resource"]["id"] = "c-osteomyelitis"
    infection["resource"]["code"] = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M46.26",
                                                 "display": "Osteomyelitis of vertebra, lumbar region"}]}
    body["prefetch"]["conditions"]["entry"].append(infection)
    critical = [c for c in cards(knowledge, schemas, "", body) if c["indicator"] == "critical"]
    assert len(critical) == 1 and critical[0]["summary"].startswith("Do not augment")
    assert "absolute exclusion" in critical[0]["detail"]
    (withdraw,) = critical[0]["suggestions"]  # the one action offered: withdraw the order
    assert [x["type"] for x in withdraw["actions"]] == ["delete"]


def test_post_augmentation_mri_card_only_when_the_mri_covers_the_treated_level(knowledge, schemas):
    assert cards(knowledge, schemas, "seed-001-v3-mri-after-kyphoplasty") == []  # thoracic MRI, L2 treated
    (card,) = cards(knowledge, schemas, "cards-mri-after-kyphoplasty-same-level")  # lumbar MRI
    assert "Dansie" in card["summary"] and "AJNR" in card["detail"]


# ---- provenance, summaries, citations ------------------------------------------------------


@pytest.mark.parametrize(("case_id", "words"), [
    ("seed-001-v3-ct-with-contrast", "teaching material that describes the ACR table"),
    ("seed-004-v7-augmentation", "teaching material that describes the ACR table"),
    ("v8-pathologic-augmentation", "third-party summary of the ACR table"),
    ("facts-asymptomatic-fracture-kyphoplasty", "third-party summary of the ACR table"),  # V5 medical management
])
def test_cards_built_on_seed_or_secondary_ratings_say_where_the_rating_comes_from(knowledge, schemas, case_id, words):
    card = cards(knowledge, schemas, case_id)[0]
    assert words in card["detail"]
    assert "SEED" not in card["detail"] and "SECONDARY" not in card["detail"]


def test_summary_leads_with_the_action(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "v1-new-vcf-mri-with-contrast")
    assert card["summary"] == ("Use MRI lumbar spine WITHOUT contrast: "
                               "contrast adds nothing for a new VCF without cancer (ACR)")
    assert [s["label"] for s in card["suggestions"]] == ["Replace with MRI lumbar spine WITHOUT contrast",
                                                          "Replace with CT lumbar spine WITHOUT contrast"]


@pytest.mark.parametrize("case_id", OK_CASES)
def test_card_text_is_short_plain_and_cites_published_sources(knowledge, schemas, case_id):
    response = run(knowledge, schemas, case_id).rendered.response
    for card in response["cards"]:
        assert len(card["summary"]) < 140
    text = json.dumps(response["cards"], ensure_ascii=False)
    for internal in ("area of interest", "seed 0", "seeds 0", "decision-rules", "ACR ACR", "contraindication to"):
        assert internal not in text, (case_id, internal)


# ---- evidence lines ---------------------------------------------------------------------------


def test_evidence_is_one_line_per_resource_with_its_codes_together(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "v1-new-vcf-mri-with-contrast")
    lines = evidence_lines(card)
    vcf = [ln for ln in lines if ln.endswith("Condition/c-e0b69c73-vcf")]
    assert len(vcf) == 1 and "ICD-10-CM M48.56XA; SNOMED CT 42942008" in vcf[0]
    assert len(lines) == len(set(lines))


def test_evidence_is_capped_at_eight_lines_then_and_n_more_with_the_page_link(knowledge, schemas):
    (card,) = cards(knowledge, schemas, "cards-evidence-capped")
    lines = evidence_lines(card)
    assert len(lines) == 9 and lines[-1] == "- and 8 more"
    (card,) = cards(knowledge, schemas, "cards-evidence-capped", explain_url=lambda u: f"https://cds.example/why/{u}")
    assert evidence_lines(card)[-1] == f"- and 8 more: see [Why this advice?](https://cds.example/why/{card['uuid']})"


def test_record_text_arrives_inert_in_commonmark(knowledge, schemas):
    markdown_it = pytest.importorskip("markdown_it")
    (card,) = cards(knowledge, schemas, "cards-record-text-escaped")
    html = markdown_it.MarkdownIt("commonmark").render(card["detail"])
    assert "<a " not in html and "<img" not in html and "<em>pain</em>" not in html and "<code>" not in html
    assert "[x](javascript:alert(1))" in html  # shown to the clinician as the text it is
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.parametrize(("raw", "escaped"), [
    ("[x](javascript:alert(1))", r"\[x\](javascript:alert(1))"),
    ("![i](https://e.example/i.png)", r"\!\[i\](https\://e.example/i.png)"),
    ("see www.e.example", r"see www\.e.example"),
    ("<b>bold</b> & *em*", r"\<b\>bold\</b\> \& \*em\*"),
    ("1. first\n# heading", r"1\. first \# heading"),
    ("- dash", r"\- dash"),
    ("Muscle weakness (generalized)", "Muscle weakness (generalized)"),
    ("  padded\tand\u00a0spaced  ", "padded and spaced"),
    ("WWW.E.EXAMPLE or ftp://e.example", r"WWW\.E.EXAMPLE or ftp\://e.example"),
    ("12) twelfth", r"12\) twelfth"),
    ("= underline", r"\= underline"),
])
def test_md_escape(raw, escaped):
    assert md_escape(raw) == escaped


# ---- the rules are data, checked at load --------------------------------------------------------


def test_suggestion_rules_naming_an_unknown_procedure_refuse_to_load(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(load_knowledge().directory, data)
    cards_file = data / "cards.json"
    raw = json.loads(cards_file.read_text(encoding="utf-8"))
    raw["suggestionRules"]["neverReplaced"]["procedures"].append("dexa-typo")
    cards_file.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(KnowledgeError) as err:
        load_knowledge(data)
    assert err.value.file == "cards.json" and "dexa-typo" in err.value.problem
