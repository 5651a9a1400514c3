"""Value set membership, on hand-built value sets and the bundled ones: which codes in a
record count as which concept."""

from __future__ import annotations

from plain_fhir import CPT, ICD10CM, LOINC, SNOMED

from cds_service.decision.terminology import Concept, Terminology, ValueSetDef, normalize_code


def _vs(id: str, *include: Concept, exclude: tuple[Concept, ...] = ()) -> ValueSetDef:
    return ValueSetDef(id=id, url=f"urn:test:{id}", title=id, description="", include=include, exclude=exclude)


OSTEOPOROTIC_VCF = _vs("osteoporotic-vcf", Concept(ICD10CM, "M80.08", None, is_a=True))
COMPRESSION_FRACTURE = _vs("compression-fracture", Concept(SNOMED, "42942008", "Compression fracture of vertebral column"))
KYPHOSIS = _vs("kyphosis", Concept(ICD10CM, "M40", None, is_a=True),
               exclude=(Concept(ICD10CM, "M40.3", None, is_a=True),))  # flatback syndrome is not kyphosis
MRI_LUMBAR = _vs("mri-lumbar", Concept(CPT, "72148", "MRI lumbar spine without contrast"),
                 Concept(LOINC, "30679-5", "MR Lumbar spine WO contrast", unconfirmed=True))
TERM = Terminology.build({vs.id: vs for vs in (OSTEOPOROTIC_VCF, COMPRESSION_FRACTURE, KYPHOSIS, MRI_LUMBAR)})


def test_an_icd10cm_root_covers_every_more_specific_code():
    """M80.08 (osteoporotic vertebral fracture) covers the initial and subsequent encounter
    codes, not the neighbouring osteoporosis codes."""
    assert TERM.memberships(ICD10CM, "M80.08XA") == ("osteoporotic-vcf",)
    assert TERM.memberships(ICD10CM, "M80.08XD") == ("osteoporotic-vcf",)
    assert TERM.memberships(ICD10CM, "M80.0") == ()
    assert TERM.memberships(ICD10CM, "M81.0") == ()


def test_icd10cm_codes_match_whatever_their_case_and_surrounding_blanks():
    assert TERM.memberships(ICD10CM, " m80.08xa ") == ("osteoporotic-vcf",)
    assert normalize_code(ICD10CM, " m80.08xa ") == "M80.08XA"
    assert normalize_code(SNOMED, " 42942008 ") == "42942008"


def test_snomed_and_cpt_codes_match_exactly_never_by_prefix():
    assert TERM.memberships(SNOMED, "42942008") == ("compression-fracture",)
    assert TERM.memberships(SNOMED, "429420081") == ()
    assert TERM.memberships(CPT, "7214") == ()


def test_an_excluded_code_is_not_a_member_even_under_an_included_root():
    assert TERM.memberships(ICD10CM, "M40.204") == ("kyphosis",)
    assert TERM.memberships(ICD10CM, "M40.35") == ()
    assert KYPHOSIS.contains(ICD10CM, "M40.35") is None


def test_the_same_code_in_another_system_is_another_concept():
    assert TERM.memberships(LOINC, "72148") == ()
    assert TERM.memberships(ICD10CM, "42942008") == ()


def test_a_coding_without_system_or_code_matches_nothing():
    assert TERM.memberships(None, "72148") == ()
    assert TERM.memberships(CPT, None) == ()
    assert TERM.memberships("", "72148") == ()
    assert TERM.memberships(CPT, "") == ()


def test_the_matched_concept_keeps_its_display_and_unconfirmed_flag():
    concept = TERM.concept("mri-lumbar", LOINC, "30679-5")
    assert concept is not None and concept.display == "MR Lumbar spine WO contrast" and concept.unconfirmed
    assert TERM.concept("mri-lumbar", CPT, "72148").unconfirmed is False


def test_the_first_code_of_a_system_is_the_one_a_suggestion_orders():
    assert MRI_LUMBAR.first_code(CPT).code == "72148"
    assert MRI_LUMBAR.first_code(SNOMED) is None
    assert MRI_LUMBAR.first_code(CPT, among=COMPRESSION_FRACTURE) is None


def test_an_answer_is_the_same_the_second_time():
    first = TERM.memberships(ICD10CM, "M80.08XA")
    assert TERM.memberships(ICD10CM, "M80.08XA") == first


def test_bundled_mri_code_names_both_the_procedure_and_the_spine_region(knowledge):
    """CPT 72148 is an MRI without contrast and a lumbar study: the order is classified by both."""
    assert set(knowledge.terminology.memberships(CPT, "72148")) == {"order-mri-spine-without", "spine-region-lumbar"}


def test_bundled_worsening_signs_leave_out_flatback_and_other_non_kyphotic_deformities(knowledge):
    term = knowledge.terminology
    assert "vcf-worsening-signs" in term.memberships(ICD10CM, "M40.204")  # kyphosis, lumbar
    assert term.memberships(ICD10CM, "M40.35") == ()  # flatback syndrome
    assert term.memberships(ICD10CM, "M40.45") == ()  # postural lordosis


def test_an_icd10cm_block_covers_every_code_of_its_categories():
    """C30-C39 (malignant neoplasms of respiratory and intrathoracic organs) covers lung cancer
    C34.90 and C39.9, not C40.0; a category root C50 covers C50.912 but not C51.9."""
    cancers = _vs("cancers", Concept(ICD10CM, "C30-C39", None, is_a=True), Concept(ICD10CM, "C50", None, is_a=True))
    term = Terminology.build({"cancers": cancers})
    assert term.memberships(ICD10CM, "C34.90") == ("cancers",)
    assert term.memberships(ICD10CM, "C39.9") == ("cancers",)
    assert term.memberships(ICD10CM, "c50.912") == ("cancers",)
    assert term.memberships(ICD10CM, "C40.0") == ()
    assert term.memberships(ICD10CM, "C51.9") == ()


def test_bundled_malignancy_is_c00_to_c96_without_c44():
    from cds_service.decision.knowledge import load_knowledge

    term = load_knowledge().terminology
    for code in ("C00.0", "C34.90", "C43.9", "C4A.9", "C50.912", "C61", "C7A.00", "C7B.00", "C79.51", "C90.00", "C96.9"):
        assert "malignancy" in term.memberships(ICD10CM, code), code
    for code in ("C44.91", "C44.311", "D03.9", "D46.9", "Z85.828"):
        assert "malignancy" not in term.memberships(ICD10CM, code), code
