"""Liveness and readiness endpoints for process managers and load balancers.

``GET /healthz``: the process answers HTTP (liveness; nothing else is checked, so a slow
dependency never gets a healthy worker restarted). ``GET /readyz``: the worker can evaluate
hook calls: the knowledge is loaded, and every readiness check registered with
:func:`register_readiness_check` passes (the database check, when a database is
configured). Both are unauthenticated and carry no patient data.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response

from cds_service.web.hooks import json_response
from cds_service.web.state import ReadinessCheck, current_state, state_of

__all__ = ["ReadinessCheck", "bp", "readiness_checks", "register_readiness_check"]

log = logging.getLogger("cds_service.web.health")
bp = Blueprint("health", __name__)


def readiness_checks(app: Flask) -> list[tuple[str, ReadinessCheck]]:
    """The app's (name, check) pairs, in the order registered (``AppState.readiness``)."""
    return list(state_of(app).readiness)


def register_readiness_check(app: Flask, name: str, check: ReadinessCheck) -> None:
    """Add a check that ``/readyz`` runs (after the knowledge check), reported under ``name``."""
    state_of(app).readiness.add(name, check)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"}, 200)


@bp.get("/readyz")
def readyz() -> Response:
    """200 ``{"status": "ready", "checks": {name: "ok"}}``, or 503 with ``"not-ready"`` and,
    per failed check, ``"failed"`` or ``"failed (<exception type>)"`` (never its message,
    which may name a host or a credential)."""
    state = current_state()
    checks: list[tuple[str, ReadinessCheck]] = [
        ("knowledge", lambda: state.knowledge is not None),
        *state.readiness,
    ]
    results: dict[str, str] = {}
    for name, check in checks:
        try:
            results[name] = "failed" if check() is False else "ok"
        except Exception as exc:  # a check that raises is a failed check, not a 500
            results[name] = f"failed ({type(exc).__name__})"
            log.warning("readiness check %s failed: %s", name, type(exc).__name__)
    ready = all(r == "ok" for r in results.values())
    return json_response({"status": "ready" if ready else "not-ready", "checks": results}, 200 if ready else 503)
