"""Which ACR variant a patient's facts select (decision-rules.md §2.1, §2.5, §3.3), on
hand-made fact sets and the bundled ACR tables."""

from __future__ import annotations

import pytest
from plain_fhir import facts

from cds_service.decision.scenario import choose_variant


def chosen(knowledge, order_kind, *fact_ids):
    return choose_variant(knowledge, facts(*fact_ids), order_kind)


@pytest.mark.parametrize(("order_kind", "fact_ids", "variant"), [
    ("imaging", ("vcf", "vcf-new", "back-pain"), "V1"),
    ("imaging", ("vcf", "vcf-new", "back-pain", "malignancy-any"), "V2"),
    ("imaging", ("vcf-prior", "back-pain"), "V3"),
    # A new fracture in a patient who has had one before: "history of one or more VCFs".
    ("imaging", ("vcf", "vcf-new", "vcf-prior", "back-pain"), "V3"),
    ("imaging", ("vcf", "asymptomatic", "malignancy-any"), "V4"),
    ("treatment", ("vcf", "osteoporotic", "asymptomatic"), "V5"),
    ("treatment", ("vcf", "vcf-current", "osteoporotic", "back-pain", "marrow-edema"), "V6"),
    ("treatment", ("vcf", "vcf-current", "osteoporotic", "back-pain", "worsening"), "V7"),
    ("treatment", ("vcf", "malignancy-any", "back-pain"), "V8"),
])
def test_the_facts_of_each_acr_variant_select_it(knowledge, order_kind, fact_ids, variant):
    choice = chosen(knowledge, order_kind, *fact_ids)
    assert choice.status == "selected"
    assert choice.variant is not None and choice.variant.id == variant


def test_a_neurologic_red_flag_routes_imaging_to_the_cauda_equina_variant(knowledge):
    choice = chosen(knowledge, "imaging", "vcf", "vcf-new", "back-pain", "neuro-red-flag")
    assert choice.status == "red-flag"
    assert choice.variant is not None and choice.variant.id == "LBP-4"


def test_a_neurologic_red_flag_leaves_a_treatment_order_without_a_variant(knowledge):
    choice = chosen(knowledge, "treatment", "vcf", "osteoporotic", "back-pain", "worsening", "neuro-red-flag")
    assert (choice.status, choice.variant) == ("red-flag", None)


def test_a_red_flag_outranks_a_traumatic_fracture(knowledge):
    assert chosen(knowledge, "imaging", "vcf-traumatic", "neuro-red-flag").status == "red-flag"


def test_a_traumatic_fracture_is_outside_the_criteria(knowledge):
    choice = chosen(knowledge, "imaging", "vcf", "vcf-new", "back-pain", "vcf-traumatic")
    assert (choice.status, choice.variant) == ("excluded", None)


def test_back_pain_without_any_vertebral_fracture_is_out_of_scope(knowledge):
    assert chosen(knowledge, "imaging", "back-pain", "osteoporosis").status == "out-of-scope"


def test_a_new_fracture_without_back_pain_asks_for_back_pain(knowledge):
    """V1 needs back pain; V2 and V4 need a malignancy, which a card never asks a clinician
    to record (it defines the patient, it is not missing)."""
    choice = chosen(knowledge, "imaging", "vcf", "vcf-new")
    assert choice.status == "missing"
    assert choice.missing == (("back-pain",),)
    assert [v.id for v in choice.candidates] == ["V1"]


def test_an_osteoporotic_fracture_with_pain_asks_for_edema_or_worsening(knowledge):
    choice = chosen(knowledge, "treatment", "vcf", "vcf-current", "osteoporotic", "back-pain")
    assert choice.status == "missing"
    assert choice.missing == (("marrow-edema",), ("worsening",))
    assert [v.id for v in choice.candidates] == ["V6", "V7"]


def test_when_only_facts_no_card_may_ask_for_are_missing_nothing_is_asked(knowledge):
    """An asymptomatic osteoporotic fracture ordered for imaging: only V4 is open (it lacks
    a malignancy), and malignancy is never asked for."""
    choice = chosen(knowledge, "imaging", "vcf", "asymptomatic")
    assert choice.status == "missing"
    assert (choice.missing, choice.candidates) == ((), ())


def test_a_record_that_fits_two_variants_is_a_conflict(knowledge):
    choice = chosen(knowledge, "treatment", "vcf", "vcf-current", "osteoporotic", "back-pain", "marrow-edema",
                     "worsening")
    assert choice.status == "conflict"
    assert [v.id for v in choice.candidates] == ["V6", "V7"]
    assert choice.variant is None


def test_the_routing_variant_is_never_chosen_without_a_red_flag(knowledge):
    for fact_ids in [("vcf", "vcf-new", "back-pain"), ("vcf-prior", "back-pain")]:
        choice = chosen(knowledge, "imaging", *fact_ids)
        assert choice.variant is not None and choice.variant.routing is None
