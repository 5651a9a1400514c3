"""What the clinician and the EHR receive for a decision: cards, suggestions and PAMA rating
actions (CDS Hooks 2.0; Argonaut "CDS Hooks for PAMA"), rendered from plain decisions."""

from __future__ import annotations

import dataclasses
import itertools

from plain_fhir import (
    ANTICOAGULANT_USE,
    AS_OF,
    BONE_METASTASIS,
    BONE_SCAN_WHOLE_BODY,
    CAUDA_EQUINA,
    CT_LUMBAR_WITHOUT,
    KYPHOPLASTY_LUMBAR,
    LOW_BACK_PAIN,
    MRI_LUMBAR_WITH,
    MRI_LUMBAR_WITHOUT,
    OSTEOPOROTIC_VCF_INITIAL,
    REFERRAL_TO_NEUROSURGEON,
    SNOMED,
    condition,
    new_osteoporotic_vcf_with_back_pain,
    order,
    worsening_osteoporotic_vcf,
)

from cds_service.decision.contract import CARD_KINDS
from cds_service.decision.engine import decide
from cds_service.decision.knowledge import CATEGORY_DISPLAY
from cds_service.decision.render import PAMA_BASE, PAMA_RATING_DISPLAY, SUMMARY_MAX, RenderOptions, render

PAMA_SYSTEM = "http://fhir.org/argonaut/CodeSystem/pama-rating"


def counter():
    n = itertools.count(1)
    return lambda: f"id-{next(n)}"


def rendered(knowledge, orders, conditions, *, drafts=None, options=None, **kw):
    drafts = list(orders) if drafts is None else drafts
    d = decide(knowledge, selections=orders, draft_orders=drafts, conditions=conditions, procedures=[], as_of=AS_OF)
    return render(knowledge, d, draft_orders=drafts, patient_id="p1",
                  options=options or RenderOptions(new_id=counter()), **kw)


def pama_coding(action):
    ext = next(e for e in action["resource"]["extension"] if e["url"] == PAMA_BASE + "pama-rating")
    return ext["valueCodeableConcept"]["coding"]


def test_an_inappropriate_order_gets_one_warning_card_offering_the_usual_studies(knowledge):
    out = rendered(knowledge, [order(MRI_LUMBAR_WITH, id="o1")], new_osteoporotic_vcf_with_back_pain())
    (card,) = out.response["cards"]
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Use MRI lumbar spine WITHOUT contrast: contrast adds nothing")
    assert "**ACR variant V1**" in card["detail"]
    assert card["selectionBehavior"] == "at-most-one"
    assert [s.get("isRecommended", False) for s in card["suggestions"]] == [True, False]
    # Each alternative is one update of the draft order itself (Argonaut PAMA suggestion shape).
    (update,) = card["suggestions"][0]["actions"]
    assert update["type"] == "update" and update["resource"]["id"] == "o1"
    assert update["resource"]["code"]["coding"][0]["code"] == "72148"  # the lumbar MRI without contrast
    assert update["resource"]["reasonCode"] == []  # the order gave none; kept as an empty list
    assert pama_coding(update) == [{"system": PAMA_SYSTEM, "code": "appropriate", "display": "Appropriate"}]
    assert {r["code"] for r in card["overrideReasons"]} >= {"patient-specific", "advice-disagree"}
    assert out.card_kinds == {card["uuid"]: "not-appropriate"}
    assert out.card_orders == {card["uuid"]: 0}
    (action,) = out.response["systemActions"]
    assert action["type"] == "update" and action["resource"]["id"] == "o1"
    assert pama_coding(action) == [{"system": PAMA_SYSTEM, "code": "not-appropriate", "display": "Not appropriate"}]


def test_an_appropriate_order_gets_no_card_only_its_rating(knowledge):
    out = rendered(knowledge, [order(MRI_LUMBAR_WITHOUT)], new_osteoporotic_vcf_with_back_pain())
    assert out.response["cards"] == []
    (action,) = out.response["systemActions"]
    assert [c["code"] for c in pama_coding(action)] == ["appropriate"]
    assert out.response["extension"]["systemActions"] == out.response["systemActions"]


def test_may_be_appropriate_is_an_info_card_and_a_finer_coding_beside_appropriate(knowledge):
    out = rendered(knowledge, [order(BONE_SCAN_WHOLE_BODY)], new_osteoporotic_vcf_with_back_pain())
    (card,) = out.response["cards"]
    assert card["indicator"] == "info" and "overrideReasons" not in card
    assert [(c["code"], c["display"]) for c in pama_coding(out.response["systemActions"][0])] == [
        ("appropriate", "Appropriate"), ("MBA", "May be appropriate")]


def test_a_replacement_in_two_regions_updates_the_order_to_the_first_and_creates_the_second(knowledge):
    # M48.55XA: a thoracolumbar fracture; a whole-body bone scan has no spine region of its own.
    scan = order(BONE_SCAN_WHOLE_BODY, id="scan", reasons=("M48.55XA",))
    out = rendered(knowledge, [scan], [condition("M48.55XA"), condition(LOW_BACK_PAIN)])
    (card,) = out.response["cards"]
    mri = card["suggestions"][0]
    assert mri["label"] == "Replace with MRI thoracic and lumbar spine WITHOUT contrast"
    update, create = mri["actions"]
    assert (update["type"], update["resource"]["id"]) == ("update", "scan")
    assert update["resource"]["reasonCode"] == scan["reasonCode"]
    assert update["resource"]["code"]["coding"][0]["code"] == "72146"  # MRI thoracic without contrast
    assert create["type"] == "create" and create["resource"]["id"] != "scan"
    assert create["resource"]["code"]["coding"][0]["code"] == "72148"  # MRI lumbar without contrast


def test_a_neurologic_red_flag_comes_first_as_a_critical_card_with_urgent_orders(knowledge):
    ct = order(CT_LUMBAR_WITHOUT)
    out = rendered(knowledge, [ct], [*new_osteoporotic_vcf_with_back_pain(), condition(CAUDA_EQUINA, id="c-ce")])
    red = out.response["cards"][0]
    assert out.card_kinds[red["uuid"]] == "red-flag"
    assert red["uuid"] not in out.card_orders  # about the whole call, not one order
    assert red["indicator"] == "critical" and red["selectionBehavior"] == "any"
    # The fracture code names no level: the MRI covers the thoracic and the lumbar spine.
    assert [s["label"] for s in red["suggestions"]] == [
        "Order urgent: MRI thoracic and lumbar spine WITHOUT contrast", "Order urgent: spine surgery consultation"]
    created = [s["actions"][0]["resource"] for s in red["suggestions"]]
    assert all(r["priority"] == "urgent" for r in created)
    assert "Condition/c-ce" in red["detail"]
    assert "overrideReasons" in red


def test_a_missing_fact_is_asked_for_in_plain_words(knowledge):
    out = rendered(knowledge, [order(MRI_LUMBAR_WITHOUT)], [condition(OSTEOPOROTIC_VCF_INITIAL)])
    (card,) = out.response["cards"]
    assert card["summary"] == "Record back pain to get an ACR rating for this order"
    assert "- back pain" in card["detail"]
    assert "systemActions" not in out.response


def test_an_augmentation_order_gets_one_checklist_card_with_the_bleeding_evidence(knowledge):
    record = [*worsening_osteoporotic_vcf(), condition(ANTICOAGULANT_USE, id="c-ac")]
    out = rendered(knowledge, [order(KYPHOPLASTY_LUMBAR)], record)
    checklist = [c for c in out.response["cards"] if out.card_kinds[c["uuid"]] == "augment-checklist"]
    assert len(checklist) == 1
    (card,) = checklist
    # Anticoagulant use asks for peri-procedural management (SIR), not a contraindication: info.
    assert card["indicator"] == "info" and "overrideReasons" not in card
    assert "check INR and platelets" in card["summary"]
    assert "**Evidence in the record**" in card["detail"]
    assert "(ICD-10-CM Z79.01): long-term anticoagulant use — Condition/c-ac" in card["detail"]


def test_a_surgical_referral_is_steered_to_an_ir_referral_for_augmentation(knowledge):
    out = rendered(knowledge, [order(REFERRAL_TO_NEUROSURGEON, SNOMED)], worsening_osteoporotic_vcf())
    (card,) = out.response["cards"]
    assert out.card_kinds[card["uuid"]] == "steer-ir"
    (suggestion,) = card["suggestions"]
    assert suggestion["isRecommended"] is True
    referral = suggestion["actions"][0]["resource"]
    assert referral["code"] == {"text": knowledge.preferred.augmentationText}
    assert referral["performerType"] == {"text": "Interventional radiology"}


def test_a_rating_from_a_secondary_summary_says_so(knowledge):
    record = [*new_osteoporotic_vcf_with_back_pain(), condition(BONE_METASTASIS)]
    out = rendered(knowledge, [order(MRI_LUMBAR_WITH)], record)  # V2 does not rate MRI with contrast
    (card,) = out.response["cards"]
    assert "ACR variant V2" in card["detail"]
    assert knowledge.cards.text["secondaryNote"] in card["detail"]


def test_the_ehr_keeps_its_own_order_extensions_and_earlier_ratings_are_replaced(knowledge):
    own = {"url": "urn:ehr:priority-note", "valueString": "keep me"}
    stale = {"url": PAMA_BASE + "pama-rating", "valueCodeableConcept": {"coding": [{"code": "appropriate"}]}}
    out = rendered(knowledge, [order(MRI_LUMBAR_WITH, extension=[own, stale])], new_osteoporotic_vcf_with_back_pain())
    ext = out.response["systemActions"][0]["resource"]["extension"]
    assert ext[0] == own
    assert [e["url"] for e in ext[1:]] == [PAMA_BASE + p for p in (
        "pama-rating", "pama-rating-qcdsm-consulted", "pama-rating-consult-id", "pama-rating-auc-applied")]
    assert pama_coding(out.response["systemActions"][0])[0]["code"] == "not-appropriate"


def test_ids_come_from_the_injected_generator_so_responses_compare_whole(knowledge):
    args = ([order(MRI_LUMBAR_WITH)], new_osteoporotic_vcf_with_back_pain())
    assert rendered(knowledge, *args).response == rendered(knowledge, *args).response
    card = rendered(knowledge, *args).response["cards"][0]
    assert card["uuid"].startswith("id-")


def test_links_skipped_input_and_the_argonaut_copy_follow_the_options(knowledge):
    options = RenderOptions(new_id=counter(), argonaut_copy=False, explain_url=lambda u: f"https://cds.example/explain/{u}")
    issue = {"resource": "Condition/bad", "problem": "not valid"}
    out = rendered(knowledge, [order(MRI_LUMBAR_WITH)], new_osteoporotic_vcf_with_back_pain(), options=options,
                   input_issues=[issue])
    (card,) = out.response["cards"]
    assert card["links"] == [{"label": "Why this advice?", "url": f"https://cds.example/explain/{card['uuid']}",
                              "type": "absolute"}]
    assert out.response["extension"] == {"vcf-cds-hooks": {"skippedResources": [issue]}}


def test_the_wording_is_the_knowledge_s(knowledge):
    """A site rewords a card in cards.json: the card says it, with the procedure filled in."""
    kinds = dict(knowledge.cards.kinds)
    kinds["not-appropriate"] = kinds["not-appropriate"].model_copy(
        update={"summary": "Reconsider: {alternative}", "indicator": "critical"})
    reworded = dataclasses.replace(knowledge, cards=knowledge.cards.model_copy(update={"kinds": kinds}))
    (card,) = rendered(reworded, [order(MRI_LUMBAR_WITH)], new_osteoporotic_vcf_with_back_pain()).response["cards"]
    assert card["summary"] == "Reconsider: MRI lumbar spine WITHOUT contrast"
    assert card["indicator"] == "critical"


def test_a_summary_too_long_for_cds_hooks_is_shortened(knowledge):
    kinds = dict(knowledge.cards.kinds)
    kinds["not-appropriate"] = kinds["not-appropriate"].model_copy(update={"summary": "{alternative}: " + "x" * 200})
    long = dataclasses.replace(knowledge, cards=knowledge.cards.model_copy(update={"kinds": kinds}))
    (card,) = rendered(long, [order(MRI_LUMBAR_WITH)], new_osteoporotic_vcf_with_back_pain()).response["cards"]
    # The action stays, the reason is shortened (cards.json useInsteadShort).
    assert len(card["summary"]) <= SUMMARY_MAX and card["summary"].startswith("Use MRI lumbar spine WITHOUT contrast")
    texts = dict(knowledge.cards.text, useInsteadShort="{alternative}: " + "y" * 200)
    longer = dataclasses.replace(long, cards=long.cards.model_copy(update={"text": texts}))
    (card,) = rendered(longer, [order(MRI_LUMBAR_WITH)], new_osteoporotic_vcf_with_back_pain()).response["cards"]
    assert len(card["summary"]) == SUMMARY_MAX and card["summary"].endswith("…")


def test_every_card_kind_has_its_wording_in_the_bundled_knowledge(knowledge):
    assert set(knowledge.cards.kinds) == set(CARD_KINDS)


def test_the_displays_kept_for_callers_outside_the_core_match_the_bundled_ratings(knowledge):
    """CATEGORY_DISPLAY and PAMA_RATING_DISPLAY remain for the explanation page and the CLI."""
    assert dict(CATEGORY_DISPLAY) == {c: knowledge.category_display(c) for c in knowledge.categories}
    assert dict(PAMA_RATING_DISPLAY) == {c: knowledge.pama_display(c) for c in knowledge.pama}
