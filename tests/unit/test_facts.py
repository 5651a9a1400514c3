"""Facts drawn from a patient's record (decision-rules.md §3.2): which Conditions,
Procedures and order reasons count, derived facts, and how new a fracture is."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from plain_fhir import (
    ANTICOAGULANT_USE,
    AS_OF,
    BISPHOSPHONATE_USE,
    COMPRESSION_FRACTURE_SNOMED,
    CPT,
    HYPERTENSION,
    ICD10CM,
    KYPHOPLASTY_LUMBAR,
    LOW_BACK_PAIN,
    MRI_LUMBAR_WITHOUT,
    OSTEOPOROTIC_VCF_INITIAL,
    OSTEOPOROTIC_VCF_SUBSEQUENT,
    SNOMED,
    condition,
    days_before,
    order,
    procedure,
)

from cds_service.decision.scenario import (
    RecordFacts,
    extract_facts,
    is_active_condition,
    reference_date,
    yields_facts,
)


def facts_of(knowledge, conditions=(), procedures=(), the_order=None):
    return extract_facts(knowledge, conditions=conditions, procedures=procedures,
                         order=the_order or order(MRI_LUMBAR_WITHOUT), as_of=AS_OF)


def test_a_new_osteoporotic_fracture_is_a_current_vcf_and_new(knowledge):
    found = facts_of(knowledge, [condition(OSTEOPOROTIC_VCF_INITIAL, id="c1", display="Osteoporotic fracture L1")])
    assert {"vcf-osteoporotic", "vcf", "osteoporotic", "vcf-new"} <= set(found.evidence)
    assert "vcf-prior" not in found
    (ev,) = found.evidence["vcf-osteoporotic"]
    assert (ev.resource, ev.system, ev.code, ev.display) == ("Condition/c1", ICD10CM, "M80.08XA", "Osteoporotic fracture L1")
    assert ev.encounter == "initial"


def test_a_fracture_coded_for_a_subsequent_encounter_is_a_prior_fracture(knowledge):
    found = facts_of(knowledge, [condition(OSTEOPOROTIC_VCF_SUBSEQUENT)])
    assert "vcf-prior" in found and "vcf-new" not in found


@pytest.mark.parametrize(("days", "fact"), [(30, "vcf-new"), (84, "vcf-new"), (85, "vcf-prior"), (400, "vcf-prior")])
def test_without_a_seventh_character_the_onset_says_how_new_the_fracture_is(knowledge, days, fact):
    """Acute or subacute (up to 12 weeks) is new (LCD L34228 via decision-rules.md §2.3)."""
    found = facts_of(knowledge, [condition(COMPRESSION_FRACTURE_SNOMED, SNOMED, onset=days_before(days))])
    assert "vcf" in found and fact in found
    assert ({"vcf-new", "vcf-prior"} - {fact}).isdisjoint(found.evidence)


def test_a_fracture_with_neither_seventh_character_nor_onset_is_neither_new_nor_prior(knowledge):
    found = facts_of(knowledge, [condition(COMPRESSION_FRACTURE_SNOMED, SNOMED)])
    assert "vcf" in found and "vcf-new" not in found and "vcf-prior" not in found


@pytest.mark.parametrize(("clinical", "verification", "counts"), [
    ("active", "confirmed", True),
    ("recurrence", "confirmed", True),
    ("relapse", "unconfirmed", True),
    ("resolved", "confirmed", False),
    ("inactive", "confirmed", False),
    ("active", "refuted", False),
    ("active", "entered-in-error", False),
])
def test_only_active_conditions_that_were_not_refuted_count(knowledge, clinical, verification, counts):
    c = condition(OSTEOPOROTIC_VCF_INITIAL, clinical=clinical, verification=verification)
    assert is_active_condition(c) is counts
    assert ("vcf" in facts_of(knowledge, [c])) is counts


def test_anticoagulant_use_is_a_bleeding_risk(knowledge):
    found = facts_of(knowledge, [condition(ANTICOAGULANT_USE, id="c9")])
    assert "anticoagulation" in found and "bleeding-risk" in found
    assert [e.resource for e in found.evidence["bleeding-risk"]] == ["Condition/c9"]


def test_back_pain_given_only_as_the_order_reason_counts(knowledge):
    found = facts_of(knowledge, the_order=order(MRI_LUMBAR_WITHOUT, id="o7", reasons=(LOW_BACK_PAIN,)))
    assert [e.resource for e in found.evidence["back-pain"]] == ["ServiceRequest/o7#reasonCode"]


def test_osteoporosis_therapy_counts_only_from_the_problem_list(knowledge):
    """facts.json reads osteoporosis therapy from Conditions only, not from an order reason."""
    assert "osteoporosis-therapy" in facts_of(knowledge, [condition(BISPHOSPHONATE_USE)])
    assert "osteoporosis-therapy" not in facts_of(knowledge, the_order=order(MRI_LUMBAR_WITHOUT, reasons=(BISPHOSPHONATE_USE,)))


def test_a_completed_kyphoplasty_is_augmentation_history_and_a_prior_fracture(knowledge):
    found = facts_of(knowledge, procedures=[procedure(KYPHOPLASTY_LUMBAR, id="p1", performed=date(2024, 5, 1))])
    assert "augmentation-history" in found and "vcf-prior" in found
    assert found.evidence["augmentation-history"][0].resource == "Procedure/p1"


@pytest.mark.parametrize("status", ["entered-in-error", "not-done", "preparation"])
def test_a_procedure_that_did_not_happen_is_not_history(knowledge, status):
    assert "augmentation-history" not in facts_of(knowledge, procedures=[procedure(KYPHOPLASTY_LUMBAR, status=status)])


def test_a_procedure_code_on_the_problem_list_is_not_a_procedure(knowledge):
    assert "augmentation-history" not in facts_of(knowledge, [condition(KYPHOPLASTY_LUMBAR, CPT)])


def test_marrow_edema_cannot_be_read_from_a_coded_record_yet(knowledge):
    """No confirmed code exists (facts.json note), so augmentation orders get the reminder."""
    assert knowledge.facts["marrow-edema"].valueSet is None


def test_a_record_with_nothing_relevant_has_no_facts(knowledge):
    assert dict(facts_of(knowledge, [condition(HYPERTENSION)]).evidence) == {}


def test_evidence_is_listed_once_per_resource_and_code(knowledge):
    found = facts_of(knowledge, [condition(OSTEOPOROTIC_VCF_INITIAL, id="c1")])
    keys = [(e.fact, e.resource, e.code) for e in found.all_evidence()]
    assert len(keys) == len(set(keys))
    assert ("vcf-osteoporotic", "Condition/c1", "M80.08XA") in keys


def test_the_reference_date_is_when_the_order_was_written_else_today():
    assert reference_date({"authoredOn": "2026-03-02T10:00:00Z"}) == date(2026, 3, 2)
    assert reference_date({}) == datetime.now(UTC).date()
    assert reference_date({"authoredOn": "yesterday"}) == datetime.now(UTC).date()


def test_only_conditions_and_procedures_with_a_fact_code_need_reading(knowledge):
    """What the parser may skip validating: resources no fact can come from."""
    assert yields_facts(knowledge, "Condition", condition(LOW_BACK_PAIN))
    assert not yields_facts(knowledge, "Condition", condition(HYPERTENSION))
    assert not yields_facts(knowledge, "Condition", condition(KYPHOPLASTY_LUMBAR, CPT))
    assert yields_facts(knowledge, "Procedure", procedure(KYPHOPLASTY_LUMBAR))
    assert yields_facts(knowledge, "Observation", {"resourceType": "Observation"})
    assert not yields_facts(knowledge, "Condition", {"code": {"coding": [{"system": 7, "code": "M54.50"}]}})


def test_orders_of_one_call_get_the_facts_each_would_get_alone(knowledge):
    """The record is read once per call and what an order's date decides is shared by the
    orders of that date: each order still gets exactly its own facts, whichever orders came
    before it (dates on both sides of the 'new' and 'current' windows, own reasons)."""
    conditions = [condition(COMPRESSION_FRACTURE_SNOMED, SNOMED, id="c-vcf", onset=days_before(60)),
                  condition(LOW_BACK_PAIN, id="c-pain", onset=days_before(400)),
                  condition(OSTEOPOROTIC_VCF_SUBSEQUENT, id="c-old", onset=days_before(300))]
    procedures = [procedure(KYPHOPLASTY_LUMBAR, CPT, id="p-kp")]
    orders = [order(MRI_LUMBAR_WITHOUT, id="o-now"),
              order(MRI_LUMBAR_WITHOUT, id="o-later", authored="2026-07-01T10:00:00Z", reasons=("M54.50",)),
              order(MRI_LUMBAR_WITHOUT, id="o-no-reason", authored="2026-07-01T10:00:00Z"),
              order(MRI_LUMBAR_WITHOUT, id="o-reason", reasons=("M80.08XA",))]
    record = RecordFacts(knowledge, conditions=conditions, procedures=procedures)
    shared = [extract_facts(knowledge, conditions=conditions, procedures=procedures, order=o,
                            as_of=reference_date(o), record=record) for o in orders + orders[::-1]]
    alone = [extract_facts(knowledge, conditions=conditions, procedures=procedures, order=o, as_of=reference_date(o))
             for o in orders + orders[::-1]]
    assert shared == alone
    by_order = {o["id"]: f for o, f in zip(orders, shared, strict=False)}
    assert "vcf-new" in by_order["o-now"] and "vcf-new" not in by_order["o-later"]
    assert [e.resource for e in by_order["o-later"].evidence["back-pain"]] == ["Condition/c-pain",
                                                                               "ServiceRequest/o-later#reasonCode"]
    assert "ServiceRequest/o-reason#reasonCode" in {e.resource for e in by_order["o-reason"].evidence["vcf"]}
    assert not any(e.resource.startswith("ServiceRequest/o-reason") for e in by_order["o-now"].all_evidence())
