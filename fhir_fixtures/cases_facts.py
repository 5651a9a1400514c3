"""Fixtures for issue 12, "which codes count for which fact, and time".

Each case is a complete order-select request as an EHR posts it, built with the helpers of
``build_cases.py`` (which calls :func:`build` with itself as ``bc``), and a manifest entry
saying what a spine interventional radiologist expects. The clinical rule behind each case
is decision-rules.md §6 (its numbered correction is named in ``source``). Codes outside the
decision-rules.md §4 lists are declared per case in ``codes_outside_section4`` with the reason.

    .venv/bin/python fhir_fixtures/build_cases.py
"""

from __future__ import annotations

from types import ModuleType

ICD_TEXT = {
    "C50.912": "Malignant neoplasm of unspecified site of left female breast",
    "Z85.828": "Personal history of other malignant neoplasm of skin",
    "M84.68XA": "Pathological fracture in other disease, other site, initial encounter for fracture",
    "N25.0": "Renal osteodystrophy",
    "M80.08XS": "Age-related osteoporosis with current pathological fracture, vertebra(e), sequela",
    "J44.9": "Chronic obstructive pulmonary disease, unspecified",
    "S32.010A": "Wedge compression fracture of first lumbar vertebra, initial encounter for closed fracture",
    "M46.24": "Osteomyelitis of vertebra, thoracic region",
    "R33.9": "Retention of urine, unspecified",
}
SCT_TEXT = {"84387000": "Asymptomatic (finding)"}
CPT_TEXT = {
    "72100": "Radiologic examination, spine, lumbosacral; 2 or 3 views",
    "72141": "MRI cervical spine without contrast material",
}
ENCOUNTER_DIAGNOSIS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                   "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}


def _as_encounter_diagnosis(cond: dict, enc: str) -> dict:
    """Turn a problem-list Condition into a diagnosis of the order's encounter (no onset)."""
    cond["category"] = [ENCOUNTER_DIAGNOSIS]
    cond["encounter"] = {"reference": f"Encounter/{enc}"}
    cond.pop("onsetDateTime", None)
    return cond


def build(bc: ModuleType) -> None:
    """Write the issue-12 fact and time cases with ``bc`` (the build_cases module)."""
    bc.ICD_TEXT.update(ICD_TEXT)
    bc.SCT_TEXT.update(SCT_TEXT)
    bc.CPT_TEXT.update(CPT_TEXT)
    cond, sr_of, add, request, ids, patient = (bc.condition, bc.service_request, bc.add, bc.request, bc.ids,
                                               bc.patient)
    week, three_weeks, two_weeks = bc.ONE_WEEK_AGO, bc.THREE_WEEKS_AGO, bc.TWO_WEEKS_AGO

    # ---- §6.1 malignancy ------------------------------------------------------------
    cid = "facts-active-breast-cancer-v2-mri"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Lindgren-Test", "Astrid", "female", "1958-05-11")
    conds = [
        cond(f"c-{h}-ca", pid, icd="C50.912", onset="2026-06-03", text="Left breast cancer, on treatment"),
        cond(f"c-{h}-vcf", pid, icd="M48.56XA", sct="42942008", onset=week,
             text="L2 compression fracture on lumbar radiographs"),
        cond(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=week),
    ]
    sr = sr_of(f"sr-{h}-mri", pid, "72158", enc, reasons=("42942008", "279039007"))
    add(cid, request(cid, pat, conds, [sr]),
        "68F, active left breast cancer (C50.912, no bone metastasis coded), new lumbar VCF on radiographs "
        "(M48.56XA), back pain; order MRI lumbar without and with contrast (72158).",
        "decision-rules §6.1 (active primary cancers C00-C96 except C44 are malignancy), §1 V2", 200, "V2",
        {f"ServiceRequest/{sr['id']}": "appropriate"}, [],
        "Active breast cancer is a malignancy for VCF routing: variant V2, where MRI without and with IV "
        "contrast is Usually appropriate (SECONDARY) -> appropriate, silence. Before issue 12 this was V1 "
        "'no malignancy' with 'Usually not appropriate: replace with MRI without contrast'.",
        codes_outside_section4={"C50.912": "active primary breast cancer (decision-rules §6.1)"})

    cid = "facts-skin-cancer-history-kyphoplasty"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Ferreira-Test", "Helena", "female", "1944-02-27")
    conds = [
        cond(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2014-03-02"),
        cond(f"c-{h}-skin", pid, icd="Z85.828", onset="2018-09-12", text="Basal cell carcinoma of the nose, excised 2018"),
        cond(f"c-{h}-vcf", pid, icd="M80.08XA", onset=three_weeks, text="L1 osteoporotic compression fracture"),
        cond(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=three_weeks),
        cond(f"c-{h}-kyph", pid, icd="M40.204", sct="414564002", onset=two_weeks, text="Increasing stoop since the fracture"),
    ]
    sr = sr_of(f"sr-{h}-kp", pid, "22514", enc, reasons=("279039007",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "82F, osteoporosis, history of excised basal cell carcinoma (Z85.828), subacute L1 osteoporotic VCF "
        "(3 weeks), back pain, new kyphosis (2 weeks); order kyphoplasty lumbar (22514).",
        "decision-rules §6.1 (Z85.828 is not a malignancy history), §6.3, §1 V7", 200, "V7",
        {f"ServiceRequest/{sr['id']}": "appropriate"}, ["info"],
        "A basal cell carcinoma history (conditions classifiable to C44) is not a malignancy history: the "
        "osteoporotic fracture with new kyphosis is V7, augmentation Usually appropriate (SEED) -> "
        "appropriate, with the routine augmentation checklist (no MRI edema on record, no osteoporosis "
        "therapy; one card, or two before the checklist card). "
        "Before issue 12 this went to V8 with 'replace with radiotherapy'.",
        acceptable_indicators=[["info", "info"]])

    cid = "facts-renal-osteodystrophy-kyphoplasty"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Nakamura-Test", "Kenji", "male", "1951-10-04")
    conds = [
        cond(f"c-{h}-rod", pid, icd="N25.0", onset="2019-01-15", text="Renal osteodystrophy, CKD stage 5 on dialysis"),
        cond(f"c-{h}-vcf", pid, icd="M84.68XA", onset=two_weeks, text="L3 pathological fracture, renal osteodystrophy"),
        cond(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=two_weeks),
    ]
    sr = sr_of(f"sr-{h}-kp", pid, "22514", enc, reasons=("279039007",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "75M, renal osteodystrophy (N25.0), pathological L3 fracture in other disease (M84.68XA), back pain; "
        "order kyphoplasty lumbar (22514).",
        "decision-rules §6.1 (M84.6- is not a neoplastic fracture)", 200, None,
        {f"ServiceRequest/{sr['id']}": None}, ["info"],
        "M84.68XA is a current vertebral fracture but neither neoplastic nor osteoporotic: not V8 (no "
        "'replace with radiotherapy'), and V6/V7 need an osteoporotic fracture, so no rating and one info "
        "card naming what would pick the scenario.",
        codes_outside_section4={"N25.0": "the disease behind M84.68XA (not a fact of any value set)"})

    # ---- §6.2 neurologic red flags ----------------------------------------------------
    cid = "facts-chronic-incontinence-lumbar-xr"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Dubois-Test", "Yvette", "female", "1946-12-19")
    conds = [
        cond(f"c-{h}-ui", pid, icd="R32", sct="165232002", onset="2012-03-05", text="Urinary incontinence since 2012"),
        cond(f"c-{h}-lbp", pid, icd="M54.50", sct="279039007", onset="2015-08-20", text="Chronic low back pain"),
    ]
    sr = sr_of(f"sr-{h}-xr", pid, "72100", enc, reasons=("279039007",))
    add(cid, request(cid, pat, conds, [sr]),
        "80F, urinary incontinence since 2012 (R32), chronic low back pain since 2015, no fracture; order "
        "lumbar spine radiographs (72100).",
        "decision-rules §6.2 (unspecific neurologic codes count only when recent, on the order's reasonCode "
        "or as an encounter diagnosis, and with spine context)", 200, None,
        {f"ServiceRequest/{sr['id']}": None}, [],
        "Incontinence for 14 years is a chronic geriatric problem, not a neurologic red flag: no critical "
        "card, no urgent MRI or neurosurgery. No fracture is on record, so no VCF variant applies: silence, "
        "no rating.")

    cid = "facts-retention-encounter-diagnosis-mri"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Kowalski-Test", "Irena", "female", "1945-06-30")
    conds = [
        cond(f"c-{h}-ui", pid, icd="R32", sct="165232002", onset="2012-03-05", text="Urinary incontinence since 2012"),
        cond(f"c-{h}-vcf", pid, icd="M48.56XA", sct="42942008", onset=week, text="L2 compression fracture"),
        cond(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=week),
        _as_encounter_diagnosis(cond(f"c-{h}-ret", pid, icd="R33.9", text="Urinary retention today, bladder scan 600 mL"),
                                enc),
    ]
    sr = sr_of(f"sr-{h}-mri", pid, "72148", enc, reasons=("42942008",))
    add(cid, request(cid, pat, conds, [sr]),
        "81F, incontinence since 2012 (R32), new L2 VCF (1 week), back pain, and urinary retention (R33.9) "
        "diagnosed at this encounter (encounter diagnosis, no onset date); order MRI lumbar without "
        "contrast (72148).",
        "decision-rules §6.2 (an encounter diagnosis of the current encounter counts), §2.1, §1 LBP variant 4",
        200, "LBP-4", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["critical"],
        "The retention diagnosed today, with a new lumbar fracture, is a neurologic red flag: one critical "
        "card whose evidence is the R33.9 encounter diagnosis (not the 2012 incontinence). The MRI without "
        "contrast is Usually appropriate under ACR Low Back Pain variant 4 -> appropriate.")

    # ---- §6.3 time --------------------------------------------------------------------
    cid = "facts-sequela-fracture-copd-kyphoplasty"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Whitfield-Test", "Dorothy", "female", "1940-08-08")
    conds = [
        cond(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2011-01-10"),
        cond(f"c-{h}-vcf", pid, icd="M80.08XS", onset="2019-04-02", text="T11 osteoporotic fracture 2019, sequela"),
        cond(f"c-{h}-copd", pid, icd="J44.9", onset="2019-02-14"),
        cond(f"c-{h}-dysp", pid, icd="R06.00", sct="267036007", onset="2019-02-14", text="Dyspnea from COPD"),
        cond(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=two_weeks),
    ]
    sr = sr_of(f"sr-{h}-kp", pid, "22513", enc, reasons=("279039007",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "86F, osteoporosis, T11 fracture in 2019 coded as a sequela (M80.08XS), COPD with dyspnea since 2019, "
        "back pain for 2 weeks; order kyphoplasty thoracic (22513).",
        "decision-rules §6.3 (V6/V7 need a current fracture; 'worsening' needs recent onset), LCD L34228",
        200, None, {f"ServiceRequest/{sr['id']}": None}, ["info", "info"],
        "A 2019 sequela is not a current fracture and COPD dyspnea since 2019 is not 'worsening': V7 does not "
        "apply and augmentation is NOT rated Usually appropriate. No rating; an info card naming what is "
        "missing (a current fracture) and the osteoporosis-therapy reminder (augmentation checklist).",
        codes_outside_section4={"J44.9": "COPD, the cause of the old dyspnea (not a fact of any value set)"})

    # ---- §6.4 fragility fracture --------------------------------------------------------
    cid = "facts-fragility-traumatic-code-mri"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Oyelaran-Test", "Grace", "female", "1943-04-17")
    conds = [
        cond(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2016-11-03"),
        cond(f"c-{h}-fx", pid, icd="S32.010A", onset=week, text="L1 wedge fracture after a fall from standing height"),
        cond(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=week),
    ]
    sr = sr_of(f"sr-{h}-mri", pid, "72148", enc, reasons=("279039007",))
    add(cid, request(cid, pat, conds, [sr]),
        "83F, osteoporosis, L1 wedge fracture coded S32.010A after a fall from standing height (1 week), back "
        "pain; order MRI lumbar without contrast (72148).",
        "decision-rules §6.4 (ICD-10-CM Official Guidelines I.C.13.d.2), §1 V1", 200, "V1",
        {f"ServiceRequest/{sr['id']}": "appropriate"}, ["info"],
        "With osteoporosis on record the S32.0- code is read as a fragility fracture, not high-energy trauma: "
        "V1, MRI without contrast Usually appropriate (OFFICIAL) -> appropriate, and one info card saying "
        "how the code was read (I.C.13.d.2) instead of 'traumatic: spine surgery evaluation'.")

    # ---- §6.5 infection -------------------------------------------------------------------
    cid = "facts-osteomyelitis-kyphoplasty"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Brennan-Test", "Maureen", "female", "1943-09-09")
    conds = [
        cond(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2012-05-21"),
        cond(f"c-{h}-vcf", pid, icd="M80.08XA", onset=three_weeks, text="T12 osteoporotic compression fracture"),
        cond(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=three_weeks),
        cond(f"c-{h}-kyph", pid, icd="M40.204", sct="414564002", onset=two_weeks),
        cond(f"c-{h}-osm", pid, icd="M46.24", onset=week, text="T11-T12 vertebral osteomyelitis, on IV antibiotics"),
    ]
    sr = sr_of(f"sr-{h}-kp", pid, "22513", enc, reasons=("279039007",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "83F, osteoporosis, T12 osteoporotic VCF (3 weeks), back pain, new kyphosis, and vertebral "
        "osteomyelitis (M46.24) on treatment; order kyphoplasty thoracic (22513).",
        "decision-rules §6.5 (infection: absolute exclusion, CMS LCD L34228)", 200, None,
        {f"ServiceRequest/{sr['id']}": None}, ["critical"],
        "Active vertebral osteomyelitis is an absolute exclusion for augmentation: one critical card, and "
        "no PAMA rating (before issue 12: 'appropriate' plus a warning saying 'absolute contraindication').",
        codes_outside_section4={"M46.24": "vertebral osteomyelitis (decision-rules §6.5)"})

    # ---- §6.8 region -------------------------------------------------------------------
    cid = "facts-cervical-mri-for-lumbar-fracture"
    pid, enc, h, pat, conds = bc.story_v1(cid, given="Ignaz")
    sr = sr_of(f"sr-{h}-mri", pid, "72141", enc, reasons=("42942008", "279039007"))
    add(cid, request(cid, pat, conds, [sr]),
        "V1 patient (70M, new lumbar VCF M48.56XA, back pain); order MRI cervical spine without contrast (72141).",
        "decision-rules §6.8 (an order must image the fractured region)", 200, "V1",
        {f"ServiceRequest/{sr['id']}": None}, ["warning"],
        "MRI without contrast is Usually appropriate in V1, but a cervical study does not image a lumbar "
        "fracture: no 'appropriate' rating, and a warning naming the mismatch (cervical order, lumbar fracture).")

    cid = "facts-lumbar-kyphoplasty-for-thoracic-fracture"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Sorensen-Test", "Ingrid", "female", "1942-01-30")
    conds = [
        cond(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2013-07-07"),
        cond(f"c-{h}-vcf", pid, icd="M48.54XA", sct="42942008", onset=three_weeks, text="T8 compression fracture"),
        cond(f"c-{h}-pain", pid, icd="M54.6", onset=three_weeks),
        cond(f"c-{h}-kyph", pid, icd="M40.204", sct="414564002", onset=two_weeks),
    ]
    sr = sr_of(f"sr-{h}-kp", pid, "22514", enc, reasons=("42942008",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "84F, osteoporosis, thoracic VCF (M48.54XA, 3 weeks), thoracic back pain, new kyphosis; order "
        "kyphoplasty LUMBAR (22514).",
        "decision-rules §6.8, §1 V7", 200, "V7", {f"ServiceRequest/{sr['id']}": None}, ["warning", "info"],
        "V7 rates augmentation Usually appropriate, but a lumbar kyphoplasty does not treat a thoracic "
        "fracture: no 'appropriate' rating, a warning naming the mismatch, and the routine augmentation "
        "checklist (one card, or two before the checklist card).",
        acceptable_indicators=[["warning", "info", "info"]])

    # ---- §6.9 asymptomatic -------------------------------------------------------------
    cid = "facts-asymptomatic-fracture-kyphoplasty"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Albrecht-Test", "Hannelore", "female", "1947-03-03")
    conds = [
        cond(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2015-02-02"),
        cond(f"c-{h}-vcf", pid, icd="M80.08XA", onset=two_weeks,
             text="T9 wedge fracture, incidental on chest radiograph, age-indeterminate"),
        cond(f"c-{h}-asx", pid, sct="84387000", onset=two_weeks, text="No back pain: fracture asymptomatic"),
    ]
    sr = sr_of(f"sr-{h}-kp", pid, "22513", enc, reasons=("42942008",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "79F, osteoporosis, incidental T9 fracture recorded as asymptomatic (SNOMED 84387000), no back pain; "
        "order kyphoplasty thoracic (22513).",
        "decision-rules §6.9 (augmentation for an asymptomatic fracture: a warning), §1 V5", 200, "V5",
        {f"ServiceRequest/{sr['id']}": "no-criteria-apply"}, ["info", "warning", "info", "info"],
        "V5 (asymptomatic osteoporotic VCF) rates only medical management (Usually appropriate): augmentation "
        "is not rated there (no-criteria-apply). A warning that augmentation treats pain and medical "
        "management is the Usually appropriate option; the routine reminders. i12-cards may merge the info "
        "cards.",
        acceptable_indicators=[["warning", "info"], ["warning", "info", "info"], ["warning"]],
        codes_outside_section4={"84387000": "SNOMED CT Asymptomatic (decision-rules §6.9)"})
