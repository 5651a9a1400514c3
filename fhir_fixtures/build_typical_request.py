"""Build fhir_fixtures/bench/typical-request.json: the benchmark's "typical request".

The issue defines a typical order-select call as a Patient, 25 Conditions, 5 Procedures and 2
draft orders in prefetch. This script builds one deterministically from material already in
the repository and in ``../shared``:

- the clinical story is the V1 story of ``build_cases.py`` (70M, new lumbar VCF on
  radiographs a week ago, low back pain, no malignancy) plus age-related osteoporosis
  (ICD-10-CM M81.0, SNOMED CT 64859006): 3 Conditions;
- 22 background Conditions and 5 completed Procedures carry real SNOMED CT codes and
  displays taken from the Synthea records in ``../shared/interop/synthea/`` (first
  appearance, files in name order; onset / performed dates and clinical status as Synthea
  wrote them). Codes that belong to any value set of the service's knowledge are left out,
  and so are cancer, chemotherapy and fracture codes, so the background does not change the
  story;
- both draft orders are selected: MRI lumbar spine without and with contrast (CPT 72158,
  Usually not appropriate in V1: a warning card with replacement suggestions) and CT lumbar
  spine without contrast (CPT 72131, Usually appropriate: rated, no card).

Deterministic (no clock, no randomness); run from anywhere:

    .venv/bin/python fhir_fixtures/build_typical_request.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import build_cases as bc  # noqa: E402

OUT = HERE / "bench" / "typical-request.json"
CASE_ID = "bench-typical-request"
N_CONDITIONS = 25
N_PROCEDURES = 5
# Background codes whose words would change the clinical story even where no value set
# lists them (a cancer history leads to V2, a fracture to other variants), or do not fit a
# 70-year-old man.
_STORY_WORDS = ("neoplasm", "cancer", "carcinoma", "malignan", "chemotherapy", "radiation", "fracture",
                "pregnan", "miscarriage")


def _synthea_codes(resource_type: str) -> list[tuple[dict, dict]]:
    """(first coding, resource) per distinct SNOMED CT code of ``resource_type``, in order of
    first appearance over the Synthea files sorted by name."""
    from cds_service.decision.knowledge import load_knowledge

    term = load_knowledge().terminology
    seen: dict[str, tuple[dict, dict]] = {}
    for path in sorted((bc.SHARED / "interop" / "synthea").glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != resource_type:
                continue
            coding = resource["code"]["coding"][0]
            if coding["system"] != bc.SCT or coding["code"] in seen:
                continue
            if term.memberships(coding["system"], coding["code"]):
                continue
            if any(word in coding["display"].lower() for word in _STORY_WORDS):
                continue
            seen[coding["code"]] = (coding, resource)
    return list(seen.values())


def background_condition(cid: str, pid: str, coding: dict, synthea: dict) -> dict:
    """A problem-list Condition shaped like build_cases.condition, with a Synthea code."""
    out = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": synthea["clinicalStatus"],
        "verificationStatus": synthea["verificationStatus"],
        "category": [{"coding": [{"system": bc.CAT, "code": "problem-list-item",
                                  "display": "Problem List Item"}]}],
        "code": {"coding": [dict(coding)], "text": coding["display"]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": synthea["onsetDateTime"],
    }
    if "abatementDateTime" in synthea:
        out["abatementDateTime"] = synthea["abatementDateTime"]
    out["recordedDate"] = synthea.get("recordedDate", synthea["onsetDateTime"])
    return out


def background_procedure(prid: str, pid: str, coding: dict, synthea: dict) -> dict:
    """A completed Procedure with a Synthea SNOMED CT code and performed date."""
    return {
        "resourceType": "Procedure",
        "id": prid,
        "status": "completed",
        "code": {"coding": [dict(coding)], "text": coding["display"]},
        "subject": {"reference": f"Patient/{pid}"},
        "performedDateTime": synthea["performedPeriod"]["start"],
    }


def build() -> dict:
    """The typical request body (a JSON-ready dict)."""
    pid, enc, h, pat, conds = bc.story_v1(CASE_ID, family="Okonkwo-Test", given="Anselm")
    conds.append(bc.condition(f"c-{h}-op", pid, icd="M81.0", sct="64859006", onset="2019-04-02"))
    extra = N_CONDITIONS - len(conds)
    for n, (coding, res) in enumerate(_synthea_codes("Condition")[:extra], 1):
        conds.append(background_condition(f"c-{h}-bg{n:02d}", pid, coding, res))
    procs = [background_procedure(f"pr-{h}-bg{n:02d}", pid, coding, res)
             for n, (coding, res) in enumerate(_synthea_codes("Procedure")[:N_PROCEDURES], 1)]
    if len(conds) != N_CONDITIONS or len(procs) != N_PROCEDURES:
        raise SystemExit(f"not enough Synthea codes: {len(conds)} Conditions, {len(procs)} Procedures")
    orders = [
        bc.service_request(f"sr-{h}-mri-wwo", pid, "72158", enc, reasons=("42942008", "279039007")),
        bc.service_request(f"sr-{h}-ct-wo", pid, "72131", enc, reasons=("42942008", "279039007")),
    ]
    return bc.request(CASE_ID, pat, conds, orders, procedures=procs)


def main() -> int:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
