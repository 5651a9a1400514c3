"""Flask application factory (the public entry point for tools outside the repo)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from cds_service.decision.knowledge import load_knowledge
from cds_service.decision.render import RenderOptions
from cds_service.fhir.client import FhirClient
from cds_service.protocol.request import load_request_schemas
from cds_service.security.links import ExplainLinks, link_secret
from cds_service.security.replay import FallbackReplayCache, MemoryReplayCache
from cds_service.settings import Settings
from cds_service.store.audit import load_hmac_key
from cds_service.store.db import DatabaseReplayCache, open_database
from cds_service.web.health import bp as health_bp
from cds_service.web.health import register_readiness_check
from cds_service.web.instrumentation import init_app as init_observability
from cds_service.web.security import install_security

log = logging.getLogger("cds_service")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the CDS Hooks app.

    ``config`` keys are setting names in upper case (``KNOWLEDGE_DIR``, ``MAX_BODY_BYTES``,
    ``ARGONAUT_SYSTEM_ACTIONS``, ``QCDSM``, ``MAX_JSON_DEPTH``, ``FHIR_ALLOWLIST`` ...; see
    :class:`cds_service.settings.Settings`); without ``config`` they come
    from ``VCF_CDS_*`` environment variables. Knowledge is loaded and cross-checked once here.

    Raises :class:`cds_service.decision.knowledge.KnowledgeError` (bad knowledge, naming file and
    entry) or :class:`cds_service.settings.SettingsError` (bad setting): the app does not start.
    The embedded SQLite database is migrated here (:class:`cds_service.store.db.DatabaseError` if
    that fails); a configured ``DATABASE_URL`` is only checked, and a database that is down
    or behind is logged, not fatal: hooks are still answered (see ``cds_service.store.audit``).
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
        "render_options": RenderOptions(argonaut_copy=settings.argonaut_system_actions, qcdsm=settings.qcdsm,
                                        pama_official_only=settings.pama_official_only),
        "db": database,
        "audit_key": load_hmac_key(settings),
        "audit_failures": 0,
    }
    state = app.extensions["vcf_cds"]
    state["explain_links"] = ExplainLinks(link_secret(settings, state["audit_key"]), settings.explain_link_ttl_seconds)
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
    register_readiness_check(app, "database", database.ping)
    init_observability(app)
    log.info("knowledge %s loaded from %s: %d variants, %d value sets", knowledge.version, knowledge.directory,
             len(knowledge.variants), len(knowledge.terminology.valuesets))
    return app
