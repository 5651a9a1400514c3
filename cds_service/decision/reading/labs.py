"""Read INR and platelet count (FHIR R4 Observation dicts) and judge them for a procedure.

Codes: LOINC value set ``data/reading/valuesets/coagulation-labs-loinc.json``; which code is
which lab, the accepted units and the thresholds: ``data/reading/bleeding-thresholds.json``,
from the SIR consensus (Patel IJ et al., J Vasc Interv Radiol 2019;30(8):1168-1184):
low bleeding risk: correct INR to within 2.0-3.0 or less, consider platelet transfusion below
20 x 10^9/L; high bleeding risk: INR within 1.5-1.8 or less, platelets below 50 x 10^9/L.
Vertebral augmentation is classed high risk (marked unconfirmed in the data: the class was not
read in the SIR table itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from cds_service.decision.reading._fhir import codings, iso_date, mapping, parse_fhir_datetime
from cds_service.decision.reading.loader import LOINC, ReadingKnowledge, load_reading_knowledge

USABLE_STATUSES = ("final", "amended", "corrected")


@dataclass(frozen=True)
class LabValue:
    """The latest value of one lab: value in the lab's canonical unit (INR: ratio; platelets:
    10^9/L), the unit as recorded, the date (ISO), the Observation id and LOINC code."""

    lab: Literal["inr", "platelets"]
    label: str
    value: float
    unit: str
    recorded_value: float
    recorded_unit: str
    date: str
    observation_id: str | None
    code: str


@dataclass(frozen=True)
class LabJudgement:
    """A lab value against the thresholds of a bleeding-risk class.

    ``state``: ``"out-of-range"`` (INR above the range's upper bound, platelets below the
    minimum), ``"borderline"`` (INR inside the guideline's range: the operator's threshold
    decides) or ``"within"``. ``threshold`` states the number compared, ``citation`` the source.
    """

    lab: str
    state: Literal["out-of-range", "borderline", "within"]
    value: LabValue
    risk_class: str
    threshold: str
    citation: str
    unconfirmed: bool


@lru_cache(maxsize=1)
def _default_knowledge() -> ReadingKnowledge:
    return load_reading_knowledge()


def _when(obs: Mapping[str, Any]) -> datetime | None:
    period = mapping(obs.get("effectivePeriod"))
    return (parse_fhir_datetime(obs.get("effectiveDateTime")) or parse_fhir_datetime(obs.get("effectiveInstant"))
            or parse_fhir_datetime(period.get("end")) or parse_fhir_datetime(period.get("start"))
            or parse_fhir_datetime(obs.get("issued")))


def read_labs(observations: Iterable[Any], *, now: datetime, lookback_days: int | None = None,
              knowledge: ReadingKnowledge | None = None) -> dict[str, LabValue]:
    """The latest INR and platelet count among ``observations`` within the look-back.

    ``now`` is timezone-aware; ``lookback_days`` defaults to ``bleeding-thresholds.json``
    ``lookbackDays`` (30). Only Observations with status final, amended or corrected, a LOINC
    code of the lab value set, a numeric ``valueQuantity`` in an accepted unit and a date count
    (a value in an unknown unit is left out rather than converted by guess). Returns
    ``{"inr": LabValue, "platelets": LabValue}``, either key absent when none qualifies.
    """
    k = knowledge or _default_knowledge()
    th = k.thresholds
    since = now - timedelta(days=lookback_days if lookback_days is not None else th.lookbackDays)
    by_code = {code: lab for lab in th.labs for code in lab.codes}
    latest: dict[str, tuple[datetime, LabValue]] = {}
    for obs in observations:
        if not isinstance(obs, Mapping) or obs.get("resourceType") != "Observation" or obs.get("status") not in USABLE_STATUSES:
            continue
        lab = next((by_code[str(c["code"])] for c in codings(obs.get("code"))
                    if c.get("system") == LOINC and str(c["code"]) in by_code), None)
        if lab is None:
            continue
        q = obs.get("valueQuantity")
        if not isinstance(q, Mapping) or isinstance(q.get("value"), bool) or not isinstance(q.get("value"), int | float):
            continue
        if q.get("comparator"):
            continue  # "<20" is not a value to compare against a threshold
        unit = str(q.get("code") or q.get("unit") or "")
        factor = lab.units.get(unit)
        if factor is None:
            continue
        when = _when(obs)
        if when is None or not since <= when <= now + timedelta(days=1):
            continue
        code = next(str(c["code"]) for c in codings(obs.get("code")) if str(c["code"]) in by_code)
        value = LabValue(lab.id, lab.label, round(float(q["value"]) * factor, 4), lab.unit, float(q["value"]), unit,
                         iso_date(when) or "", obs.get("id") if isinstance(obs.get("id"), str) else None, code)
        if lab.id not in latest or when > latest[lab.id][0]:
            latest[lab.id] = (when, value)
    return {lab_id: v for lab_id, (_, v) in latest.items()}


def bleeding_risk_class(procedure: str, knowledge: ReadingKnowledge | None = None) -> tuple[str, bool] | None:
    """(class id, unconfirmed) of a procedure id of ``bleeding-thresholds.json`` (e.g.
    ``"vertebral-augmentation"`` -> ``("high", True)``), or None when the procedure is not listed."""
    k = knowledge or _default_knowledge()
    for p in k.thresholds.procedures:
        if p.procedure == procedure:
            return p.risk_class, p.unconfirmed
    return None


def judge_labs(values: Mapping[str, LabValue], risk_class: str, *, knowledge: ReadingKnowledge | None = None,
               unconfirmed_class: bool = False) -> tuple[LabJudgement, ...]:
    """Judge the labs of :func:`read_labs` against the thresholds of ``risk_class`` ("low" / "high").

    Raises ``KeyError`` for an unknown class. Returns one judgement per lab present, in the order
    INR, platelets; callers show those with state ``out-of-range`` (and may show ``borderline``).
    """
    k = knowledge or _default_knowledge()
    rc = next((c for c in k.thresholds.classes if c.id == risk_class), None)
    if rc is None:
        raise KeyError(risk_class)
    out: list[LabJudgement] = []
    inr = values.get("inr")
    if inr is not None:
        if inr.value > rc.inr.rangeHigh:
            state: Literal["out-of-range", "borderline", "within"] = "out-of-range"
        elif inr.value > rc.inr.rangeLow:
            state = "borderline"
        else:
            state = "within"
        out.append(LabJudgement("inr", state, inr, rc.id, f"INR {rc.inr.rangeLow:g}-{rc.inr.rangeHigh:g} or less ({rc.label})",
                                k.thresholds.citation, unconfirmed_class))
    plt = values.get("platelets")
    if plt is not None:
        state = "out-of-range" if plt.value < rc.plateletsMin else "within"
        out.append(LabJudgement("platelets", state, plt, rc.id, f"platelets {rc.plateletsMin:g} x 10^9/L or more ({rc.label})",
                                k.thresholds.citation, unconfirmed_class))
    return tuple(out)


def out_of_range_for_procedure(values: Mapping[str, LabValue], procedure: str,
                               knowledge: ReadingKnowledge | None = None) -> tuple[LabJudgement, ...]:
    """The labs out of range for ``procedure`` (a ``bleeding-thresholds.json`` procedure id).

    Empty when the procedure has no bleeding-risk class or nothing is out of range.
    """
    cls = bleeding_risk_class(procedure, knowledge)
    if cls is None:
        return ()
    return tuple(j for j in judge_labs(values, cls[0], knowledge=knowledge, unconfirmed_class=cls[1])
                 if j.state == "out-of-range")
