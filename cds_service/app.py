"""Flask application factory (the public entry point for tools outside the repo)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask

from .audit import load_hmac_key
from .db import DatabaseReplayCache, open_database
from .explain_links import ExplainLinks, link_secret
from .fhir_client import FhirClient
from .fhir_input import load_request_schemas
from .health import bp as health_bp
from .health import register_readiness_check
from .knowledge import load_knowledge
from .observability import init_app as init_observability
from .render import RenderOptions
from .replay import FallbackReplayCache, MemoryReplayCache
from .security import install_security
from .settings import Settings

log = logging.getLogger("cds_service")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the CDS Hooks app.

    ``config`` keys are setting names in upper case (``KNOWLEDGE_DIR``, ``MAX_BODY_BYTES``,
    ``ARGONAUT_SYSTEM_ACTIONS``, ``QCDSM``, ``MAX_JSON_DEPTH``, ``FHIR_ALLOWLIST`` ...; see
    :class:`cds_service.settings.Settings`); without ``config`` they come
    from ``VCF_CDS_*`` environment variables. Knowledge is loaded and cross-checked once here.

    Raises :class:`cds_service.knowledge.KnowledgeError` (bad knowledge, naming file and
    entry) or :class:`cds_service.settings.SettingsError` (bad setting): the app does not start.
    The embedded SQLite database is migrated here (:class:`cds_service.db.DatabaseError` if
    that fails); a configured ``DATABASE_URL`` is only checked, and a database that is down
    or behind is logged, not fatal: hooks are still answered (see ``cds_service.audit``).
    """
    settings = Settings.load(config)
    knowledge = load_knowledge(settings.knowledge_dir)
    database = open_database(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["vcf_cds"] = {
        "settings": settings,
        "knowledge": knowledge,
        "schemas": load_request_schemas(),
        "fhir_client": FhirClient(settings.fetch_policy()),
        "render_options": RenderOptions(argonaut_copy=settings.argonaut_system_actions, qcdsm=settings.qcdsm),
        "db": database,
        "audit_key": load_hmac_key(settings),
        "audit_failures": 0,
    }
    state = app.extensions["vcf_cds"]
    state["explain_links"] = ExplainLinks(link_secret(settings, state["audit_key"]), settings.explain_link_ttl_seconds)
    from .api import bp
    from .explain_page import bp as explain_bp
    from .feedback import bp as feedback_bp
    from .openapi import bp as openapi_bp

    app.register_blueprint(bp)
    app.register_blueprint(feedback_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(explain_bp)
    # The one place the jti replay cache is chosen: the database, shared by every worker and
    # host, with a per-process cache standing in while the database cannot answer.
    install_security(app, settings, replay_cache=FallbackReplayCache(DatabaseReplayCache(database), MemoryReplayCache()))
    app.register_blueprint(health_bp)
    register_readiness_check(app, "database", database.ping)
    init_observability(app)
    log.info("knowledge %s loaded from %s: %d variants, %d value sets", knowledge.version, knowledge.directory,
             len(knowledge.variants), len(knowledge.terminology.valuesets))
    return app
