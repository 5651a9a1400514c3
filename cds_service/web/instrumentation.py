"""Request timing, per-request metrics and the access log for the Flask app, and ``GET /metrics``.

The metric objects and log configuration live in :mod:`cds_service.observability` (no Flask);
this module is their Flask side. Labels are the route (never the path, which is free text),
the method and the status.
"""

from __future__ import annotations

import os
import time
from typing import Any

import structlog
from flask import Flask, Response, request

from cds_service.observability import MULTIPROC_ENV, configure_structlog, get_metrics

__all__ = ["init_app", "metrics_response"]

_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

access_log = structlog.get_logger("cds_service.access")


def metrics_response() -> Response:
    """The Prometheus text exposition of every metric (all worker processes under gunicorn)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


_STARTED = "vcf_cds.started"


def _timed(wsgi_app: Any) -> Any:
    """Wrap the WSGI app: start the clock and clear the previous request's log context
    before anything else runs (another extension's before_request hook may log, or answer
    without calling the app's views)."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        environ[_STARTED] = time.perf_counter()
        return wsgi_app(environ, start_response)

    return app


def _finisher(metrics_enabled: bool) -> Any:
    def finish(response: Response) -> Response:
        seconds = time.perf_counter() - request.environ[_STARTED]
        # The route, not the path: a path is free text and would make unbounded label values.
        endpoint = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        method = request.method if request.method in _METHODS else "other"  # clients may send any token
        if metrics_enabled:  # nobody can read them otherwise
            m = get_metrics()
            status = str(response.status_code)
            m.child(m.requests, endpoint, method, status).inc()
            m.child(m.request_seconds, endpoint, method, status).observe(seconds)
        # Probes and scrapes come every few seconds; their lines would drown the hook calls.
        log = access_log.debug if endpoint in _PROBES else access_log.info
        log("request", method=method, endpoint=endpoint, status=response.status_code,
            duration_ms=round(seconds * 1000, 2))
        return response

    return finish


def init_app(app: Flask, *, metrics_enabled: bool = True) -> None:
    """Register request timing, the access log and, when ``metrics_enabled`` (the
    ``METRICS_ENABLED`` setting), the HTTP request metrics and ``GET /metrics`` on ``app``
    (called by ``create_app``). The access log and metrics see the response as sent: their
    hook runs after every other ``after_request`` hook (one may still replace the response,
    as the ``jti`` check of :mod:`cds_service.web.security` does)."""
    configure_structlog()
    get_metrics()  # created before gunicorn forks, so every worker shares the definitions
    app.wsgi_app = _timed(app.wsgi_app)  # type: ignore[method-assign]
    # Flask runs after_request hooks last-registered first: first in the list runs last.
    app.after_request_funcs.setdefault(None, []).insert(0, _finisher(metrics_enabled))
    if metrics_enabled:
        app.add_url_rule("/metrics", "metrics", metrics_response, methods=["GET"])
