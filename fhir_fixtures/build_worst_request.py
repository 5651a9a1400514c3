"""Build fhir_fixtures/bench/worst-request.json: the costliest request within the default limits.

The default limits (settings ``MAX_DRAFT_ORDERS`` 50, ``MAX_PREFETCH_ENTRIES`` 5,000,
``MAX_BODY_BYTES`` 8 MiB) bound what one order-select call may carry; this request fills
them with what the service reads and validates, so the benchmark and the tests can show the
cost of one call has a bound:

- 50 draft orders, all selected: the spine imaging and treatment CPT codes of
  ``build_cases.py`` in turn, each with two reasonCodes, authored on 50 different days (so
  no two orders share a reference date);
- 4,800 Conditions, every one with a code the decision reads (each ICD-10-CM code of
  ``build_cases.ICD_TEXT`` with its SNOMED CT twin where ``build_cases`` has one, in
  turn), active, onsets spread over ten years, a long ``code.text`` and a long note, some of
  them encounter diagnoses of the orders' encounter;
- 200 completed Procedures, every one a vertebral augmentation (a fact the decision reads),
  thoracic and lumbar in turn.

Prefetch then holds 5,000 Bundle entries (``MAX_PREFETCH_ENTRIES``), each one a resource the
decision reads; the body is about 7.4 MB.

The benchmark and the tests build it in memory (:func:`build`); the file (7.4 MB, not in git)
is for sending it by hand. Deterministic (no clock, no randomness); run from anywhere:

    .venv/bin/python fhir_fixtures/build_worst_request.py
"""

from __future__ import annotations

import json
import sys
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_cases as bc  # noqa: E402

OUT = HERE / "bench" / "worst-request.json"
CASE_ID = "bench-worst-request"
N_ORDERS = 50
N_CONDITIONS = 4800
N_PROCEDURES = 200
# ICD-10-CM code -> its SNOMED CT twin among build_cases.SCT_TEXT (same clinical idea).
_SCT_TWIN = {"M48.56XA": "42942008", "M48.54XA": "42942008", "M81.0": "64859006", "C79.51": "94222008",
             "M54.50": "279039007", "M40.204": "414564002", "R06.00": "267036007", "D68.9": "64779008",
             "R32": "165232002"}
_ORDER_CPT = ("72158", "72148", "72131", "72146", "72157", "72128", "72129", "22513", "22514", "20982")
_LONG = ("Free text as a busy problem list carries it: seen in clinic, imaging reviewed, history taken "
         "from the patient and the family, medication list reconciled, follow-up arranged. ")


def _day(n: int) -> str:
    return (date.fromisoformat(bc.TODAY) - timedelta(days=n)).isoformat()


def build() -> dict:
    """The worst request body (a JSON-ready dict)."""
    pid, enc, h = bc.ids(CASE_ID)
    pat = bc.patient(pid, "Vasquez-Test", "Ottilie", "female", "1948-03-21")
    codes = sorted(bc.ICD_TEXT)
    conds = []
    for n in range(N_CONDITIONS):
        icd = codes[n % len(codes)]
        c = bc.condition(f"c-{h}-{n:04d}", pid, icd=icd, sct=_SCT_TWIN.get(icd), onset=_day(7 + (n * 37) % 3650),
                         text=f"{bc.ICD_TEXT[icd]}. {_LONG}", note=_LONG * 2)
        if n % 50 == 0:
            c["category"][0]["coding"][0].update(code="encounter-diagnosis", display="Encounter Diagnosis")
            c["encounter"] = {"reference": f"Encounter/{enc}"}
        conds.append(c)
    procs = [bc.procedure(f"pr-{h}-{n:03d}", pid, cpt, bc.CPT_TEXT[cpt], _day(400 + 11 * n), body_site_text=_LONG)
             for n in range(N_PROCEDURES) for cpt in [("22513", "22514")[n % 2]]]
    orders = []
    for n in range(N_ORDERS):
        sr = bc.service_request(f"sr-{h}-{n:02d}", pid, _ORDER_CPT[n % len(_ORDER_CPT)], enc,
                                reasons=("42942008", "279039007"), note=_LONG * 4)
        sr["authoredOn"] = f"{_day(n)}T09:30:00-05:00"
        orders.append(sr)
    return bc.request(CASE_ID, pat, conds, orders, procedures=procs)


def main() -> int:
    OUT.parent.mkdir(exist_ok=True)
    # Compact: indented, it would pass the default 8 MiB body limit.
    OUT.write_text(json.dumps(build(), ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
