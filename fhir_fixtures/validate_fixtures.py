"""Check every request fixture listed in fhir_fixtures/cases.json.

For each request file:
  - JSON parses; hook / hookInstance (uuid4) / context / selections are present
  - every draftOrders resource, the prefetch Patient, every Condition and Procedure in the
    prefetch Bundles (and the Bundles themselves) validate as FHIR R4 with fhir.resources
    R4B models (`fhir.resources.R4B.<module>.<Class>.model_validate`)
  - every ICD-10-CM code is a valid code per simple_icd_10_cm.is_valid_item
  - in hand-written cases (not synthea-*, not argonaut-*), every CPT / ICD-10-CM / SNOMED
    code is one listed in decision-rules.md §4 (cases may declare deliberate exceptions)
Manifest: every entry has id/file/description/source/expect; ratings keys are selections.

Cases marked "malformed": true must fail validation for EXACTLY the resources listed in
"malformed_resources" (a malformed fixture that has become valid is also a problem).

Prints every problem; exit status 1 if any, 0 if clean.

    .venv/bin/python fhir_fixtures/validate_fixtures.py
"""
from __future__ import annotations

import json
import re
import sys
import uuid
from pathlib import Path

import simple_icd_10_cm as icd
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.servicerequest import ServiceRequest

HERE = Path(__file__).resolve().parent
MODELS = {"Patient": Patient, "Condition": Condition, "Procedure": Procedure,
          "ServiceRequest": ServiceRequest, "Bundle": Bundle}
ICD_SYS = "http://hl7.org/fhir/sid/icd-10-cm"
SCT_SYS = "http://snomed.info/sct"
CPT_SYS = "http://www.ama-assn.org/go/cpt"

# decision-rules.md §4, transcribed
SECTION4_CPT = {
    "72070", "72072", "72074", "72080", "72081", "72082", "72083", "72084", "72100", "72110",
    "72114", "72120", "72125", "72126", "72127", "72128", "72129", "72130", "72131", "72132",
    "72133", "72141", "72142", "72156", "72146", "72147", "72157", "72148", "72149", "72158",
    "78300", "78305", "78306", "78315", "78803", "78830", "78831", "78832", "78815", "78816",
    "77080", "77085", "77086", "22510", "22511", "22512", "22513", "22514", "22515", "20982",
    "20983",
}
SECTION4_SCT = {"42942008", "443165006", "64859006", "94222008", "109989006", "192970008",
                "71286001", "279039007", "161891005", "414564002", "267036007", "64779008",
                "302215000", "165232002"}
SECTION4_ICD = [  # regexes for the §4 ICD-10-CM families
    r"M80\.[08]8X[ADGKPS]", r"M48\.5[0-8]X[ADGS]", r"M84\.[456]8X[ADGKPS]", r"S22\.0.*", r"S32\.0.*",
    r"M81\.[068]", r"C79\.5[12]", r"C41\.2", r"C90\.0.*", r"Z85\..*", r"Z87\.31[01]",
    r"M54\.5[019]?", r"M54\.[69]", r"R29\.890", r"G83\.4", r"G95\.2[09]", r"R32", r"R33\.[89]",
    r"R15\..*", r"R20\.[012]", r"M62\.81", r"R53\.1", r"R26\.2", r"D68\..*", r"D69\.6",
    r"D69\.59", r"Z79\.0[12]", r"M40\.[0126-9].*", r"R06\.0[0129]", r"Z79\.52",
]
# codes a case may use although outside §4, on purpose
DELIBERATE = {"negative-out-of-scope-order": {"71250"}}


def codings(obj):
    """Yield every {'system','code'} dict anywhere in obj."""
    if isinstance(obj, dict):
        if "system" in obj and "code" in obj and isinstance(obj.get("code"), str):
            yield obj
        for v in obj.values():
            yield from codings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from codings(v)


def validate_resource(raw, where, failures):
    if not isinstance(raw, dict):
        failures.append((where, "not an object"))
        return
    rt = raw.get("resourceType")
    model = MODELS.get(rt)
    if model is None:
        failures.append((where, f"unexpected resourceType {rt!r}"))
        return
    try:
        model.model_validate(raw)
    except Exception as exc:  # pydantic ValidationError or FHIR validation error
        first = str(exc).splitlines()
        failures.append((f"{rt}/{raw.get('id')}", f"{where}: " + " | ".join(first[:3])))


def check_case(case, problems):
    cid = case.get("id")
    for key in ("id", "file", "description", "source", "expect"):
        if key not in case:
            problems.append(f"{cid}: manifest entry lacks {key!r}")
    exp = case.get("expect", {})
    for key in ("status", "variant", "ratings", "indicators", "notes"):
        if key not in exp:
            problems.append(f"{cid}: expect lacks {key!r}")
    path = HERE / case["file"]
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:
        problems.append(f"{cid}: cannot read {path}: {exc}")
        return
    failures: list[tuple[str, str]] = []
    try:
        if uuid.UUID(body["hookInstance"]).version != 4:
            problems.append(f"{cid}: hookInstance is not a uuid4")
    except Exception:
        problems.append(f"{cid}: hookInstance missing or not a uuid")
    ctx = body.get("context", {})
    drafts = ctx.get("draftOrders", {})
    if drafts.get("resourceType") != "Bundle":
        problems.append(f"{cid}: draftOrders is not a Bundle")
    draft_refs = set()
    for i, e in enumerate(drafts.get("entry", [])):
        r = e.get("resource", {})
        draft_refs.add(f"{r.get('resourceType')}/{r.get('id')}")
        validate_resource(r, f"draftOrders.entry[{i}]", failures)
    if drafts:
        # without type, the Bundle itself is not valid R4 (type is 1..1); validate with a type
        validate_resource({**drafts, "type": drafts.get("type", "collection")}, "draftOrders", failures)
    for ref in exp.get("ratings") or {}:
        if ref not in draft_refs:
            problems.append(f"{cid}: expected rating for {ref} which is not a draft order")
    if exp.get("status") == 200:
        for ref in ctx.get("selections", []):
            if ref not in (exp.get("ratings") or {}):
                problems.append(f"{cid}: selection {ref} has no entry in expect.ratings")
    pre = body.get("prefetch")
    if isinstance(pre, dict):
        if pre.get("patient") is not None:
            validate_resource(pre["patient"], "prefetch.patient", failures)
        for key in ("conditions", "procedures"):
            b = pre.get(key)
            if b is None:
                continue
            for i, e in enumerate(b.get("entry", [])):
                validate_resource(e.get("resource"), f"prefetch.{key}.entry[{i}]", failures)
            if not case.get("malformed"):
                validate_resource(b, f"prefetch.{key}", failures)
    # codes
    hand_written = not (cid.startswith("synthea-") or cid.startswith("argonaut-"))
    allowed_extra = DELIBERATE.get(cid, set()) | set(case.get("codes_outside_section4", ()))
    for c in codings(body):
        system, code = c["system"], c["code"]
        if system == ICD_SYS:
            if not icd.is_valid_item(code):
                problems.append(f"{cid}: ICD-10-CM {code} is not valid (simple_icd_10_cm)")
            elif hand_written and code not in allowed_extra and not any(re.fullmatch(p, code) for p in SECTION4_ICD):
                problems.append(f"{cid}: ICD-10-CM {code} is not in decision-rules §4")
        elif system == SCT_SYS and hand_written and code not in SECTION4_SCT | allowed_extra:
            problems.append(f"{cid}: SNOMED {code} is not in decision-rules §4")
        elif system == CPT_SYS and hand_written and code not in SECTION4_CPT | allowed_extra:
            problems.append(f"{cid}: CPT {code} is not in decision-rules §4")
    # malformed bookkeeping
    failed = {who for who, _ in failures}
    if case.get("malformed"):
        want = set(case.get("malformed_resources", []))
        for who, msg in failures:
            if who not in want:
                problems.append(f"{cid}: {who}: {msg}")
            else:
                print(f"ok (deliberately malformed) {cid}: {who}: {msg[:120]}")
        for who in want - failed:
            problems.append(f"{cid}: {who} is marked malformed but validates")
    else:
        problems.extend(f"{cid}: {who}: {msg}" for who, msg in failures)


def main() -> int:
    manifest = json.loads((HERE / "cases.json").read_text(encoding="utf-8"))
    problems: list[str] = []
    seen = set()
    for case in manifest:
        if case.get("id") in seen:
            problems.append(f"duplicate case id {case.get('id')}")
        seen.add(case.get("id"))
        check_case(case, problems)
    listed = {case["file"] for case in manifest}
    for f in sorted((HERE / "requests").glob("*.json")):
        if f"requests/{f.name}" not in listed:
            problems.append(f"requests/{f.name} is not listed in cases.json")
    for p in problems:
        print("PROBLEM", p)
    print(f"{len(manifest)} cases, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
