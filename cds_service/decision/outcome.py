"""The result of one evaluated hook call, as the layers above (audit, metrics, HTTP) read it."""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.decision.engine import Decision
from cds_service.decision.render import Rendered
from cds_service.protocol.request import ParsedRequest

__all__ = ["Outcome"]


@dataclass(frozen=True)
class Outcome:
    """A successful evaluation: the parsed request, the decision and the rendered response."""

    request: ParsedRequest
    decision: Decision
    rendered: Rendered
