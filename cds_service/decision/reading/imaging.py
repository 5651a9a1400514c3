"""Imaging facts for the decision, from report readings (:mod:`cds_service.decision.reading.reports`).

The rules (CMS LCD L34228 acute / subacute fracture with edema; Dansie et al.; IR teaching cases on
asymptomatic fractures; windows in ``data/reading/imaging-rules.json``):

- *Edema or cleft at a current fracture* (ACR variant 6): a present marrow edema or
  intravertebral cleft, in a spine MRI of the last 12 weeks (CMS LCD L34228: acute < 6 weeks,
  subacute 6-12 weeks), at the level of a current fracture: a level the caller knows from coded
  data, or a fracture the spine MRIs of that window describe as present and not chronic/healed.
- Not at a *previously augmented level* (Dansie DM et al., AJNR: edema persists or appears at
  a treated level after vertebroplasty and is not by itself a new fracture). Augmented levels come
  from the caller (Procedures) and from the reports ("prior L2 kyphoplasty").
- *No spine MRI on record* within the window: the reminder / "suggest an MRI" case.
- *Same study recently*: a report with the same LOINC code, or the same modality and region,
  within ``repeatStudyDays``.
- *Incidental fracture*: a fracture described in a non-spine study as incidental,
  age-indeterminate or chronic-appearing (probable asymptomatic VCF; the caller checks for recent
  back pain).

Everything returned is evidence from report text, to be shown as "from report text, unconfirmed".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from cds_service.decision.reading.loader import ReadingKnowledge, load_reading_knowledge
from cds_service.decision.reading.reports import ReportFinding, ReportReading


@dataclass(frozen=True)
class ImagingFacts:
    """What the readings mean for the decision (all tuples ordered newest report first).

    ``edema_or_cleft``: findings that make ACR variant 6 apply. ``edema_at_augmented_level``:
    edema/cleft left out because the level was augmented before. ``fracture_levels``: current
    fracture levels used (caller's ∪ reports'). ``augmented_levels``: caller's ∪ reports'.
    ``level_unknown``: edema/cleft present in a recent spine MRI whose level could not be tied to
    a fracture (neither side names one): the caller may ask for confirmation instead of rating.
    """

    spine_mri: tuple[ReportReading, ...]
    edema_or_cleft: tuple[ReportFinding, ...]
    edema_at_augmented_level: tuple[ReportFinding, ...]
    level_unknown: tuple[ReportFinding, ...]
    fracture_levels: tuple[str, ...]
    augmented_levels: tuple[str, ...]
    incidental_fractures: tuple[ReportFinding, ...]

    @property
    def no_spine_mri(self) -> bool:
        """True when no spine MRI report lies within the recent window."""
        return not self.spine_mri


@lru_cache(maxsize=1)
def _default_knowledge() -> ReadingKnowledge:
    return load_reading_knowledge()


def _within(reading: ReportReading, now: datetime, days: int) -> bool:
    return reading.date is not None and now - timedelta(days=days) <= reading.date <= now + timedelta(days=1)


def imaging_facts(readings: Iterable[ReportReading], *, now: datetime, fracture_levels: Sequence[str] = (),
                  augmented_levels: Sequence[str] = (), knowledge: ReadingKnowledge | None = None) -> ImagingFacts:
    """Imaging facts from ``readings`` (any order) at ``now`` (timezone-aware).

    ``fracture_levels`` / ``augmented_levels``: vertebral levels ("T8", "L1") known from coded
    data (Conditions, Procedures), possibly empty.
    """
    k = knowledge or _default_knowledge()
    rules = k.imaging
    ordered = sorted(readings, key=lambda r: r.date or datetime.min.replace(tzinfo=now.tzinfo), reverse=True)
    recent_mri = tuple(r for r in ordered if r.is_spine_mri and _within(r, now, rules.recentMriDays))

    augmented = dict.fromkeys(augmented_levels)
    for r in ordered:
        for f in r.present("prior-augmentation"):
            augmented.update(dict.fromkeys(f.levels))
    fractures = dict.fromkeys(fracture_levels)
    for r in recent_mri:
        for f in r.present("fracture"):
            if f.acuity not in rules.oldFractureAcuities:
                fractures.update(dict.fromkeys(lv for lv in f.levels if lv not in augmented))

    qualifying: list[ReportFinding] = []
    at_augmented: list[ReportFinding] = []
    unknown: list[ReportFinding] = []
    for r in recent_mri:
        for f in (*r.present("marrow-edema"), *r.present("intravertebral-cleft")):
            if not f.levels:
                # A reading that names no level: tie it to the fractures only when they are
                # unambiguous (one level), otherwise leave the decision to the caller.
                (qualifying if len(fractures) == 1 and not augmented else unknown).append(f)
                continue
            levels = [lv for lv in f.levels if lv not in augmented]
            if not levels:
                at_augmented.append(f)
            elif not fractures:
                unknown.append(f)
            elif any(lv in fractures for lv in levels):
                qualifying.append(f)

    incidental = tuple(f for r in ordered if not r.is_spine_mri for f in r.present("fracture")
                       if f.incidental or f.acuity in rules.incidentalAcuities)
    return ImagingFacts(recent_mri, tuple(qualifying), tuple(at_augmented), tuple(unknown), tuple(fractures),
                        tuple(augmented), incidental)


def same_study_recently(readings: Iterable[ReportReading], *, now: datetime, loinc: str | None = None,
                        modality: str | None = None, region: str | None = None,
                        knowledge: ReadingKnowledge | None = None) -> tuple[ReportReading, ...]:
    """Reports of the same study as an order, within ``repeatStudyDays`` (newest first).

    Same study: the same LOINC report code when both have one, else the same modality and
    region ("MR", "lumbar"). The window is a design choice of this service (imaging-rules.json),
    so the answer is unconfirmed by nature: name the earlier report, never block.
    """
    k = knowledge or _default_knowledge()
    days = k.imaging.repeatStudyDays
    out = []
    for r in readings:
        if not _within(r, now, days):
            continue
        if (loinc and r.code and r.code == loinc) or (modality and region and r.modality == modality and r.region == region):
            out.append(r)
    return tuple(sorted(out, key=lambda r: r.date or now, reverse=True))
