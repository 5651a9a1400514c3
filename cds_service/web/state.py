"""The application state: everything a request handler reads, built once by ``create_app``.

One frozen :class:`AppState` per Flask app, kept in ``app.extensions`` under
:data:`EXTENSION`; views read it with :func:`current_state`, tools outside a request with
:func:`state_of`. Its fields never change after start-up. The two things that do change
live in small objects of their own: the audit failure count
(:class:`cds_service.store.audit.FailureCounter`) and the readiness checks
(:class:`ReadinessChecks`), to which a deployment may add.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from flask import Flask, current_app

from cds_service.decision.knowledge import Knowledge
from cds_service.decision.render import RenderOptions
from cds_service.fhir.client import FhirClient
from cds_service.protocol.request import RequestSchemas
from cds_service.security.links import ExplainLinks
from cds_service.settings import Settings
from cds_service.store.audit import AuditTrail
from cds_service.store.db import Database

__all__ = ["EXTENSION", "AppState", "ReadinessCheck", "ReadinessChecks", "current_state", "state_of"]

EXTENSION = "vcf_cds"

ReadinessCheck = Callable[[], object]
"""A readiness check: returns normally (anything but ``False``) when ready; returns ``False``
or raises when not. It runs on every ``/readyz`` call, so it must be quick and bounded
(a ``SELECT 1`` with a short timeout, not a migration check)."""


class ReadinessChecks:
    """The named checks ``GET /readyz`` runs after the knowledge check, in the order added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: list[tuple[str, ReadinessCheck]] = []

    def add(self, name: str, check: ReadinessCheck) -> None:
        """Run ``check`` on every ``/readyz`` call, reported under ``name``."""
        with self._lock:
            self._checks.append((name, check))

    def __iter__(self) -> Iterator[tuple[str, ReadinessCheck]]:
        with self._lock:
            return iter(list(self._checks))


@dataclass(frozen=True, eq=False)
class AppState:
    """What the views read (built by :func:`cds_service.app.create_app`).

    Attributes:
        settings: the validated settings.
        knowledge: the loaded, cross-checked knowledge.
        schemas: the compiled request JSON Schemas.
        fhir_client: fetches missing prefetch from allowlisted FHIR servers.
        render_options: the response options from the settings, without the per-request
            "Why this advice?" link builder (added by ``web.explain.render_options``).
        database: the audit, feedback and replay database.
        explain_links: signs and checks "Why this advice?" tokens.
        audit: where call records go (database, patient-hash key, failure counter).
        readiness: the checks ``/readyz`` runs besides the knowledge check.

    Compared and hashed by identity (``eq=False``): one state per app.
    """

    settings: Settings
    knowledge: Knowledge
    schemas: RequestSchemas
    fhir_client: FhirClient
    render_options: RenderOptions
    database: Database
    explain_links: ExplainLinks
    audit: AuditTrail
    readiness: ReadinessChecks


def state_of(app: Flask) -> AppState:
    """``app``'s state. Raises ``KeyError`` for an app not built by ``create_app``."""
    state = app.extensions[EXTENSION]
    if not isinstance(state, AppState):
        raise KeyError(EXTENSION)
    return state


def current_state() -> AppState:
    """The state of the app handling the current request (inside a request or app context)."""
    return state_of(current_app)
