"""Fixtures for issue 13, "read what the clinician sees: radiology reports, medications and labs".

Each case is a complete order-select request as an EHR posts it, built with the helpers of
``build_cases.py`` (which calls :func:`build` with itself as ``bc``), with the new prefetch keys
``radiologyReports``, ``medicationRequests``, ``medicationStatements`` and ``coagulationLabs``.
A key sent as ``null`` means the EHR ran the query and found nothing; an absent key was not
sent (and is not fetched in these fixtures), so the card names it as not read.

Reports are the radiology reports of ``tests/corpus/`` (written for this project from the seed
stories), their subject set to the case's patient. RxNorm codes come from the reading value
sets (``cds_service/decision/data/reading/valuesets/``); LOINC 6301-6 (INR) and 777-3
(platelets) from ``coagulation-labs-loinc``.

    .venv/bin/python fhir_fixtures/build_cases.py
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "tests" / "corpus"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
WILLIA = "Willia_Runolfsdottir_074c3873-c476-40e3-8046-f67372eb5e05.json"
CPT_TEXT = {
    "22514": "Percutaneous vertebral augmentation (kyphoplasty), including cavity creation, lumbar, unilateral or bilateral cannulation",
}


def report(name: str, pid: str) -> dict:
    """A corpus DiagnosticReport as this patient's."""
    r = json.loads((CORPUS / name).read_text(encoding="utf-8"))
    r["subject"] = {"reference": f"Patient/{pid}"}
    return r


def inr(oid: str, pid: str, value: float, when: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": "6301-6",
                                 "display": "INR in Platelet poor plasma by Coagulation assay"}], "text": "INR"},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "INR", "system": "http://unitsofmeasure.org", "code": "{INR}"}}


def platelets(oid: str, pid: str, value: float, when: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": "777-3",
                                 "display": "Platelets [#/volume] in Blood by Automated count"}], "text": "Platelets"},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "10*3/uL", "system": "http://unitsofmeasure.org",
                              "code": "10*3/uL"}}


def warfarin(mid: str, pid: str, authored: str) -> dict:
    return {"resourceType": "MedicationRequest", "id": mid, "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "855332",
                                                      "display": "warfarin sodium 5 MG Oral Tablet"}],
                                          "text": "Warfarin 5 mg tablet"},
            "subject": {"reference": f"Patient/{pid}"}, "authoredOn": authored}


def with_reading(bc: ModuleType, body: dict, *, reports=None, meds=None, labs=None, statements=None) -> dict:
    """Add the reading keys: a list -> a searchset Bundle, None -> null (nothing found)."""
    for key, value in (("radiologyReports", reports), ("medicationRequests", meds),
                       ("medicationStatements", statements), ("coagulationLabs", labs)):
        if value != "absent":
            body["prefetch"][key] = None if value is None else bc.searchset(value)
    return body


def build(bc: ModuleType) -> None:
    """Write the issue-13 reading cases with ``bc`` (the build_cases module)."""
    bc.CPT_TEXT.update(CPT_TEXT)
    add, request, ids, sr_of, cond, proc = (bc.add, bc.request, bc.ids, bc.service_request, bc.condition,
                                            bc.procedure)

    # ---- seed 003 with its MRI report: variant 6 -------------------------------------
    cid = "reading-seed-003-mri-report-v6"
    pid, enc, h, pat, conds = bc.story_003(cid)
    sr = sr_of(f"sr-{h}-kp", pid, "22513", enc, reasons=("42942008",))
    body = with_reading(bc, request(cid, pat, conds, [sr], procedures=[]),
                        reports=[report("seed-003-mri-thoracic-spine.json", pid)], meds=None, statements=None,
                        labs=None)
    add(cid, body,
        "Seed 003 record (acute T8 osteoporotic VCF, 3 weeks of mid-thoracic pain, no osteoporosis therapy) "
        "with its MRI thoracic spine report of 2026-11-09 as a DiagnosticReport (text/plain presentedForm: "
        "'extensive bone marrow edema ... with a small intravertebral cleft' at T8; a PDF copy too); no "
        "medications, no labs (keys null); order kyphoplasty thoracic (22513).",
        "seed 003; decision-rules.md §2.3 (V6 edema or cleft on MRI), §6 rule 3; CMS LCD L34228 (acute < 6 weeks)",
        200, "V6", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["info"],
        "The MRI report puts marrow edema and a cleft at T8, the level of the current fracture (the Condition's "
        "text names T8), 7 days before the order: ACR V6, vertebral augmentation Usually appropriate. The "
        "edema is from report text, so the card shows the sentence marked 'from report text, unconfirmed'. "
        "One info checklist card: osteoporosis therapy (none on record); no 'no MRI evidence' reminder. The "
        "PDF attachment is listed under skippedResources.")

    # ---- seed 003 with reports read and no spine MRI: MRI as next step -----------------
    cid = "reading-seed-003-no-spine-mri"
    pid, enc, h, pat, conds = bc.story_003(cid)
    sr = sr_of(f"sr-{h}-kp", pid, "22513", enc, reasons=("42942008",))
    body = with_reading(bc, request(cid, pat, conds, [sr], procedures=[]), reports=[], meds=None,
                        statements=None, labs=None)
    add(cid, body,
        "Seed 003 record; the radiology reports were searched and hold no spine MRI (empty searchset); order "
        "kyphoplasty thoracic (22513).",
        "seed 003; seed 001 FAQ and seed 000 takeaway 2 (MRI without contrast first); decision-rules.md §2.3, §3.3",
        200, None, {f"ServiceRequest/{sr['id']}": None}, ["info", "info"],
        "No rating (V6 needs edema, V7 worsening: the missing-facts card). The checklist names the next step: "
        "an MRI of the thoracic spine without contrast, with a suggestion creating it (CPT 72146), and the "
        "osteoporosis-therapy reminder.")

    # ---- Synthea alendronate record: no therapy reminder -------------------------------
    src = bc.SHARED / "interop" / "synthea" / WILLIA
    bundle = json.loads(src.read_text(encoding="utf-8"))
    resources = [(e["fullUrl"], e["resource"]) for e in bundle["entry"]]
    patient = next(r for _, r in resources if r["resourceType"] == "Patient")
    spid = patient["id"]
    cid = "reading-synthea-willia-alendronate-kyphoplasty"
    _, enc, h = ids(cid)
    synthea_conds = [r for _, r in resources if r["resourceType"] == "Condition"]
    added = [
        cond(f"c-{h}-vcf", spid, icd="M80.08XA", onset=bc.THREE_WEEKS_AGO,
             text="Acute L1 osteoporotic compression fracture"),
        cond(f"c-{h}-pain", spid, icd="M54.50", sct="279039007", onset=bc.THREE_WEEKS_AGO),
    ]
    synthea_codes = {str(c["code"]) for _, r in resources if r["resourceType"] in ("Condition", "Procedure")
                     for c in r["code"].get("coding", ())} - {"64859006"}
    sr = sr_of(f"sr-{h}-kp", spid, "22514", enc, reasons=("42942008",))
    body = request(cid, patient, synthea_conds + added, [sr],
                   procedures=[r for _, r in resources if r["resourceType"] == "Procedure"])
    body["prefetch"]["medicationRequests"] = {
        "resourceType": "Bundle", "type": "searchset",
        "entry": [{"fullUrl": u, "resource": r, "search": {"mode": "match"}} for u, r in resources
                  if r["resourceType"] == "MedicationRequest"]}
    add(cid, body,
        "Synthea record Willia Runolfsdottir (osteoporosis; active MedicationRequest RxNorm 904419 'Alendronic acid "
        "10 MG Oral Tablet' since 2012), her Conditions, Procedures and MedicationRequests copied unchanged, plus "
        "an acute L1 osteoporotic VCF and low back pain (3 weeks); no radiology reports or labs sent; order "
        "kyphoplasty lumbar (22514).",
        f"shared/interop/synthea/{WILLIA} (github.com/smart-on-fhir/generated-sample-data commit 25ac808); "
        "decision-rules.md §2 rule 6; issue 13",
        200, None, {f"ServiceRequest/{sr['id']}": None}, ["info"],
        "The alendronate order is active: osteoporosis therapy is on record (RxNorm 904419, shown as evidence), "
        "so there is no osteoporosis-therapy reminder and, with nothing else to check, no checklist card. No "
        "rating: V6 / V7 facts missing, the one info card asks for MRI edema or a worsening sign and says the "
        "radiology reports could not be read. The same "
        "record without its MedicationRequests gets the reminder (tests/test_record_reading.py).",
        codes_outside_section4={code: "in the Synthea record, copied unchanged" for code in sorted(synthea_codes)})

    # ---- INR 2.8 two days before a kyphoplasty -----------------------------------------
    cid = "reading-inr-2-8-kyphoplasty"
    pid, enc, h, pat, conds = bc.story_003(cid)
    sr = sr_of(f"sr-{h}-kp", pid, "22513", enc, reasons=("42942008",))
    body = with_reading(bc, request(cid, pat, conds, [sr], procedures=[]),
                        reports=[report("seed-003-mri-thoracic-spine.json", pid)],
                        meds=[warfarin(f"mr-{h}-warf", pid, "2025-03-02T10:00:00-05:00")], statements=None,
                        labs=[inr(f"obs-{h}-inr", pid, 2.8, "2026-11-14T08:10:00-05:00"),
                              platelets(f"obs-{h}-plt", pid, 212, "2026-11-14T08:10:00-05:00")])
    add(cid, body,
        "Seed 003 record with its MRI report, on warfarin (RxNorm 855332, active), INR 2.8 and platelets "
        "212 x 10^9/L two days before the order; order kyphoplasty thoracic (22513).",
        "seed 003; SIR consensus (Patel IJ et al., J Vasc Interv Radiol 2019;30(8):1168-1184); "
        "decision-rules.md §2.2",
        200, "V6", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["warning"],
        "V6, augmentation Usually appropriate (edema and cleft at T8). The checklist is a warning: INR 2.8 on "
        "2026-11-14 is above the SIR range for high bleeding-risk procedures (INR 1.5-1.8 or less), named with "
        "the threshold and the citation; the warfarin order asks for peri-procedural management; platelets "
        "212 are within the threshold and not named.")

    # ---- edema at a previously augmented level (seed 002) ------------------------------
    cid = "reading-edema-at-treated-level"
    pid, enc, h = ids(cid)
    pat = bc.patient(pid, "Okafor-Test", "Grace", "female", "1946-02-14")
    conds = [
        cond(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2015-04-20"),
        cond(f"c-{h}-hx", pid, icd="Z87.310", onset="2026-03-10"),
        cond(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=bc.TWO_WEEKS_AGO,
             text="Recurrent low back pain 8 months after L1 vertebroplasty"),
    ]
    procs = [proc(f"pr-{h}-vp", pid, "22514", CPT_TEXT["22514"], "2026-03-10T08:15:00-05:00",
                  body_site_text="L1 vertebral body")]
    sr = sr_of(f"sr-{h}-kp", pid, "22514", enc, reasons=("279039007",))
    body = with_reading(bc, request(cid, pat, conds, [sr], procedures=procs),
                        reports=[report("seed-002-mri-after-vertebroplasty.json", pid)], meds=None,
                        statements=None, labs=None)
    add(cid, body,
        "Osteoporosis, L1 augmentation 8 months ago, recurrent low back pain; lumbar MRI report of 2026-11-02: "
        "'Persistent marrow edema at the previously augmented L1 level ... No new fracture'; order kyphoplasty "
        "lumbar (22514) again.",
        "seed 002 (Dansie et al., AJNR: edema persists at treated levels); decision-rules.md §2.7",
        200, None, {f"ServiceRequest/{sr['id']}": None}, ["info", "info"],
        "The edema is at the treated level: not a new fracture, no variant 6. No rating (no current fracture "
        "coded). The checklist says the edema is at a treated level (from report text) and carries the "
        "osteoporosis-therapy reminder; no 'no MRI' reminder since a spine MRI was read.")

    # ---- the same study reported a week ago ------------------------------------------
    cid = "reading-same-study-mri-thoracic"
    pid, enc, h, pat, conds = bc.story_003(cid)
    sr = sr_of(f"sr-{h}-mri", pid, "72146", enc, reasons=("42942008",))
    body = with_reading(bc, request(cid, pat, conds, [sr], procedures=[]),
                        reports=[report("seed-003-mri-thoracic-spine.json", pid)], meds=None, statements=None,
                        labs=None)
    add(cid, body,
        "Seed 003 record with its MRI thoracic spine report of 2026-11-09; order MRI thoracic spine without "
        "contrast (72146) again on 2026-11-16.",
        "seed 003; issue 13 (same study within a short window: an information card naming the earlier report)",
        200, "V1", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["info"],
        "V1, MRI without contrast Usually appropriate, but the same study (MR thoracic spine) was reported 7 "
        "days before: one info card naming the earlier report and date; the 30-day window is this service's "
        "choice, said on the card.")

    # ---- incidental fracture on a chest CT, no back pain ------------------------------
    cid = "reading-incidental-fracture-chest-ct"
    pid, enc, h = ids(cid)
    pat = bc.patient(pid, "Varga-Test", "Ilona", "female", "1944-09-30")
    conds = [
        cond(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2014-01-08"),
        cond(f"c-{h}-vcf", pid, icd="M48.54XA", onset="2026-10-15",
             text="T7 compression deformity seen on chest CT"),
    ]
    sr = sr_of(f"sr-{h}-kp", pid, "22513", enc, reasons=("42942008",))
    body = with_reading(bc, request(cid, pat, conds, [sr], procedures=[]),
                        reports=[report("chest-ct-incidental-t7.json", pid)], meds=None, statements=None, labs=None)
    add(cid, body,
        "Osteoporosis; T7 collapsed vertebra coded after a chest CT of 2026-10-15 whose report says 'Incidental "
        "age-indeterminate compression deformity of T7'; no back pain on record; order kyphoplasty thoracic "
        "(22513).",
        "decision-rules.md §6 rule 9 (incidental fracture, no back pain: probable asymptomatic); ACR V5",
        200, "V5", {f"ServiceRequest/{sr['id']}": "no-criteria-apply"}, ["warning", "info"],
        "The chest CT describes the fracture as incidental and age-indeterminate and the record has no back "
        "pain: probable asymptomatic VCF, from report text (unconfirmed). V5 (its table rates medical "
        "management only: no criteria apply to augmentation), with the asymptomatic-augmentation warning "
        "showing the sentence; the checklist suggests the MRI first (no spine MRI among the reports).")

