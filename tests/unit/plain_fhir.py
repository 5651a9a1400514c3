"""Small hand-written FHIR R4 resources for the unit tests of the clinical core.

Plain dicts as an EHR sends them, with only what the rules read; codes are from the bundled
value sets (``cds_service/decision/data/valuesets``).
"""

from __future__ import annotations

from datetime import date, timedelta

from cds_service.decision.scenario import Evidence, FactSet

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
LOINC = "http://loinc.org"

AUTHORED = "2026-03-02"
AS_OF = date(2026, 3, 2)

# Conditions (ICD-10-CM unless said otherwise)
OSTEOPOROTIC_VCF_INITIAL = "M80.08XA"  # age-related osteoporosis with pathological vertebral fracture, initial
OSTEOPOROTIC_VCF_SUBSEQUENT = "M80.08XD"
LOW_BACK_PAIN = "M54.50"
OSTEOPOROSIS = "M81.0"
ANTICOAGULANT_USE = "Z79.01"
BISPHOSPHONATE_USE = "Z79.83"  # long-term use of bisphosphonates: osteoporosis therapy
CAUDA_EQUINA = "G83.4"
BONE_METASTASIS = "C79.51"
PATHOLOGIC_VCF = "M84.58XA"  # pathological fracture in neoplastic disease, vertebrae, initial
TRAUMATIC_LUMBAR_FRACTURE = "S32.010A"
VERTEBRAL_OSTEOMYELITIS = "M46.26"
KYPHOSIS = "M40.204"
HYPERTENSION = "I10"
COMPRESSION_FRACTURE_SNOMED = "42942008"

# Orders (CPT unless said otherwise)
MRI_LUMBAR_WITHOUT = "72148"
MRI_LUMBAR_WITH = "72149"
MRI_THORACIC_WITHOUT = "72146"
CT_LUMBAR_WITHOUT = "72131"
BONE_SCAN_WHOLE_BODY = "78306"
DXA = "77080"
KYPHOPLASTY_LUMBAR = "22514"
ABLATION_SPINE = "20982"
REFERRAL_TO_NEUROSURGEON = "308482002"  # SNOMED CT


def coding(code: str, system: str = ICD10CM, display: str | None = None) -> dict:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def condition(code: str, system: str = ICD10CM, *, id: str | None = None, clinical: str = "active",
              verification: str = "confirmed", onset: date | None = None, display: str | None = None) -> dict:
    """A Condition with one coding; ``onset`` as onsetDateTime."""
    c: dict = {"resourceType": "Condition", "id": id or f"c-{code}",
               "clinicalStatus": {"coding": [{"code": clinical}]},
               "verificationStatus": {"coding": [{"code": verification}]},
               "code": {"coding": [coding(code, system, display)]},
               "subject": {"reference": "Patient/p1"}}
    if onset is not None:
        c["onsetDateTime"] = onset.isoformat()
    return c


def procedure(code: str, system: str = CPT, *, id: str | None = None, status: str = "completed",
              performed: date | None = None) -> dict:
    p: dict = {"resourceType": "Procedure", "id": id or f"p-{code}", "status": status,
               "code": {"coding": [coding(code, system)]}, "subject": {"reference": "Patient/p1"}}
    if performed is not None:
        p["performedDateTime"] = performed.isoformat()
    return p


def order(code: str, system: str = CPT, *, id: str = "o1", status: str = "draft", reasons: tuple[str, ...] = (),
          authored: str | None = AUTHORED, display: str | None = None, **extra: object) -> dict:
    """A draft ServiceRequest for one code; ``reasons`` are ICD-10-CM reasonCodes."""
    sr: dict = {"resourceType": "ServiceRequest", "id": id, "status": status, "intent": "order",
                "code": {"coding": [coding(code, system, display)]}, "subject": {"reference": "Patient/p1"}}
    if authored is not None:
        sr["authoredOn"] = authored
    if reasons:
        sr["reasonCode"] = [{"coding": [coding(r)]} for r in reasons]
    sr.update(extra)
    return sr


def days_before(days: int) -> date:
    return AS_OF - timedelta(days=days)


def facts(*ids: str) -> FactSet:
    """A FactSet holding ``ids``, each with one made-up piece of evidence."""
    return FactSet({f: (Evidence(fact=f, resource=f"Condition/{f}", system=ICD10CM, code="X", display=None,
                                 valueset=f),) for f in ids})


# The records of the usual patients.
def new_osteoporotic_vcf_with_back_pain() -> list[dict]:
    """ACR VCF variant V1: a new osteoporotic fracture, back pain, no malignancy."""
    return [condition(OSTEOPOROTIC_VCF_INITIAL), condition(LOW_BACK_PAIN)]


def worsening_osteoporotic_vcf() -> list[dict]:
    """ACR VCF variant V7: osteoporotic fracture with back pain and worsening kyphosis (recent:
    worsening means new or progressive, decision-rules.md §6.3)."""
    return [*new_osteoporotic_vcf_with_back_pain(), condition(KYPHOSIS, onset=AS_OF - timedelta(days=14))]
