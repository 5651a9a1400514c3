"""Build the hand-written order-select request fixtures and the manifest cases.json.

Writes:  fhir_fixtures/requests/<case-id>.json   (complete request bodies, as an EHR POSTs
         them to /cds-services/vcf-order-select)
         fhir_fixtures/requests/argonaut-scenario-01-as-sent.json (byte copy of
         ../shared/interop/argonaut-pama/scenario-01-outbound-request.json)
         fhir_fixtures/cases.json (manifest: every case with its expected outcome)
Also runs build_synthea_requests.py and adds its cases to the manifest.

The clinical content of every case comes from ../shared/clinical/decision-rules.md and the
seed stories in ../shared/seeds/; the expectations were written from decision-rules.md as
a clinician reads it, not from the service code. Codes: only those listed in
decision-rules.md §4 (except where a case deliberately needs an out-of-scope code, which
its manifest entry says). Deterministic: no clock, no randomness.

    .venv/bin/python fhir_fixtures/build_cases.py
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_synthea_requests  # noqa: E402
import cases_cards  # noqa: E402

REQUESTS = HERE / "requests"
SHARED = build_synthea_requests.shared_dir()

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
BASE = "https://ehr.example.org/fhir"

# "today" for every hand-written case: orders are authored 2026-11-16.
TODAY = "2026-11-16"
AUTHORED = "2026-11-16T09:30:00-05:00"
THREE_WEEKS_AGO = "2026-10-26"
TWO_WEEKS_AGO = "2026-11-02"
ONE_WEEK_AGO = "2026-11-09"
THREE_MONTHS_AGO = "2026-08-16"
TWO_YEARS_AGO = "2024-11-14"

# ICD-10-CM (all checked with simple_icd_10_cm.is_valid_item; see validate_fixtures.py)
ICD_TEXT = {
    "M81.0": "Age-related osteoporosis without current pathological fracture",
    "M80.08XA": "Age-related osteoporosis with current pathological fracture, vertebra(e), initial encounter for fracture",
    "M80.08XD": "Age-related osteoporosis with current pathological fracture, vertebra(e), subsequent encounter for fracture with routine healing",  # noqa: E501 - an ICD-10-CM display, kept whole
    "M48.54XA": "Collapsed vertebra, not elsewhere classified, thoracic region, initial encounter for fracture",
    "M48.56XA": "Collapsed vertebra, not elsewhere classified, lumbar region, initial encounter for fracture",
    "M84.58XA": "Pathological fracture in neoplastic disease, other specified site, initial encounter for fracture",
    "M54.50": "Low back pain, unspecified",
    "M54.6": "Pain in thoracic spine",
    "R32": "Unspecified urinary incontinence",
    "M62.81": "Muscle weakness (generalized)",
    "Z87.310": "Personal history of (healed) osteoporosis fracture",
    "M40.204": "Unspecified kyphosis, thoracic region",
    "R06.00": "Dyspnea, unspecified",
    "R29.890": "Loss of height",
    "D68.9": "Coagulation defect, unspecified",
    "Z79.01": "Long term (current) use of anticoagulants",
    "C79.51": "Secondary malignant neoplasm of bone",
}
# SNOMED CT codes, decision-rules.md §4 list only
SCT_TEXT = {
    "42942008": "Compression fracture of vertebral column",
    "64859006": "Osteoporosis",
    "94222008": "Secondary malignant neoplasm of bone",
    "279039007": "Low back pain",
    "161891005": "Backache",
    "414564002": "Kyphosis deformity of spine",
    "267036007": "Dyspnea",
    "64779008": "Blood coagulation disorder",
    "165232002": "Urinary incontinence",
}
CPT_TEXT = {
    "72128": "CT thoracic spine without contrast material",
    "72129": "CT thoracic spine with contrast material",
    "72131": "CT lumbar spine without contrast material",
    "72146": "MRI thoracic spine without contrast material",
    "72148": "MRI lumbar spine without contrast material",
    "72157": "MRI thoracic spine without contrast material, followed by contrast material(s) and further sequences",
    "72158": "MRI lumbar spine without contrast material, followed by contrast material(s) and further sequences",
    "22513": "Percutaneous vertebral augmentation (kyphoplasty), including cavity creation, thoracic, unilateral or bilateral cannulation",
    "22514": "Percutaneous vertebral augmentation (kyphoplasty), including cavity creation, lumbar, unilateral or bilateral cannulation",
    "20982": "Ablation therapy for reduction or eradication of 1 or more bone tumors, percutaneous, radiofrequency",
    "71250": "CT thorax without contrast material",  # deliberately NOT in §4 (out-of-scope case)
}


def fixed_uuid4(seed: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16], version=4))


def short(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- builders

def patient(pid, family, given, gender, birth):
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"tag": [{"system": "urn:vcf-cds-hooks:fixture", "code": "synthetic"}]},
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5.99999.1", "value": "MRN-" + pid[3:].upper()}],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth,
    }


def cc(icd=None, sct=None, text=None):
    coding = []
    if icd:
        coding.append({"system": ICD, "code": icd, "display": ICD_TEXT[icd]})
    if sct:
        coding.append({"system": SCT, "code": sct, "display": SCT_TEXT[sct]})
    out = {"coding": coding}
    out["text"] = text or (ICD_TEXT.get(icd) if icd else SCT_TEXT[sct])
    return out


def condition(cid, pid, icd=None, sct=None, onset=None, clinical="active", ver="confirmed",
              text=None, abatement=None, recorded=None, note=None):
    c = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"system": CLIN, "code": clinical}]},
        "verificationStatus": {"coding": [{"system": VER, "code": ver}]},
        "category": [{"coding": [{"system": CAT, "code": "problem-list-item",
                                  "display": "Problem List Item"}]}],
        "code": cc(icd, sct, text),
        "subject": {"reference": f"Patient/{pid}"},
    }
    if onset:
        c["onsetDateTime"] = onset
    if abatement:
        c["abatementDateTime"] = abatement
    c["recordedDate"] = recorded or (onset + "T14:00:00-05:00" if onset and len(onset) == 10 else TODAY + "T09:00:00-05:00")
    if note:
        c["note"] = [{"text": note}]
    return c


def procedure(prid, pid, cpt, display, performed, body_site_text=None):
    p = {
        "resourceType": "Procedure",
        "id": prid,
        "status": "completed",
        "code": {"coding": [{"system": CPT, "code": cpt, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{pid}"},
        "performedDateTime": performed,
    }
    if body_site_text:
        p["bodySite"] = [{"text": body_site_text}]
    return p


def service_request(srid, pid, cpt, enc, reasons=(), note=None):
    sr = {
        "resourceType": "ServiceRequest",
        "id": srid,
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": CPT, "code": cpt, "display": CPT_TEXT[cpt]}],
                 "text": CPT_TEXT[cpt]},
        "subject": {"reference": f"Patient/{pid}"},
        "encounter": {"reference": f"Encounter/{enc}"},
        "authoredOn": AUTHORED,
        "requester": {"reference": "Practitioner/prac-ordering-01"},
    }
    if reasons:
        sr["reasonCode"] = [cc(sct=s) for s in reasons]
    if note:
        sr["note"] = [{"text": note}]
    return sr


def searchset(resources):
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r,
                   "search": {"mode": "match"}} for r in resources],
    }


def request(case_id, pat, conditions, orders, procedures=None, selections=None,
            hook="order-select", drop_prefetch=()):
    enc = orders[0]["encounter"]["reference"].split("/", 1)[1]
    body = {
        "hook": hook,
        "hookInstance": fixed_uuid4("fixture:" + case_id),
        "fhirServer": BASE,
        "context": {
            "userId": "Practitioner/prac-ordering-01",
            "patientId": pat["id"],
            "encounterId": enc,
            "selections": selections if selections is not None
            else [f"ServiceRequest/{o['id']}" for o in orders],
            "draftOrders": {"resourceType": "Bundle",
                            "entry": [{"resource": o} for o in orders]},
        },
        "prefetch": {
            "patient": pat,
            "conditions": searchset(conditions),
            "procedures": None if procedures is None else searchset(procedures),
        },
    }
    for k in drop_prefetch:
        del body["prefetch"][k]
    return body


# --------------------------------------------------------------------------- patients
# Each case gets its own patient id (pt-<hash of case id>) although several cases tell
# the same clinical story with a different order.

def ids(case_id):
    h = short(case_id)
    return f"pt-{h}", f"enc-{h}", h


def story_000(case_id):
    """Seed 000: 79F, osteoporosis, L4 + T10 subacute VCF, 3 weeks of low back pain,
    new urinary incontinence and weakness (2 weeks)."""
    pid, enc, h = ids(case_id)
    pat = patient(pid, "Halvorsen-Test", "Marit", "female", "1947-03-02")
    conds = [
        condition(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2015-06-10"),
        condition(f"c-{h}-lbp", pid, icd="M54.50", sct="279039007", onset=THREE_WEEKS_AGO,
                  note="Low back pain 3 weeks, radiating down the legs."),
        condition(f"c-{h}-vcf", pid, icd="M80.08XA", onset=THREE_WEEKS_AGO,
                  text="Osteoporotic compression fractures L4 and T10, subacute"),
        condition(f"c-{h}-ui", pid, icd="R32", sct="165232002", onset=TWO_WEEKS_AGO,
                  note="New onset urinary incontinence."),
        condition(f"c-{h}-wk", pid, icd="M62.81", onset=TWO_WEEKS_AGO,
                  note="New weakness."),
    ]
    return pid, enc, h, pat, conds


def story_001(case_id):
    """Seed 001: 78F, osteoporosis, kyphoplasty L2 two years ago, a week of new sharp
    mid-back pain."""
    pid, enc, h = ids(case_id)
    pat = patient(pid, "Lindqvist-Test", "Agnes", "female", "1948-07-19")
    conds = [
        condition(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2016-02-01"),
        # the old L2 fracture, resolved after kyphoplasty (kept in the record as resolved)
        condition(f"c-{h}-oldvcf", pid, icd="M80.08XA", onset="2024-10-28", clinical="resolved",
                  abatement="2025-01-15", text="Osteoporotic compression fracture L2"),
        condition(f"c-{h}-hx", pid, icd="Z87.310", onset="2025-01-15"),
        condition(f"c-{h}-pain", pid, icd="M54.6", sct="161891005", onset=ONE_WEEK_AGO,
                  text="New sharp mid-back pain after reaching for a high shelf"),
    ]
    procs = [procedure(f"pr-{h}-kp", pid, "22514", CPT_TEXT["22514"], TWO_YEARS_AGO + "T08:15:00-05:00",
                       body_site_text="L2 vertebral body")]
    return pid, enc, h, pat, conds, procs


def story_003(case_id):
    """Seed 003: 81F, osteoporosis (poorly compliant, no therapy on record), acute T8 VCF
    after a coughing spell, 3 weeks of focal mid-thoracic pain. The MRI shows marrow
    edema and a cleft, but decision-rules §4 lists no code for that finding, so the
    record carries NO edema fact."""
    pid, enc, h = ids(case_id)
    pat = patient(pid, "Moreau-Test", "Odile", "female", "1945-04-11")
    conds = [
        condition(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2012-09-03"),
        condition(f"c-{h}-vcf", pid, icd="M80.08XA", sct="42942008", onset=THREE_WEEKS_AGO,
                  text="Acute T8 osteoporotic compression fracture"),
        condition(f"c-{h}-pain", pid, icd="M54.6", onset=THREE_WEEKS_AGO,
                  text="Focal mid-thoracic back pain after coughing spell"),
    ]
    return pid, enc, h, pat, conds


def story_004(case_id, extra=()):
    """Seed 004: 82F, osteoporosis, T12 VCF from a fall 3 months ago, worsening mechanical
    pain, more stooped (kyphosis, loss of height), dyspnea walking to the mailbox; no
    osteoporosis therapy on record."""
    pid, enc, h = ids(case_id)
    pat = patient(pid, "Abernethy-Test", "Winifred", "female", "1944-01-23")
    conds = [
        condition(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2010-05-17"),
        condition(f"c-{h}-vcf", pid, icd="M80.08XD", onset=THREE_MONTHS_AGO,
                  text="T12 osteoporotic compression fracture after a fall, follow-up"),
        condition(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=THREE_MONTHS_AGO,
                  recorded=TODAY + "T09:00:00-05:00",
                  note="Mechanical back pain significantly worse despite analgesics and brace."),
        condition(f"c-{h}-kyph", pid, icd="M40.204", sct="414564002", onset="2026-10-15"),
        condition(f"c-{h}-dysp", pid, icd="R06.00", sct="267036007", onset="2026-10-20",
                  text="Short of breath walking to the mailbox"),
        condition(f"c-{h}-loh", pid, icd="R29.890", onset="2026-10-15"),
    ]
    for kind in extra:
        if kind == "anticoag":
            conds.append(condition(f"c-{h}-ac", pid, icd="Z79.01", onset="2023-03-01"))
        if kind == "coag":
            conds.append(condition(f"c-{h}-coag", pid, icd="D68.9", sct="64779008", onset="2026-09-30"))
    return pid, enc, h, pat, conds


def story_v1(case_id, family="Brannigan-Test", given="Desmond"):
    """V1: 70M, new lumbar VCF on radiographs a week ago, back pain, no malignancy."""
    pid, enc, h = ids(case_id)
    pat = patient(pid, family, given, "male", "1956-02-14")
    conds = [
        condition(f"c-{h}-vcf", pid, icd="M48.56XA", sct="42942008", onset=ONE_WEEK_AGO,
                  text="L1 compression fracture on lumbar radiographs"),
        condition(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=ONE_WEEK_AGO),
    ]
    return pid, enc, h, pat, conds


def story_malignancy(case_id, pain=True, pathologic=False, region="lumbar"):
    pid, enc, h = ids(case_id)
    pat = patient(pid, "Castellanos-Test", "Rosalind", "female", "1958-09-30")
    if pathologic:
        vcf = condition(f"c-{h}-vcf", pid, icd="M84.58XA", onset=ONE_WEEK_AGO,
                        text="Pathologic compression fracture L3, metastatic breast cancer")
    elif region == "thoracic":
        vcf = condition(f"c-{h}-vcf", pid, icd="M48.54XA", sct="42942008", onset=ONE_WEEK_AGO,
                        text="T9 compression fracture seen on staging chest radiograph")
    else:
        vcf = condition(f"c-{h}-vcf", pid, icd="M48.56XA", sct="42942008", onset=ONE_WEEK_AGO,
                        text="L3 compression fracture on lumbar radiographs")
    conds = [
        condition(f"c-{h}-met", pid, icd="C79.51", sct="94222008", onset="2025-04-22",
                  text="Bone metastases from breast cancer"),
        vcf,
    ]
    if pain:
        conds.append(condition(f"c-{h}-pain", pid, icd="M54.50", sct="279039007", onset=ONE_WEEK_AGO))
    return pid, enc, h, pat, conds


# --------------------------------------------------------------------------- cases

CASES: list[dict] = []


def add(case_id, body, description, source, status, variant, ratings, indicators, notes,
        **extra):
    (REQUESTS / f"{case_id}.json").write_text(
        json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    expect = {"status": status, "variant": variant, "ratings": ratings,
              "indicators": indicators, "notes": notes}
    for k in ("acceptable_indicators", "suggested_cpt"):
        if k in extra:
            expect[k] = extra.pop(k)
    entry = {"id": case_id, "file": f"requests/{case_id}.json", "description": description,
             "source": source, "expect": expect}
    entry.update(extra)
    CASES.append(entry)


def build():
    REQUESTS.mkdir(parents=True, exist_ok=True)
    for old in REQUESTS.glob("*.json"):
        old.unlink()

    # ---- seed 000 ---------------------------------------------------------------
    cid = "seed-000-neuro-red-flags-mri"
    pid, enc, h, pat, conds = story_000(cid)
    sr = service_request(f"sr-{h}-mri", pid, "72158", enc, reasons=("279039007", "165232002"))
    add(cid, request(cid, pat, conds, [sr]),
        "79F, osteoporosis, subacute osteoporotic VCF (L4, T10), 3 weeks low back pain, new "
        "urinary incontinence and weakness; order MRI lumbar without and with contrast (72158).",
        "seed 000 (case presentation); decision-rules §2.1 (red flags), §1 LBP variant 4",
        200, "LBP-4", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["critical"],
        "Neurologic red flags (R32 urinary incontinence, M62.81 weakness) take the patient out "
        "of the VCF pathway (§2.1): one critical card - suspected cord/cauda equina compression, "
        "MRI without contrast first and urgent spine-surgery consultation - citing the R32 and "
        "M62.81 Conditions as evidence. Rating comes from ACR Low Back Pain variant 4 (suspected "
        "cauda equina, OFFICIAL): MRI lumbar without and with IV contrast is Usually appropriate "
        "-> appropriate. No VCF-variant rating and no contrast warning (V1's UNA for MRI with "
        "contrast must NOT be applied: red flags outrank every variant).")

    cid = "seed-000-kyphoplasty-with-neuro-deficit"
    pid, enc, h, pat, conds = story_000(cid)
    sr = service_request(f"sr-{h}-kp", pid, "22514", enc, reasons=("279039007",))
    add(cid, request(cid, pat, conds, [sr]),
        "Same story as seed 000 (new urinary incontinence and weakness); order kyphoplasty "
        "lumbar (22514).",
        "seed 000 (kyphoplasty indications: 'NO neurological symptoms!'); decision-rules §2.1, "
        "LCD L34228 relative exclusions",
        200, None, {f"ServiceRequest/{sr['id']}": None}, ["critical"],
        "One critical card (one card per situation, issue 12): neurologic deficit is a relative "
        "exclusion for augmentation needing spine-surgery evaluation (LCD L34228, decision-rules "
        "§6.2), with urgent suggestions: MRI without contrast covering the thoracic and lumbar "
        "spine (the fracture level is not coded; seed 000's cord compression was at T10) and a "
        "spine-surgery consultation. No rating: no ACR variant covers augmentation in a patient "
        "with red flags, so the order must not appear in the rating actions.")

    # ---- seed 001 ---------------------------------------------------------------
    for cid, cpt, rating, indicators, notes, sugg in [
        ("seed-001-v3-ct-without", "72128", "appropriate", [],
         "V3 (SEED 001): CT spine area of interest without IV contrast is Usually appropriate -> "
         "appropriate. No card (silence): no red flag, no contraindication; the rating is "
         "returned only as the rating action. History of VCF comes from Z87.310 and the "
         "completed 22514 Procedure; the old M80.08XA is resolved and must not make this a "
         "'new VCF' (V1).", None),
        ("seed-001-v3-ct-with-contrast", "72129", "not-appropriate", ["warning"],
         "V3: CT spine with IV contrast is Usually not appropriate (seed 001: 'IV contrast ... "
         "is rated Usually not appropriate' unless infection or vascular tumour is suspected). "
         "One warning card with suggestions to replace the order by CT thoracic spine without "
         "contrast (72128) and/or MRI thoracic spine without contrast (72146), both Usually "
         "appropriate.", ["72128", "72146"]),
        ("seed-001-v3-mri-after-kyphoplasty", "72146", "appropriate", [],
         "V3: MRI spine area of interest without IV contrast is Usually appropriate -> "
         "appropriate, silence. The post-augmentation card (rule §2.7, seed 002 Dansie et al.: "
         "edema and height loss persist at the treated level) fires only when the MRI covers the "
         "treated level (issue 12): this thoracic MRI does not image the L2 level treated by "
         "22514 (lumbar kyphoplasty), so no card; cards-mri-after-kyphoplasty-same-level shows the "
         "lumbar MRI that does.", None),
    ]:
        pid, enc, h, pat, conds, procs = story_001(cid)
        sr = service_request(f"sr-{h}-img", pid, cpt, enc, reasons=("161891005",))
        extra = {"suggested_cpt": sugg} if sugg else {}
        add(cid, request(cid, pat, conds, [sr], procedures=procs),
            f"78F, osteoporosis, kyphoplasty L2 two years ago (Procedure 22514, Z87.310), a week "
            f"of new mid-back pain; order {CPT_TEXT[cpt]} ({cpt}).",
            "seed 001 (ACR variant 'New back pain with history of one or more VCFs'); "
            "decision-rules §1 V3" + ("; §2.7 / seed 002" if cpt == "72146" else ""),
            200, "V3", {f"ServiceRequest/{sr['id']}": rating}, indicators, notes, **extra)

    cid = "seed-001-v3-pain-from-reasoncode-only"
    pid, enc, h, pat, conds, procs = story_001(cid)
    conds = [c for c in conds if not c["id"].endswith("-pain")]
    sr = service_request(f"sr-{h}-img", pid, "72128", enc, reasons=("161891005",))
    add(cid, request(cid, pat, conds, [sr], procedures=procs),
        "Seed 001 story, but the new back pain is only in the order's reasonCode (SNOMED "
        "161891005 Backache), not on the problem list; order CT thoracic without contrast (72128).",
        "seed 001; decision-rules §3.2 (facts also come from the order's reasonCode)",
        200, "V3", {f"ServiceRequest/{sr['id']}": "appropriate"}, [],
        "Same outcome as seed-001-v3-ct-without: the back-pain fact comes from "
        "ServiceRequest.reasonCode (§3.2). V3, appropriate, silence.")

    # ---- seed 003 ---------------------------------------------------------------
    cid = "seed-003-v6-augmentation"
    pid, enc, h, pat, conds = story_003(cid)
    sr = service_request(f"sr-{h}-kp", pid, "22513", enc, reasons=("42942008",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "81F, osteoporosis with no therapy on record, acute T8 osteoporotic VCF (3 weeks), "
        "mid-thoracic pain; NO marrow-edema fact coded; order kyphoplasty thoracic (22513).",
        "seed 003 (ACR V6 'Symptomatic osteoporotic VCF with bone marrow edema or intravertebral "
        "cleft'); decision-rules §2.3, §3.3",
        200, None, {f"ServiceRequest/{sr['id']}": None}, ["info"],
        "Seed 003's MRI shows marrow edema and a cleft, but decision-rules §4 lists no code for "
        "marrow edema / intravertebral cleft, so this record cannot carry that fact. Without it "
        "V6 cannot be chosen (and no worsening sign for V7): no rating, and one info card naming "
        "the missing fact - MRI (STIR / fat-suppressed T2) confirming bone marrow edema or an "
        "intravertebral cleft (§2.3, §3.3). OPEN POINT: rule §2.6 also asks for a reminder when "
        "no osteoporosis therapy is on record on an augmentation order; §3.3 allows at most one "
        "info card, so the reminder is expected inside that same card (a separate second info "
        "card is listed as acceptable). When an edema code is added to §4, this case should be "
        "re-built with it and expect V6 appropriate.",
        acceptable_indicators=[["info"], ["info", "info"]])

    cid = "seed-003-ablation"
    pid, enc, h, pat, conds = story_003(cid)
    sr = service_request(f"sr-{h}-abl", pid, "20982", enc, reasons=("42942008",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "Seed 003 story (no edema code); order percutaneous radiofrequency ablation (20982).",
        "seed 003; decision-rules §1 V6/V7 (ablation UNA), §6.10 (candidate variants that agree)",
        200, "V6", {f"ServiceRequest/{sr['id']}": "not-appropriate"}, ["warning"],
        "The record leaves V6 (needs marrow edema) and V7 (needs recent worsening) open, and both "
        "rate ablation Usually not appropriate (it treats tumour, not a benign osteoporotic "
        "fracture): the service rates it not-appropriate without asking for a fact that would not "
        "change the rating (decision-rules §6.10). One warning card naming both variants. No "
        "osteoporosis-therapy reminder (not an augmentation order).")

    # ---- seed 004 ---------------------------------------------------------------
    cid = "seed-004-v7-augmentation"
    pid, enc, h, pat, conds = story_004(cid)
    sr = service_request(f"sr-{h}-kp", pid, "22513", enc, reasons=("279039007",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "82F, osteoporosis (no therapy on record), T12 VCF from a fall 3 months ago (M80.08XD), "
        "worsening back pain, kyphosis (M40.204), dyspnea, loss of height; order kyphoplasty "
        "thoracic (22513).",
        "seed 004 (ACR V7, benign VCF with worsening pain, deformity or pulmonary dysfunction); "
        "decision-rules §1 V7, §2.3, §2.6",
        200, "V7", {f"ServiceRequest/{sr['id']}": "appropriate"}, ["info"],
        "V7 (SEED 004, exact title UNCONFIRMED - the card/rating detail should say so): "
        "percutaneous vertebral augmentation Usually appropriate -> appropriate. One checklist "
        "info card for the augmentation order (issue 12): (1) no MRI marrow edema on record - an "
        "MRI (STIR) confirming edema is usually needed before augmentation, the fracture is now "
        "~13 weeks old (§2.3); (2) no osteoporosis therapy on record - start/optimise it with "
        "augmentation (§2.6). The card says the rating comes from teaching material, not the "
        "ACR's published table.")

    for cid, kind, what, indicator, bleeding in [
            ("seed-004-coagulopathy", "anticoag", "long-term anticoagulant use (Z79.01)", "info",
             "anticoagulant use: plan peri-procedural management, check INR and platelets (SIR consensus, "
             "Patel IJ et al., J Vasc Interv Radiol 2019;30:1168-1184) - not 'a contraindication'"),
            ("seed-004-coagulopathy-d68", "coag", "coagulation defect (D68.9 / SNOMED 64779008)", "warning",
             "coagulopathy: uncorrected coagulopathy is a relative exclusion (LCD L34228), so the card "
             "is a warning")]:
        pid, enc, h, pat, conds = story_004(cid, extra=(kind,))
        sr = service_request(f"sr-{h}-kp", pid, "22513", enc, reasons=("279039007",))
        add(cid, request(cid, pat, conds, [sr], procedures=[]),
            f"Seed 004 story plus {what}; order kyphoplasty thoracic (22513).",
            "seed 004; seed 000 (contraindications: coagulation disorders); decision-rules §2.2 "
            "(LCD L34228: uncorrected coagulopathy relative)",
            200, "V7", {f"ServiceRequest/{sr['id']}": "appropriate"}, [indicator],
            "Rating stays appropriate (V7). One checklist card for the augmentation order (issue 12, "
            "decision-rules §6.6): edema MRI, osteoporosis therapy and " + bleeding + ".")

    # ---- V1 -----------------------------------------------------------------------
    cid = "v1-new-vcf-mri-with-contrast"
    pid, enc, h, pat, conds = story_v1(cid)
    sr = service_request(f"sr-{h}-mri", pid, "72158", enc, reasons=("42942008", "279039007"))
    V1_BAD_NOTES = (
        "V1 (OFFICIAL, ACR scenario 3195988): MRI without and with IV contrast is Usually not "
        "appropriate -> not-appropriate. One warning card with suggestions: MRI lumbar spine "
        "without contrast (72148) and CT lumbar spine without contrast (72131), both Usually "
        "appropriate.")
    add(cid, request(cid, pat, conds, [sr]),
        "70M, new lumbar collapsed vertebra on radiographs a week ago (M48.56XA), back pain, no "
        "malignancy; order MRI lumbar without and with contrast (72158).",
        "decision-rules §1 V1", 200, "V1", {f"ServiceRequest/{sr['id']}": "not-appropriate"},
        ["warning"], V1_BAD_NOTES, suggested_cpt=["72148", "72131"])

    cid = "v1-new-vcf-mri-without"
    pid, enc, h, pat, conds = story_v1(cid, given="Rupert")
    sr = service_request(f"sr-{h}-mri", pid, "72148", enc, reasons=("42942008", "279039007"))
    add(cid, request(cid, pat, conds, [sr]),
        "V1 patient (70M, new lumbar VCF, back pain, no malignancy); order MRI lumbar without "
        "contrast (72148).",
        "decision-rules §1 V1", 200, "V1", {f"ServiceRequest/{sr['id']}": "appropriate"}, [],
        "V1: MRI spine area of interest without IV contrast is Usually appropriate -> appropriate. "
        "Silence (no card); the rating is only in the rating action.")

    cid = "multi-order"
    pid, enc, h, pat, conds = story_v1(cid, given="Cornelius")
    sr1 = service_request(f"sr-{h}-mri-wwo", pid, "72158", enc, reasons=("42942008",))
    sr2 = service_request(f"sr-{h}-mri-wo", pid, "72148", enc, reasons=("42942008",))
    add(cid, request(cid, pat, conds, [sr1, sr2]),
        "V1 patient; two draft orders, both selected: MRI lumbar without and with (72158) and "
        "MRI lumbar without (72148).",
        "decision-rules §1 V1", 200, "V1",
        {f"ServiceRequest/{sr1['id']}": "not-appropriate", f"ServiceRequest/{sr2['id']}": "appropriate"},
        ["warning"],
        "Each selected order is rated on its own: 72158 not-appropriate with one warning card "
        "(suggest 72148 / 72131 - 72148 is already in the basket; a suggestion to add it again is "
        "tolerable but better to suggest removing 72158), 72148 appropriate with no card.",
        suggested_cpt=["72148", "72131"])

    cid = "multi-order-one-selected"
    pid, enc, h, pat, conds = story_v1(cid, given="Barnaby")
    sr1 = service_request(f"sr-{h}-mri-wwo", pid, "72158", enc, reasons=("42942008",))
    sr2 = service_request(f"sr-{h}-mri-wo", pid, "72148", enc, reasons=("42942008",))
    add(cid, request(cid, pat, conds, [sr1, sr2], selections=[f"ServiceRequest/{sr2['id']}"]),
        "V1 patient; two draft orders (72158, 72148) but only 72148 is selected.",
        "decision-rules §1 V1; CDS Hooks 2.0 order-select (selections vs draftOrders)",
        200, "V1", {f"ServiceRequest/{sr2['id']}": "appropriate", f"ServiceRequest/{sr1['id']}": None},
        [],
        "Only the selected order is rated: 72148 appropriate, silence. The unselected 72158 is "
        "context only: no rating action and no warning for it.")

    cid = "negative-malformed-condition"
    pid, enc, h, pat, conds = story_v1(cid, given="Alistair")
    bad = condition(f"c-{h}-junk", pid, icd="M54.50", onset=ONE_WEEK_AGO)
    bad["clinicalStatus"] = "active"          # deliberately invalid: must be a CodeableConcept
    conds.insert(1, bad)
    sr = service_request(f"sr-{h}-mri", pid, "72158", enc, reasons=("42942008", "279039007"))
    add(cid, request(cid, pat, conds, [sr]),
        "V1 facts (as v1-new-vcf-mri-with-contrast) plus one junk Condition whose clinicalStatus "
        "is the string 'active'; order 72158.",
        "decision-rules §1 V1; architecture.md (malformed resources skipped and reported)",
        200, "V1", {f"ServiceRequest/{sr['id']}": "not-appropriate"}, ["warning"],
        "The junk Condition is skipped and reported (parse issue naming Condition/" + bad["id"] +
        " and clinicalStatus); the remaining Conditions are still evaluated, so the outcome equals "
        "v1-new-vcf-mri-with-contrast. " + V1_BAD_NOTES + " If the skip is reported as an extra "
        "info card, that is acceptable.",
        suggested_cpt=["72148", "72131"], acceptable_indicators=[["warning"], ["warning", "info"]],
        malformed=True, malformed_resources=[f"Condition/{bad['id']}"])

    cid = "negative-malformed-condition-date"
    pid, enc, h, pat, conds = story_v1(cid, given="Lachlan")
    bad = condition(f"c-{h}-junk", pid, icd="M54.50", onset=ONE_WEEK_AGO)
    bad["onsetDateTime"] = "yesterday"        # deliberately invalid dateTime
    conds.append(bad)
    sr = service_request(f"sr-{h}-mri", pid, "72158", enc, reasons=("42942008", "279039007"))
    add(cid, request(cid, pat, conds, [sr]),
        "V1 facts plus one junk Condition with onsetDateTime 'yesterday'; order 72158.",
        "decision-rules §1 V1; architecture.md (malformed resources skipped and reported)",
        200, "V1", {f"ServiceRequest/{sr['id']}": "not-appropriate"}, ["warning"],
        "Junk Condition/" + bad["id"] + " skipped and reported; outcome as "
        "v1-new-vcf-mri-with-contrast. " + V1_BAD_NOTES,
        suggested_cpt=["72148", "72131"], acceptable_indicators=[["warning"], ["warning", "info"]],
        malformed=True, malformed_resources=[f"Condition/{bad['id']}"])

    # ---- V2 / V4 / V8 -------------------------------------------------------------
    cid = "v2-malignancy-mri"
    pid, enc, h, pat, conds = story_malignancy(cid)
    sr = service_request(f"sr-{h}-mri", pid, "72158", enc, reasons=("42942008", "279039007"))
    add(cid, request(cid, pat, conds, [sr]),
        "67F, bone metastases (C79.51), new lumbar VCF on radiographs (M48.56XA), back pain; "
        "order MRI lumbar without and with contrast (72158).",
        "decision-rules §1 V2 (SECONDARY), §2.4", 200, "V2",
        {f"ServiceRequest/{sr['id']}": "appropriate"}, [],
        "V2: MRI without and with IV contrast Usually appropriate (9) -> appropriate. The rating "
        "is SECONDARY (third-party summary, official table not obtained): wherever it is shown "
        "(rating detail, or an info card if the service emits one) it must say so. No warning "
        "(V1's UNA for contrast must not be applied - malignancy changes the pathway, §2.4).",
        acceptable_indicators=[[], ["info"]])

    cid = "v4-asymptomatic-malignancy"
    pid, enc, h, pat, conds = story_malignancy(cid, pain=False, region="thoracic")
    sr = service_request(f"sr-{h}-mri", pid, "72157", enc, reasons=("42942008",))
    add(cid, request(cid, pat, conds, [sr]),
        "67F, bone metastases (C79.51), thoracic VCF on radiographs (M48.54XA), NO back pain "
        "coded and nothing saying she is asymptomatic; order MRI thoracic without and with "
        "contrast (72157).",
        "decision-rules §1 V2 / V4 (SECONDARY), §6.10 (candidate variants that agree)", 200, "V2",
        {f"ServiceRequest/{sr['id']}": "appropriate"}, [],
        "Symptom status is UNKNOWN: the absence of a pain code is not evidence of no pain. V2 "
        "(symptomatic) and V4 (asymptomatic) cannot be told apart, but together they cover both "
        "cases and both rate MRI without and with IV contrast Usually appropriate (SECONDARY), so "
        "the order is rated appropriate without asking (decision-rules §6.10); silence.",
        acceptable_indicators=[[], ["info"]])

    cid = "v8-pathologic-augmentation"
    pid, enc, h, pat, conds = story_malignancy(cid, pathologic=True)
    sr = service_request(f"sr-{h}-kp", pid, "22514", enc, reasons=("279039007",))
    add(cid, request(cid, pat, conds, [sr], procedures=[]),
        "67F, bone metastases (C79.51), pathologic lumbar VCF (M84.58XA), ongoing back pain; "
        "order kyphoplasty lumbar (22514).",
        "decision-rules §1 V8 (SECONDARY, exact title UNCONFIRMED)", 200, "V8",
        {f"ServiceRequest/{sr['id']}": "no-criteria-apply"}, [],
        "V8 is identified, but V8 only rates radiation oncology consultation (UA); augmentation "
        "is UNKNOWN in V8 -> rating no-criteria-apply (a variant applies but has no rating for "
        "this procedure). No contrast/imaging card. Nothing is deleted (the cell is unknown to this "
        "service, not unrated by the ACR; issue 12): one info card leads with 'Add radiation "
        "oncology consultation' (V8 UA, SECONDARY, said in words) and its suggestion only creates "
        "that consultation (SNOMED CT referral code from the service's value set). The radiation-"
        "oncology order case (v8-pathologic-radonc) was NOT built: §4 has no code for that consultation. "
        "Augmentation orders also get the reminder that no MRI evidence of edema is on record "
        "(decision-rules §2.3); no osteoporosis-therapy reminder, the fracture being pathologic.",
        acceptable_indicators=[[], ["info"], ["info", "info"]])

    # ---- negatives ----------------------------------------------------------------
    for cid, ver in [("negative-refuted-vcf", "refuted"), ("negative-entered-in-error", "entered-in-error")]:
        pid, enc, h = ids(cid)
        pat = patient(pid, "Okafor-Test", "Beatrice", "female", "1951-12-05")
        conds = [
            condition(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2019-03-12"),
            condition(f"c-{h}-vcf", pid, icd="M80.08XA", sct="42942008", onset=ONE_WEEK_AGO,
                      ver=ver, text="Suspected L1 compression fracture"),
        ]
        sr = service_request(f"sr-{h}-mri", pid, "72148", enc)
        add(cid, request(cid, pat, conds, [sr]),
            f"74F, osteoporosis; the only VCF Condition has verificationStatus {ver}; no back pain; "
            "order MRI lumbar without contrast (72148).",
            "decision-rules §3.2 (non-refuted, non-entered-in-error Conditions only)",
            200, None, {f"ServiceRequest/{sr['id']}": None}, [],
            f"The {ver} VCF is not a fact; osteoporosis alone selects no variant -> silence, no "
            "rating. (No back pain is coded on purpose, so the ACR Low Back Pain variant 6 "
            "routing question does not arise.)")

    cid = "negative-inactive-vcf-only"
    pid, enc, h = ids(cid)
    pat = patient(pid, "Varga-Test", "Ilona", "female", "1949-08-08")
    conds = [
        condition(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2017-01-20"),
        condition(f"c-{h}-vcf", pid, icd="M80.08XA", onset="2023-05-02", clinical="resolved",
                  abatement="2023-09-01", text="L2 osteoporotic compression fracture, healed"),
    ]
    sr = service_request(f"sr-{h}-mri", pid, "72148", enc)
    add(cid, request(cid, pat, conds, [sr]),
        "77F, osteoporosis; the only VCF Condition is clinicalStatus resolved (2023), no Z87.310 "
        "history code, no back pain; order MRI lumbar without contrast (72148).",
        "decision-rules §3.2 (active Conditions only)", 200, None,
        {f"ServiceRequest/{sr['id']}": None}, [],
        "Resolved VCF is not an active fact; no new pain -> silence, no rating. Clinically a "
        "resolved VCF is a VCF history, which with NEW back pain would be V3; this fixture has no "
        "back pain so that question does not arise here.")

    cid = "negative-out-of-scope-order"
    pid, enc, h, pat, conds = story_v1(cid, given="Evander")
    sr = service_request(f"sr-{h}-ct", pid, "71250", enc)
    add(cid, request(cid, pat, conds, [sr]),
        "V1 facts (new lumbar VCF, back pain); order CT chest without contrast (71250), which is "
        "not in any §4 spine list.",
        "decision-rules §3.1 (unknown codes: not in scope)", 200, None,
        {f"ServiceRequest/{sr['id']}": None}, [],
        "71250 is deliberately outside §4: the order is not in scope -> silence, no rating, even "
        "though the patient has VCF facts.")

    cid = "negative-missing-conditions-prefetch"
    pid, enc, h, pat, conds = story_v1(cid, given="Ignatius")
    sr = service_request(f"sr-{h}-mri", pid, "72158", enc)
    add(cid, request(cid, pat, conds, [sr], drop_prefetch=("conditions",)),
        "V1 patient, but the prefetch has no 'conditions' key at all (patient and procedures "
        "present).",
        "CDS Hooks 2.0 prefetch; architecture.md (412 required prefetch missing)",
        412, None, {}, [],
        "Required prefetch missing and the service cannot fetch -> HTTP 412, no cards, no "
        "ratings. (An absent key differs from a key whose value is null.)")

    cid = "negative-unresolvable-selection"
    pid, enc, h, pat, conds = story_v1(cid, given="Percival")
    sr = service_request(f"sr-{h}-mri", pid, "72148", enc)
    add(cid, request(cid, pat, conds, [sr], selections=["ServiceRequest/does-not-exist"]),
        "V1 patient; context.selections names ServiceRequest/does-not-exist, which is not in "
        "draftOrders.",
        "CDS Hooks 2.0 order-select (selections must reference draftOrders)",
        400, None, {}, [], "Malformed request -> HTTP 400, no cards, no ratings.")

    cid = "negative-wrong-hook"
    pid, enc, h, pat, conds = story_v1(cid, given="Thaddeus")
    sr = service_request(f"sr-{h}-mri", pid, "72148", enc)
    add(cid, request(cid, pat, conds, [sr], hook="patient-view"),
        "V1 patient and a valid order-select body, but hook is 'patient-view'.",
        "CDS Hooks 2.0 (service is registered for order-select only)",
        400, None, {}, [], "Wrong hook for this service -> HTTP 400.")

    # ---- Argonaut -----------------------------------------------------------------
    src = SHARED / "interop" / "argonaut-pama" / "scenario-01-outbound-request.json"
    cid = "argonaut-scenario-01-as-sent"
    shutil.copyfile(src, REQUESTS / f"{cid}.json")
    raw = json.loads(src.read_text(encoding="utf-8"))
    sr_ref = raw["context"]["selections"][0]
    CASES.append({
        "id": cid, "file": f"requests/{cid}.json",
        "description": "Argonaut PAMA connectathon scenario 01 request, byte-identical: CT lumbar "
                       "spine (72133) for low back pain (SNOMED 279039007), draftOrders Bundle "
                       "without type, intent 'plan', no prefetch.",
        "source": "shared/interop/argonaut-pama/scenario-01-outbound-request.json (github.com/"
                  "argonautproject/cds-hooks-for-pama, commit 36a3db1, "
                  "connectathon-scenarios-2019-09/examples/)",
        "expect": {"status": 412, "variant": None, "ratings": {}, "indicators": [],
                   "notes": "No prefetch at all and the service cannot fetch from the FHIR server "
                            "yet -> HTTP 412. (Upstream's own response rates it appropriate; see "
                            "interop/README known inconsistency - not our expectation.)"},
    })
    cid = "argonaut-scenario-01-with-prefetch"
    body = copy.deepcopy(raw)
    body["prefetch"] = {"patient": None, "conditions": None, "procedures": None}
    (REQUESTS / f"{cid}.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    CASES.append({
        "id": cid, "file": f"requests/{cid}.json",
        "description": "Argonaut scenario 01 plus prefetch {patient: null, conditions: null, "
                       "procedures: null} (CDS Hooks: null = the EHR has no data for the key).",
        "source": "shared/interop/argonaut-pama/scenario-01-outbound-request.json (argonautproject/"
                  "cds-hooks-for-pama commit 36a3db1) + prefetch added here",
        "expect": {"status": 200, "variant": None, "ratings": {sr_ref: None}, "indicators": [],
                   "notes": "Prefetch keys present with null values: no VCF facts (only low back "
                            "pain from the reasonCode) -> no VCF variant, silence, no rating. "
                            "The order is in the §4 CT lumbar list (72133) but no variant applies."},
    })

    cases_cards.add_cases(sys.modules[__name__])

    # ---- Synthea ------------------------------------------------------------------
    CASES.extend(build_synthea_requests.manifest_entries(write=True))

    # ---- issue 12: which codes count for which fact, and time ------------------------
    __import__("cases_facts").build(sys.modules[__name__])
    __import__("cases_reading").build(sys.modules[__name__])  # issue 13: reports, medications, labs

    (HERE / "cases.json").write_text(json.dumps(CASES, indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return CASES


if __name__ == "__main__":
    for c in build():
        print(f"{c['expect']['status']}  {c['id']}")
