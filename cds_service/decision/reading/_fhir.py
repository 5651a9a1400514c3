"""Small functions shared by the readers: FHIR dates and codings from plain JSON dicts."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def parse_fhir_datetime(value: Any) -> datetime | None:
    """A FHIR ``date``/``dateTime``/``instant`` string as an aware UTC datetime, else None.

    Partial dates (``2026``, ``2026-11``) take the first day; a dateTime without a zone is read
    as UTC (FHIR requires a zone when there is a time, so this is only a tolerance).
    """
    if not isinstance(value, str) or not value:
        return None
    m = _PARTIAL.match(value)
    if m:
        y, mo, d = int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1)
        try:
            return datetime(y, mo, d, tzinfo=UTC)
        except ValueError:
            return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso_date(value: datetime | None) -> str | None:
    """``YYYY-MM-DD`` of a datetime, or None."""
    return value.date().isoformat() if value else None


def codings(concept: Any) -> Iterator[Mapping[str, Any]]:
    """The codings of a CodeableConcept dict (nothing for anything else)."""
    if isinstance(concept, Mapping):
        for c in concept.get("coding") or ():
            if isinstance(c, Mapping) and isinstance(c.get("code"), str):
                yield c


def concept_text(concept: Any) -> str:
    """``text`` of a CodeableConcept, else the first coding display, else ''."""
    if not isinstance(concept, Mapping):
        return ""
    if isinstance(concept.get("text"), str) and concept["text"].strip():
        return str(concept["text"]).strip()
    for c in codings(concept):
        if isinstance(c.get("display"), str) and c["display"].strip():
            return str(c["display"]).strip()
    return ""


def days_between(earlier: datetime, later: datetime | date) -> float:
    """Days from ``earlier`` to ``later`` (negative when ``later`` is before)."""
    if not isinstance(later, datetime):
        later = datetime(later.year, later.month, later.day, tzinfo=UTC)
    return (later - earlier).total_seconds() / 86400.0


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty mapping."""
    return value if isinstance(value, Mapping) else {}
