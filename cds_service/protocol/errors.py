"""Request errors and their FHIR OperationOutcome form.

The CDS Hooks 2.0 spec ("HTTP Status Codes") only names 412 for missing FHIR
data and lets services return other 4xx/5xx codes; it does not define an error
body. We send a FHIR OperationOutcome because CDS Clients already parse FHIR,
and the issue ``code`` gives callers a stable, machine-readable reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# FHIR R4 IssueType codes this service uses. Listed so a typo fails loudly at
# raise time instead of reaching a client as an unknown code.
ISSUE_CODES = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "not-found",
        "not-supported",
        "processing",
        "too-long",
        "exception",
        "timeout",
        "transient",
        "login",
    }
)

# The codes as a JSON Schema enum (typed as pydantic's JSON values want a list).
_ISSUE_CODE_LIST: list[Any] = sorted(ISSUE_CODES)


class RequestError(Exception):
    """A request the service refuses, with what the client needs to fix it.

    Attributes:
        status: HTTP status (400 malformed request, 412 required data missing, ...).
        code: FHIR IssueType code (``invalid``, ``structure``, ``required``,
            ``not-found``, ``not-supported``, ``processing``, ``too-long`` ...).
        diagnostic: one readable sentence. Callers must keep it free of stack
            traces, patient identifiers and tokens: it is sent to the client and
            may end up in its logs.
        expression: optional locations of the problem (FHIRPath-like, e.g.
            ``context.draftOrders.entry[0].resource``).

    Raises:
        ValueError: if ``code`` is not a known IssueType code or ``status`` is
            not a 4xx/5xx HTTP status.
    """

    def __init__(
        self,
        status: int,
        code: str,
        diagnostic: str,
        expression: Sequence[str] | None = None,
    ) -> None:
        if code not in ISSUE_CODES:
            raise ValueError(f"unknown FHIR issue type code {code!r}")
        if not 400 <= status <= 599:
            raise ValueError(f"RequestError status must be 4xx or 5xx, got {status}")
        super().__init__(diagnostic)
        self.status = status
        self.code = code
        self.diagnostic = diagnostic
        self.expression: tuple[str, ...] | None = tuple(expression) if expression else None

    def to_operation_outcome(self) -> dict[str, Any]:
        """This error as a FHIR OperationOutcome dict (see :func:`operation_outcome`)."""
        return operation_outcome(self.status, self.code, self.diagnostic, self.expression)

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.code!r}, {self.diagnostic!r})"


def operation_outcome(
    status: int,
    code: str,
    diagnostic: str,
    expression: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build a FHIR R4 OperationOutcome with one error issue.

    Shape: ``{"resourceType": "OperationOutcome", "issue": [{"severity": "error",
    "code": code, "diagnostics": diagnostic, "expression": [...]}]}``;
    ``expression`` is omitted when empty, since empty arrays are not valid FHIR.
    ``status`` is accepted so callers can pass a RequestError's fields through
    unchanged; the HTTP status itself travels on the response, not in the body.
    """
    del status  # carried by the HTTP response line, not by OperationOutcome
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostic}
    if expression:
        issue["expression"] = list(expression)
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class OutcomeIssue(BaseModel):
    """One ``OperationOutcome.issue`` as :func:`operation_outcome` builds it (FHIR R4
    OperationOutcome.issue: ``severity`` and ``code`` required; ``code`` one of
    :data:`ISSUE_CODES`)."""

    model_config = ConfigDict(extra="forbid")

    severity: Literal["fatal", "error", "warning", "information"]
    code: str = Field(json_schema_extra={"enum": _ISSUE_CODE_LIST})
    diagnostics: str | None = None
    expression: list[str] | None = Field(default=None, json_schema_extra={"minItems": 1})


class OperationOutcome(BaseModel):
    """The error body of every refused call: a FHIR R4 OperationOutcome with one issue
    (built by :func:`operation_outcome`; this model is its published JSON Schema)."""

    model_config = ConfigDict(extra="forbid")

    resourceType: Literal["OperationOutcome"]
    issue: list[OutcomeIssue] = Field(min_length=1)
