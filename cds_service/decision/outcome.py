"""The result of one evaluated hook call, as the layers above (audit, metrics, HTTP) read it."""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.decision.engine import Decision
from cds_service.decision.render import Rendered
from cds_service.protocol.request import Envelope, PatientRecord

__all__ = ["Outcome"]


@dataclass(frozen=True)
class Outcome:
    """A successful evaluation (:func:`cds_service.pipeline.evaluate`): the checked request
    envelope, the patient's record as read from prefetch, the decision and the rendered
    response (already checked against the CDS Hooks 2.0 models)."""

    envelope: Envelope
    record: PatientRecord
    decision: Decision
    rendered: Rendered
