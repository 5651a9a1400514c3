"""Build order-select request fixtures around the five Synthea patient records.

Reads:   ../shared/interop/synthea/*.json  (relative to the repository root, i.e. the
         `shared/` folder that sits beside this repository; override with the
         environment variable VCF_SHARED_DIR=/path/to/shared)
         Origin of those files: github.com/smart-on-fhir/generated-sample-data,
         commit 25ac808, R4/SYNTHEA/ (see shared/interop/README.md). They are synthetic.
Writes:  fhir_fixtures/requests/synthea-<given>-<family>.json, one per record.

Each request is what an EHR would POST to /cds-services/vcf-order-select:
  - prefetch.patient     = the record's Patient, exactly as in the Bundle
  - prefetch.conditions  = searchset Bundle of ALL the record's Condition resources
  - prefetch.procedures  = searchset Bundle of ALL the record's Procedure resources
  - prefetch.medicationRequests = searchset Bundle of ALL the record's MedicationRequest
                           resources (e.g. Willia Runolfsdottir's active alendronate order)
  - context.draftOrders  = one draft ServiceRequest, CPT 72148 (MRI lumbar spine without
                           contrast), subject Patient/<Synthea Patient id>
The Synthea resources are copied unchanged (their `urn:uuid:` references validate as FHIR
R4 references, so they are kept as they are). Entry fullUrls are the Bundle's own
(`urn:uuid:<id>`). The encounterId is the id of the record's latest Encounter.

Deterministic: same input, same output (hookInstance is derived from the file name; no
clock, no randomness). Run from anywhere:

    .venv/bin/python fhir_fixtures/build_synthea_requests.py

`manifest_entries()` returns the cases.json entries for these files; build_cases.py uses it.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REQUESTS = HERE / "requests"
CPT = "http://www.ama-assn.org/go/cpt"
AUTHORED = "2026-11-16T10:00:00-05:00"


def shared_dir() -> Path:
    env = os.environ.get("VCF_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared"


def fixed_uuid4(seed: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16], version=4))


def _slug(patient: dict) -> str:
    name = patient["name"][0]
    given = "".join(c for c in name["given"][0] if c.isalpha())
    family = "".join(c for c in name["family"] if c.isalpha())
    return f"synthea-{given}-{family}".lower()


def _searchset(resources: list[tuple[str, dict]]) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": full_url, "resource": res, "search": {"mode": "match"}}
            for full_url, res in resources
        ],
    }


def build_one(path: Path) -> tuple[str, dict, dict]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    entries = bundle["entry"]
    patient_entry = next(e for e in entries if e["resource"]["resourceType"] == "Patient")
    patient = patient_entry["resource"]
    pid = patient["id"]
    conditions = [(e["fullUrl"], e["resource"]) for e in entries
                  if e["resource"]["resourceType"] == "Condition"]
    procedures = [(e["fullUrl"], e["resource"]) for e in entries
                  if e["resource"]["resourceType"] == "Procedure"]
    medication_requests = [(e["fullUrl"], e["resource"]) for e in entries
                           if e["resource"]["resourceType"] == "MedicationRequest"]
    encounters = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Encounter"]
    latest = max(encounters, key=lambda r: r.get("period", {}).get("start", ""))
    slug = _slug(patient)
    sr_id = f"sr-{slug}-mri-lumbar"
    service_request = {
        "resourceType": "ServiceRequest",
        "id": sr_id,
        "status": "draft",
        "intent": "order",
        "code": {
            "coding": [{"system": CPT, "code": "72148",
                        "display": "MRI lumbar spine without contrast material"}],
            "text": "MRI lumbar spine without contrast",
        },
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": AUTHORED,
        "requester": {"reference": "Practitioner/prac-synthea-ordering"},
    }
    body = {
        "hook": "order-select",
        "hookInstance": fixed_uuid4("fixture:" + slug),
        "fhirServer": "https://ehr.example.org/fhir",
        "context": {
            "userId": "Practitioner/prac-synthea-ordering",
            "patientId": pid,
            "encounterId": latest["id"],
            "selections": [f"ServiceRequest/{sr_id}"],
            "draftOrders": {"resourceType": "Bundle",
                            "entry": [{"resource": service_request}]},
        },
        "prefetch": {
            "patient": patient,
            "conditions": _searchset(conditions),
            "procedures": _searchset(procedures),
            "medicationRequests": _searchset(medication_requests),
        },
    }
    n_fx = sum(1 for _, c in conditions
               if any(cd.get("code") == "443165006" for cd in c["code"].get("coding", [])))
    deceased = patient.get("deceasedDateTime")
    entry = {
        "id": slug,
        "file": f"requests/{slug}.json",
        "description": (
            f"Synthea record {path.name}: {patient['gender']}, born {patient['birthDate']}"
            + (f", deceased {deceased[:10]}" if deceased else "")
            + f"; {len(conditions)} Conditions, {len(procedures)} Procedures, {len(medication_requests)} "
            "MedicationRequests copied unchanged; "
            "draft order MRI lumbar spine without contrast (72148)."),
        "source": (f"shared/interop/synthea/{path.name} (github.com/smart-on-fhir/"
                   "generated-sample-data commit 25ac808, R4/SYNTHEA/), built by "
                   "fhir_fixtures/build_synthea_requests.py"),
        "expect": {
            "status": 200,
            "variant": None,
            "ratings": {f"ServiceRequest/{sr_id}": None},
            "indicators": [],
            "notes": (
                "Silence and no rating. The record has osteoporosis (SNOMED 64859006)"
                + (f" and {n_fx} 'Pathological fracture due to osteoporosis' (SNOMED "
                   "443165006) Condition(s) that accompany a hip/wrist/forearm/clavicle "
                   "fracture, not a vertebral one: 443165006 alone is NOT a VCF fact"
                   if n_fx else " only, no fracture")
                + "; no back pain, no neurologic red flag, no coded VCF: no ACR VCF variant "
                "applies. References inside the Synthea resources are urn:uuid: form "
                "(Condition.subject = urn:uuid:<patient id>), as Synthea wrote them."
                + (" The patient is deceased in the record; the service is not expected to "
                   "check that." if deceased else "")),
        },
    }
    return slug, body, entry


def manifest_entries(write: bool = True) -> list[dict]:
    src = shared_dir() / "interop" / "synthea"
    files = sorted(src.glob("*.json"))
    if not files:
        raise SystemExit(f"no Synthea records found in {src}")
    out = []
    for path in files:
        slug, body, entry = build_one(path)
        if write:
            REQUESTS.mkdir(parents=True, exist_ok=True)
            (REQUESTS / f"{slug}.json").write_text(
                json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        out.append(entry)
    return out


def main() -> int:
    for e in manifest_entries(write=True):
        print("wrote", e["file"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
