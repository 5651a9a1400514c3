"""Flask application factory (the public entry point for tools outside the repo)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask

from .fhir_client import FhirClient
from .fhir_input import load_request_schemas
from .health import bp as health_bp
from .knowledge import load_knowledge
from .observability import init_app as init_observability
from .render import RenderOptions
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
    """
    settings = Settings.load(config)
    knowledge = load_knowledge(settings.knowledge_dir)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["vcf_cds"] = {
        "settings": settings,
        "knowledge": knowledge,
        "schemas": load_request_schemas(),
        "fhir_client": FhirClient(settings.fetch_policy()),
        "render_options": RenderOptions(argonaut_copy=settings.argonaut_system_actions, qcdsm=settings.qcdsm),
    }
    from .api import bp

    app.register_blueprint(bp)
    app.register_blueprint(health_bp)
    init_observability(app)
    log.info("knowledge %s loaded from %s: %d variants, %d value sets", knowledge.version, knowledge.directory,
             len(knowledge.variants), len(knowledge.terminology.valuesets))
    return app
