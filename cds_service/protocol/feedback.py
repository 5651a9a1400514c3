"""CDS Hooks 2.0 §Feedback request body as pydantic models, with the spec's rules.

Body: ``{"feedback": [{"card": uuid, "outcome": "accepted"|"overridden",
"acceptedSuggestions": [{"id": uuid}], "overrideReason": {"reason": Coding,
"userComment": str}, "outcomeTimestamp": RFC 3339 date-time}]}``. Unknown members (including
``extension``) are ignored, as the spec asks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

__all__ = ["AcceptedSuggestion", "FeedbackCoding", "FeedbackEntry", "FeedbackRequest", "MAX_ENTRIES", "OverrideReason"]

MAX_ENTRIES = 1000
_UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# RFC 3339 §5.6 date-time: the offset is required ("Z" or +hh:mm); T and Z may be lower case.
_RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"

Uuid = Annotated[str, StringConstraints(pattern=_UUID_PATTERN)]




def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold U+0000 (SQLite can): refused on both, so that both store
    # the same and a client is told at once instead of being sent 503 on every retry.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


Text256 = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_no_nul)]
Text512 = Annotated[str, StringConstraints(min_length=1, max_length=512), AfterValidator(_no_nul)]
Text4000 = Annotated[str, StringConstraints(min_length=1, max_length=4000), AfterValidator(_no_nul)]


class _Wire(BaseModel):
    # Unknown members (including ``extension``) are allowed and ignored, as the spec asks.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class FeedbackCoding(_Wire):
    """CDS Hooks 2.0 Coding (§Data Types): ``system`` and ``code`` required."""

    system: Text512
    code: Text256
    display: Text512 | None = None


class OverrideReason(_Wire):
    """§Feedback OverrideReason: the reason chosen from the card's list and/or a comment."""

    reason: FeedbackCoding | None = None
    userComment: Text4000 | None = None


class AcceptedSuggestion(_Wire):
    """§Feedback AcceptedSuggestion: ``id`` is the accepted suggestion's uuid."""

    id: Uuid


class FeedbackEntry(_Wire):
    """One §Feedback entry. Rules beyond the types: ``acceptedSuggestions`` (non-empty) is
    required with ``accepted`` and not allowed with ``overridden``; ``overrideReason`` only
    with ``overridden``; ``outcomeTimestamp`` an RFC 3339 date-time with offset."""

    card: Uuid
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: Annotated[str, StringConstraints(pattern=_RFC3339_PATTERN)]

    @field_validator("outcomeTimestamp")
    @classmethod
    def _real_instant(cls, value: str) -> str:
        try:
            # In UTC too: 9999-12-31T23:59:59-23:59 parses, but is past the last instant
            # a datetime holds once moved to UTC (OverflowError).
            datetime.fromisoformat(value.upper()).astimezone(UTC)
        except (ValueError, OverflowError):
            raise ValueError("not a valid date-time (RFC 3339, e.g. 2021-12-11T10:05:31Z)") from None
        return value

    @model_validator(mode="after")
    def _outcome_rules(self) -> FeedbackEntry:
        if self.outcome == "accepted":
            if not self.acceptedSuggestions:
                raise ValueError("acceptedSuggestions (at least one {\"id\": ...}) is required when outcome is accepted")
            if self.overrideReason is not None:
                raise ValueError("overrideReason is only sent with outcome overridden")
        elif self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only sent with outcome accepted")
        return self

    @property
    def outcome_at(self) -> datetime:
        """``outcomeTimestamp`` as an aware UTC datetime."""
        return datetime.fromisoformat(self.outcomeTimestamp.upper()).astimezone(UTC)


class FeedbackRequest(_Wire):
    """The §Feedback request body: ``{"feedback": [FeedbackEntry, ...]}`` (at least one)."""

    feedback: list[FeedbackEntry] = Field(min_length=1, max_length=MAX_ENTRIES)
