"""Fixture cases for the cards and suggestions (issue 12: suggestions never remove needed care;
cards a clinician reads in 5 seconds).

``add_cases(bc)`` is called by ``build_cases.build()`` with the build_cases module, whose
builders (patients, Conditions, orders, the request body) and ``add`` it uses, so these cases
are built exactly like the others. Clinical content: ../shared/clinical/decision-rules.md
(§1 variants, §2 rules, §6 corrections) and the seed stories; expectations were written from
those, as a clinician reads them. Deterministic: no clock, no randomness.
"""
from __future__ import annotations

SCT = "http://snomed.info/sct"

# Codes these cases add to the shared display tables (ICD-10-CM checked by the validator).
ICD_TEXT = {
    "M54.50": "Low back pain, unspecified",
    "G83.4": "Cauda equina syndrome",
}
CPT_TEXT = {
    "77080": "Dual-energy X-ray absorptiometry (DXA), bone density study, 1 or more sites; axial skeleton",
    "78306": "Bone and/or joint imaging; whole body",
}
# SNOMED CT orders outside decision-rules §4 (which lists no consultation code); both are in
# the service's order value set for surgical consultation (valuesets/order-surgical-consultation.json).
SURGICAL_REFERRAL = {"system": SCT, "code": "308482002", "display": "Referral to neurosurgeon (procedure)"}


def _consultation_request(bc, srid, pid, enc, coding, reasons=()):
    sr = bc.service_request(srid, pid, "22514", enc, reasons=reasons)
    sr["code"] = {"coding": [dict(coding)], "text": coding["display"]}
    return sr


def add_cases(bc) -> None:
    """Write this module's request fixtures and add their manifest entries via ``bc.add``."""
    bc.ICD_TEXT.update(ICD_TEXT)
    bc.CPT_TEXT.update(CPT_TEXT)

    # ---- V8: consultations and unknown cells are never replaced ---------------------------
    cid = "cards-v8-surgical-consultation-kept"
    pid, enc, h, pat, conds = bc.story_malignancy(cid, pathologic=True)
    sr = _consultation_request(bc, f"sr-{h}-surg", pid, enc, SURGICAL_REFERRAL, reasons=("279039007",))
    bc.add(cid, bc.request(cid, pat, conds, [sr], procedures=[]),
           "67F, bone metastases (C79.51), pathologic lumbar VCF (M84.58XA), ongoing back pain; order a "
           "spine surgery consultation (SNOMED CT 308482002 referral to neurosurgeon).",
           "decision-rules §1 V8 (SECONDARY), §6.7 (consultations are never replaced; radiation oncology "
           "consultation is added, not swapped in)",
           200, "V8", {f"ServiceRequest/{sr['id']}": "no-criteria-apply"}, ["info"],
           "V8 rates only radiation oncology consultation (Usually appropriate, SECONDARY); the surgical "
           "consultation cell is not held by this service -> no-criteria-apply. One info card that leads "
           "with 'Add radiation oncology consultation', whose only suggestion CREATES that consultation: "
           "nothing is deleted (a pathologic fracture with mechanical pain may be unstable and needs the "
           "spine-surgery opinion). The card says the rating comes from a third-party summary.",
           codes_outside_section4=["308482002"])

    cid = "cards-v8-ablation-kept"
    pid, enc, h, pat, conds = bc.story_malignancy(cid, pathologic=True)
    sr = bc.service_request(f"sr-{h}-abl", pid, "20982", enc, reasons=("279039007",))
    bc.add(cid, bc.request(cid, pat, conds, [sr], procedures=[]),
           "Same V8 patient; order percutaneous radiofrequency ablation (20982).",
           "decision-rules §1 V8, §6.7 (a cell the service does not know gets no delete/replace)",
           200, "V8", {f"ServiceRequest/{sr['id']}": "no-criteria-apply"}, ["info"],
           "Ablation is UNKNOWN in V8 (the ACR rated it; this service lacks the cell): no delete, no "
           "replace; the card says 'rating not available to this service' and suggests adding a "
           "radiation oncology consultation.")

    # ---- DXA after a fragility fracture ----------------------------------------------------
    cid = "cards-dxa-after-fragility-fracture"
    pid, enc, h = bc.ids(cid)
    pat = bc.patient(pid, "Nakamura-Test", "Hiroko", "female", "1950-05-05")
    conds = [
        bc.condition(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2018-04-02"),
        bc.condition(f"c-{h}-vcf", pid, icd="M80.08XA", onset=bc.ONE_WEEK_AGO,
                     text="L1 osteoporotic compression fracture after lifting a grocery bag"),
        bc.condition(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=bc.ONE_WEEK_AGO),
    ]
    sr = bc.service_request(f"sr-{h}-dxa", pid, "77080", enc, reasons=("42942008",))
    bc.add(cid, bc.request(cid, pat, conds, [sr]),
           "76F, osteoporosis, new osteoporotic VCF a week ago (M80.08XA), back pain; order DXA (77080).",
           "decision-rules §6.7 (DXA after a fragility fracture is the osteoporosis work-up, LCD L34228; "
           "never replaced)",
           200, "V1", {f"ServiceRequest/{sr['id']}": "no-criteria-apply"}, [],
           "V1 does not rate DXA -> no-criteria-apply, and no card: bone density testing is the "
           "osteoporosis work-up and is never replaced (today it was replaced by a whole-spine MRI).")

    # ---- replacement imaging takes its region from the record ---------------------------------
    cid = "cards-bone-scan-region-from-fracture"
    pid, enc, h = bc.ids(cid)
    pat = bc.patient(pid, "Fairweather-Test", "Clement", "male", "1955-10-12")
    conds = [
        bc.condition(f"c-{h}-vcf", pid, icd="M48.54XA", sct="42942008", onset=bc.ONE_WEEK_AGO,
                     text="T11 compression fracture on thoracic radiographs"),
        bc.condition(f"c-{h}-pain", pid, icd="M54.6", onset=bc.ONE_WEEK_AGO),
    ]
    sr = bc.service_request(f"sr-{h}-nm", pid, "78306", enc, reasons=("42942008",))
    bc.add(cid, bc.request(cid, pat, conds, [sr]),
           "71M, new thoracic collapsed vertebra (M48.54XA), thoracic back pain (M54.6); order bone scan "
           "whole body (78306), which names no spine region.",
           "decision-rules §1 V1 (bone scan May be appropriate), §6.8 (region), issue 12",
           200, "V1", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["info"],
           "Bone scan is May be appropriate in V1 -> appropriate, with an info card that leads with the "
           "better-rated study. The order names no region, so the suggested MRI / CT take it from the "
           "fracture code (M48.54XA, thoracic): MRI thoracic spine without contrast (72146) and CT "
           "thoracic spine without contrast (72128), not a whole-spine study.",
           suggested_cpt=["72146", "72128"])

    cid = "cards-bone-scan-region-unknown"
    pid, enc, h = bc.ids(cid)
    pat = bc.patient(pid, "Quennell-Test", "Agatha", "female", "1949-01-30")
    conds = [
        bc.condition(f"c-{h}-vcf", pid, icd="M80.08XA", onset=bc.ONE_WEEK_AGO,
                     text="Osteoporotic vertebral fracture"),
        bc.condition(f"c-{h}-pain", pid, sct="161891005", onset=bc.ONE_WEEK_AGO),
    ]
    sr = bc.service_request(f"sr-{h}-nm", pid, "78306", enc, reasons=("161891005",))
    bc.add(cid, bc.request(cid, pat, conds, [sr]),
           "77F, new osteoporotic VCF with no level coded (M80.08XA), backache (SNOMED 161891005, no "
           "region); order bone scan whole body (78306).",
           "decision-rules §1 V1, §6.8; issue 12 (whole spine only when the region is unknown, and then "
           "the card says so)",
           200, "V1", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["info"],
           "Neither the order nor the record names a region: the suggested MRI covers the whole spine "
           "(LOINC 36531-2 MR spine without contrast) and the card says the region is unknown. No CT is "
           "suggested (no whole-spine CT code).")

    # ---- red flags: the MRI already covers the lumbar fracture -------------------------------
    cid = "cards-red-flag-lumbar-fracture-mri-ordered"
    pid, enc, h = bc.ids(cid)
    pat = bc.patient(pid, "Ostrowski-Test", "Bogdan", "male", "1952-06-21")
    conds = [
        bc.condition(f"c-{h}-vcf", pid, icd="M48.56XA", sct="42942008", onset=bc.ONE_WEEK_AGO,
                     text="L2 compression fracture"),
        bc.condition(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=bc.ONE_WEEK_AGO),
        bc.condition(f"c-{h}-ces", pid, icd="G83.4", onset=bc.TODAY, text="Cauda equina syndrome"),
    ]
    sr = bc.service_request(f"sr-{h}-mri", pid, "72148", enc, reasons=("279039007",))
    bc.add(cid, bc.request(cid, pat, conds, [sr]),
           "74M, new lumbar collapsed vertebra (M48.56XA), back pain, cauda equina syndrome (G83.4) "
           "today; order MRI lumbar spine without contrast (72148).",
           "decision-rules §2.1, §6.2 (never suggest an MRI the draft orders already cover; the red-flag "
           "MRI covers the fracture level); ACR Low Back Pain variant 4",
           200, "LBP-4", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["critical"],
           "One critical card. The fracture is lumbar and the lumbar MRI without contrast is already "
           "ordered: no second MRI is suggested, only the urgent spine surgery consultation.")

    # ---- post-augmentation MRI at the treated level --------------------------------------------
    cid = "cards-mri-after-kyphoplasty-same-level"
    pid, enc, h, pat, conds, procs = bc.story_001(cid)
    sr = bc.service_request(f"sr-{h}-img", pid, "72148", enc, reasons=("161891005",))
    bc.add(cid, bc.request(cid, pat, conds, [sr], procedures=procs),
           "Seed 001 story (kyphoplasty L2, CPT 22514, two years ago; new back pain); order MRI lumbar "
           "spine without contrast (72148), which images the treated level.",
           "seed 001, seed 002 (Dansie et al., AJNR 2005); decision-rules §2.7; issue 12",
           200, "V3", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["info"],
           "V3: MRI without contrast Usually appropriate -> appropriate. The MRI covers the lumbar level "
           "treated by 22514, so the info card on post-augmentation MRI findings (persistent edema and "
           "height loss are common; look for a new fracture at another level) is shown.")

    # ---- record text escaped; evidence capped --------------------------------------------------
    cid = "cards-record-text-escaped"
    pid, enc, h, pat, conds = bc.story_v1(cid, given="Mallory")
    conds[1]["code"]["coding"][0]["display"] = ("[x](javascript:alert(1)) ![i](https://evil.example/i.png) "
                                                "<img src=x onerror=alert(1)> *pain* `code`")
    sr = bc.service_request(f"sr-{h}-mri", pid, "72158", enc, reasons=("42942008", "279039007"))
    bc.add(cid, bc.request(cid, pat, conds, [sr]),
           "V1 patient whose back-pain Condition carries markdown and HTML in its coding displays "
           "(a javascript: link, an image link, an <img> tag); order 72158.",
           "issue 12 (record text escaped for CommonMark before it goes into detail); decision-rules §1 V1",
           200, "V1", {f"ServiceRequest/{sr['id']}": "not-appropriate"}, ["warning"],
           "Same advice as v1-new-vcf-mri-with-contrast; the displays appear in the evidence as inert "
           "text: no link, image or HTML when the detail is rendered as CommonMark.",
           suggested_cpt=["72148", "72131"])

    cid = "cards-evidence-capped"
    pid, enc, h, pat, conds = bc.story_v1(cid, given="Octavius")
    for i in range(12):
        conds.append(bc.condition(f"c-{h}-pain{i:02d}", pid, icd="M54.50", sct="279039007",
                                  onset=bc.ONE_WEEK_AGO, text=f"Low back pain, visit {i + 1}"))
    sr = bc.service_request(f"sr-{h}-mri", pid, "72158", enc, reasons=("42942008", "279039007"))
    bc.add(cid, bc.request(cid, pat, conds, [sr]),
           "V1 patient with the back pain recorded 13 times (one Condition per visit); order 72158.",
           "issue 12 (evidence lines: one per resource with its codes together, capped at 8, then "
           "'and N more'); decision-rules §1 V1",
           200, "V1", {f"ServiceRequest/{sr['id']}": "not-appropriate"}, ["warning"],
           "One warning card; its evidence lists 8 resources, one line each with all their codes, then "
           "'and N more'.",
           suggested_cpt=["72148", "72131"])
