"""The decision for an order: what it is, its ACR rating and PAMA code, the advice that goes
with it (decision-rules.md §2, §3, §5), on hand-written orders and records."""

from __future__ import annotations

import pytest
from plain_fhir import (
    ABLATION_SPINE,
    ANTICOAGULANT_USE,
    AS_OF,
    BISPHOSPHONATE_USE,
    BONE_METASTASIS,
    BONE_SCAN_WHOLE_BODY,
    CAUDA_EQUINA,
    COMPRESSION_FRACTURE_SNOMED,
    CT_LUMBAR_WITHOUT,
    DXA,
    KYPHOPLASTY_LUMBAR,
    LOINC,
    LOW_BACK_PAIN,
    MRI_LUMBAR_WITH,
    MRI_LUMBAR_WITHOUT,
    MRI_THORACIC_WITHOUT,
    OSTEOPOROTIC_VCF_INITIAL,
    PATHOLOGIC_VCF,
    REFERRAL_TO_NEUROSURGEON,
    SNOMED,
    VERTEBRAL_OSTEOMYELITIS,
    condition,
    days_before,
    new_osteoporotic_vcf_with_back_pain,
    order,
    procedure,
    worsening_osteoporotic_vcf,
)

from cds_service.decision.engine import classify_order, decide, decide_order

V1 = new_osteoporotic_vcf_with_back_pain()
V7 = worsening_osteoporotic_vcf()


def decided(knowledge, the_order, conditions, procedures=()):
    return decide_order(knowledge, the_order, conditions=conditions, procedures=list(procedures), as_of=AS_OF)


def test_an_order_is_classified_by_procedure_and_spine_region(knowledge):
    oc = classify_order(knowledge, order(MRI_LUMBAR_WITHOUT))
    assert (oc.procedure.id, oc.region.id, oc.coding["code"]) == ("mri-spine-without", "lumbar", "72148")
    oc = classify_order(knowledge, order("36532-0", LOINC))
    assert (oc.procedure.id, oc.region.id) == ("mri-spine-without", "thoracic")


def test_an_order_the_criteria_do_not_cover_is_not_an_acr_procedure(knowledge):
    od = decided(knowledge, order("71046"), V1)  # chest radiograph
    assert od.order_class.procedure is None
    assert (od.choice, od.rating, od.pama, od.advisories) == (None, None, None, ())


def test_mri_with_contrast_for_a_new_osteoporotic_fracture_is_not_appropriate(knowledge):
    od = decided(knowledge, order(MRI_LUMBAR_WITH), V1)
    assert od.variant.id == "V1"
    assert (od.rating.category, od.pama) == ("UNA", "not-appropriate")
    assert [r.procedure for r in od.alternatives] == ["mri-spine-without", "ct-spine-without"]


def test_mri_without_contrast_is_appropriate_and_not_its_own_alternative(knowledge):
    od = decided(knowledge, order(MRI_LUMBAR_WITHOUT), V1)
    assert (od.rating.category, od.pama) == ("UA", "appropriate")
    assert [r.procedure for r in od.alternatives] == ["ct-spine-without"]
    assert od.advisories == ()


def test_may_be_appropriate_is_reported_to_pama_as_appropriate(knowledge):
    od = decided(knowledge, order(BONE_SCAN_WHOLE_BODY), V1)
    assert (od.rating.category, od.pama) == ("MBA", "appropriate")


def test_a_procedure_the_variant_does_not_rate_gets_no_criteria_apply(knowledge):
    od = decided(knowledge, order(DXA), V1)
    assert od.variant.id == "V1"
    assert (od.rating, od.pama) == (None, "no-criteria-apply")


def test_without_a_variant_there_is_no_pama_rating(knowledge):
    od = decided(knowledge, order(MRI_LUMBAR_WITHOUT), [condition(OSTEOPOROTIC_VCF_INITIAL)])  # no back pain
    assert od.choice.status == "missing"
    assert (od.rating, od.pama, od.alternatives) == (None, None, ())


@pytest.mark.parametrize(("code", "pama"), [(MRI_LUMBAR_WITHOUT, "appropriate"), (MRI_THORACIC_WITHOUT, "no-criteria-apply")])
def test_the_cauda_equina_table_rates_lumbar_imaging_only(knowledge, code, pama):
    od = decided(knowledge, order(code), [*V1, condition(CAUDA_EQUINA)])
    assert od.variant.id == "LBP-4"
    assert od.pama == pama


@pytest.mark.parametrize("status", ["completed", "revoked", "entered-in-error"])
def test_an_order_no_longer_being_placed_is_not_rated(knowledge, status):
    od = decided(knowledge, order(MRI_LUMBAR_WITH, status=status), V1)
    assert (od.order_class.procedure, od.pama) == (None, None)


def test_kyphoplasty_on_anticoagulation_warns_and_reminds(knowledge):
    od = decided(knowledge, order(KYPHOPLASTY_LUMBAR), [*V7, condition(ANTICOAGULANT_USE)])
    assert (od.variant.id, od.pama) == ("V7", "appropriate")
    assert od.advisories == ("augment-bleeding", "augment-no-edema", "augment-no-therapy")


def test_kyphoplasty_in_a_patient_on_osteoporosis_therapy_gets_no_therapy_reminder(knowledge):
    od = decided(knowledge, order(KYPHOPLASTY_LUMBAR), [*V7, condition(BISPHOSPHONATE_USE)])
    assert od.advisories == ("augment-no-edema",)


def test_kyphoplasty_with_spinal_infection_warns(knowledge):
    od = decided(knowledge, order(KYPHOPLASTY_LUMBAR), [*V7, condition(VERTEBRAL_OSTEOMYELITIS)])
    assert "augment-infection" in od.advisories


def test_kyphoplasty_with_a_neurologic_red_flag_warns_without_routine_reminders(knowledge):
    od = decided(knowledge, order(KYPHOPLASTY_LUMBAR), [*V7, condition(CAUDA_EQUINA)])
    assert od.advisories == ("augment-neuro",)
    assert od.pama is None  # no treatment variant once a red flag takes the patient out of the pathway


def test_kyphoplasty_for_a_pathologic_fracture_gets_no_osteoporosis_therapy_reminder(knowledge):
    od = decided(knowledge, order(KYPHOPLASTY_LUMBAR), [condition(PATHOLOGIC_VCF), condition(LOW_BACK_PAIN), condition(BONE_METASTASIS)])
    assert od.variant.id == "V8"
    assert "augment-no-therapy" not in od.advisories


def test_mri_after_a_kyphoplasty_gets_the_post_augmentation_note(knowledge):
    od = decided(knowledge, order(MRI_LUMBAR_WITHOUT), [condition(LOW_BACK_PAIN)], [procedure(KYPHOPLASTY_LUMBAR)])
    assert od.variant.id == "V3"
    assert od.advisories == ("post-augmentation-mri",)
    assert decided(knowledge, order(CT_LUMBAR_WITHOUT), [condition(LOW_BACK_PAIN)], [procedure(KYPHOPLASTY_LUMBAR)]).advisories == ()


def test_a_surgical_referral_where_augmentation_is_also_usually_appropriate_is_steered_to_ir(knowledge):
    od = decided(knowledge, order(REFERRAL_TO_NEUROSURGEON, SNOMED), V7)
    assert (od.rating.category, od.advisories) == ("UA", ("steer-ir",))


def test_ablation_where_it_is_not_appropriate_is_not_steered_but_rated(knowledge):
    od = decided(knowledge, order(ABLATION_SPINE), V7)
    assert (od.rating.category, od.pama, od.advisories) == ("UNA", "not-appropriate", ())
    assert "vertebral-augmentation" in [r.procedure for r in od.alternatives]


def test_a_red_flag_suggests_what_is_not_already_ordered(knowledge):
    record = [*V1, condition(CAUDA_EQUINA, id="c-ce")]
    ct = order(CT_LUMBAR_WITHOUT, id="o1")
    d = decide(knowledge, selections=[ct], draft_orders=[ct], conditions=record, procedures=[], as_of=AS_OF)
    assert [e.resource for e in d.red_flags] == ["Condition/c-ce"]
    assert [p.id for p in d.red_flag_missing] == ["mri-spine-without", "surgical-consultation"]
    assert d.red_flag_region.id == "lumbar"

    mri = order(MRI_LUMBAR_WITHOUT, id="o2")
    d = decide(knowledge, selections=[ct], draft_orders=[ct, mri], conditions=record, procedures=[], as_of=AS_OF)
    assert [p.id for p in d.red_flag_missing] == ["surgical-consultation"]


def test_without_a_red_flag_nothing_is_escalated(knowledge):
    ct = order(CT_LUMBAR_WITHOUT)
    d = decide(knowledge, selections=[ct], draft_orders=[ct], conditions=V1, procedures=[], as_of=AS_OF)
    assert (d.red_flags, d.red_flag_missing, d.red_flag_region) == ((), (), None)
    assert [od.ref for od in d.orders] == ["ServiceRequest/o1"]


def test_acuity_is_measured_against_when_the_order_was_written(knowledge):
    """Onset 60 days before the order: a new fracture (V1); the same order a year later: prior (V3)."""
    record = [condition(COMPRESSION_FRACTURE_SNOMED, SNOMED, onset=days_before(60)), condition(LOW_BACK_PAIN)]
    the_order = order(MRI_LUMBAR_WITHOUT)
    assert decide_order(knowledge, the_order, conditions=record, procedures=[]).variant.id == "V1"
    later = order(MRI_LUMBAR_WITHOUT, authored="2027-03-02")
    assert decide_order(knowledge, later, conditions=record, procedures=[]).variant.id == "V3"
