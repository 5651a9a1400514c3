"""The composition root: :func:`create_app` builds every long-lived object from the settings
and wires them into a Flask app (the public entry point for tools outside the repo).
:class:`AppState` and :func:`state_of` are re-exported from :mod:`cds_service.web.state`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from cds_service.decision.knowledge import Knowledge, load_knowledge
from cds_service.decision.render import RenderOptions
from cds_service.fhir.client import FhirClient
from cds_service.protocol.request import load_request_schemas
from cds_service.security.links import ExplainLinks, link_secret
from cds_service.security.replay import FallbackReplayCache, MemoryReplayCache
from cds_service.settings import Settings
from cds_service.store.audit import AuditTrail, load_hmac_key
from cds_service.store.db import Database, DatabaseReplayCache, open_database
from cds_service.web.health import bp as health_bp
from cds_service.web.instrumentation import init_app as init_observability
from cds_service.web.security import install_security
from cds_service.web.state import EXTENSION, AppState, ReadinessChecks, state_of

__all__ = ["AppState", "create_app", "state_of"]

log = logging.getLogger("cds_service")


def create_app(config: Mapping[str, Any] | None = None, *, knowledge: Knowledge | None = None,
               database: Database | None = None) -> Flask:
    """Build the CDS Hooks app; its :class:`AppState` is :func:`state_of` ``(app)``.

    ``config`` keys are setting names in upper case (``KNOWLEDGE_DIR``, ``MAX_BODY_BYTES``,
    ``ARGONAUT_SYSTEM_ACTIONS``, ``QCDSM``, ``MAX_JSON_DEPTH``, ``FHIR_ALLOWLIST`` ...; see
    :class:`cds_service.settings.Settings`); without ``config`` they come
    from ``VCF_CDS_*`` environment variables.

    ``knowledge``: already loaded knowledge to serve (``KNOWLEDGE_DIR`` is then not read);
    by default it is loaded and cross-checked here. ``database``: an open database to use
    as it is (the caller migrates and disposes of it); by default the configured one is
    opened here: the embedded SQLite database is migrated
    (:class:`cds_service.store.db.DatabaseError` if that fails); a configured
    ``DATABASE_URL`` is only checked, and a database that is down or behind is logged, not
    fatal: hooks are still answered (see ``cds_service.store.audit``).

    Raises :class:`cds_service.decision.knowledge.KnowledgeError` (bad knowledge, naming file and
    entry) or :class:`cds_service.settings.SettingsError` (bad setting): the app does not start.
    """
    settings = Settings.load(config)
    if knowledge is None:
        knowledge = load_knowledge(settings.knowledge_dir)
    if database is None:
        database = open_database(settings)
    audit_key = load_hmac_key(settings)
    state = AppState(
        settings=settings,
        knowledge=knowledge,
        schemas=load_request_schemas(),
        fhir_client=FhirClient(settings.fetch_policy()),
        render_options=RenderOptions(argonaut_copy=settings.argonaut_system_actions, qcdsm=settings.qcdsm,
                                     pama_official_only=settings.pama_official_only),
        database=database,
        explain_links=ExplainLinks(link_secret(settings, audit_key), settings.explain_link_ttl_seconds),
        audit=AuditTrail(database=database, key=audit_key, knowledge=knowledge),
        readiness=ReadinessChecks(),
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions[EXTENSION] = state
    from cds_service.web.explain import bp as explain_bp
    from cds_service.web.feedback import bp as feedback_bp
    from cds_service.web.hooks import bp
    from cds_service.web.openapi import bp as openapi_bp

    app.register_blueprint(bp)
    app.register_blueprint(feedback_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(explain_bp)
    # The one place the jti replay cache is chosen: the database, shared by every worker and
    # host, with a per-process cache standing in while the database cannot answer.
    install_security(app, settings, replay_cache=FallbackReplayCache(DatabaseReplayCache(database), MemoryReplayCache()))
    app.register_blueprint(health_bp)
    state.readiness.add("database", database.ping)
    init_observability(app, metrics_enabled=settings.metrics_enabled)
    log.info("knowledge %s loaded from %s: %d variants, %d value sets", knowledge.version, knowledge.directory,
             len(knowledge.variants), len(knowledge.terminology.valuesets))
    return app
