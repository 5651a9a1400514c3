"""Metrics (Prometheus), structured JSON logs (structlog) and request timing.

Metrics use prometheus-client. Under ``vcf-cds serve`` (gunicorn, several worker processes)
they run in multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set before prometheus-client
is first imported (it picks its value store at import time), every process writes its own
files there, and ``/metrics`` merges them. Without that variable (Flask test client,
``vcf-cds evaluate``) the default single-process registry is used. For that reason nothing in
this package imports prometheus-client at module level: the metric objects are created on
first use, by :func:`get_metrics`.

Labels are small closed sets (route, method, status, PAMA rating code, ACR variant id, card
indicator and kind, prefetch key, fetch outcome); never a URL, a patient or a token.

Logs: every ``logging`` record of the package (and of gunicorn) and every structlog event is
rendered as one JSON object per line by :func:`logging_config`. The request id is the
CDS Hooks ``hookInstance`` (bound by :func:`bind_request_id`); a value that is not a UUID is
logged as a hash, since the field is free text to a careless client.
"""

from __future__ import annotations

import hashlib
import logging
import logging.config
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

import structlog

__all__ = [
    "MULTIPROC_ENV",
    "Metrics",
    "bind_request_id",
    "configure_logging",
    "configure_structlog",
    "count_audit_write_failure",
    "get_metrics",
    "logging_config",
    "observe_fhir_fetch",
    "observe_outcome",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. The service answers in milliseconds; FHIR fetches take up to the fetch budget.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
_UUID_RE = re.compile(r"(urn:uuid:)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")



# --------------------------------------------------------------------------- metrics


class Metrics:
    """The service's metric objects (prometheus-client), registered in ``registry``
    (default: the process-wide registry).

    Attributes:
        requests: counter ``vcf_cds_http_requests_total{endpoint, method, status}``.
        request_seconds: histogram ``vcf_cds_http_request_duration_seconds{endpoint, method, status}``.
        ratings: counter ``vcf_cds_ratings_total{code, variant}`` (PAMA rating code, ACR variant id).
        cards: counter ``vcf_cds_cards_total{indicator, kind}``.
        fhir_fetch_seconds: histogram ``vcf_cds_fhir_fetch_duration_seconds{prefetch_key, outcome}``.
        fhir_fetch_failures: counter ``vcf_cds_fhir_fetch_failures_total{prefetch_key, outcome}``.
        audit_write_failures: counter ``vcf_cds_audit_write_failures_total``.
    """

    def __init__(self, registry: Any = None):
        from prometheus_client import REGISTRY, Counter, Histogram

        reg = REGISTRY if registry is None else registry
        http = ["endpoint", "method", "status"]
        self.requests = Counter("vcf_cds_http_requests_total", "HTTP requests answered, by route, method and status",
                                http, registry=reg)
        self.request_seconds = Histogram("vcf_cds_http_request_duration_seconds",
                                         "Time from request start to response, by route, method and status",
                                         http, buckets=_REQUEST_BUCKETS, registry=reg)
        self.ratings = Counter("vcf_cds_ratings_total", "Orders rated, by PAMA rating code and ACR variant id",
                               ["code", "variant"], registry=reg)
        self.cards = Counter("vcf_cds_cards_total", "Cards returned, by indicator and card kind",
                             ["indicator", "kind"], registry=reg)
        self.fhir_fetch_seconds = Histogram(
            "vcf_cds_fhir_fetch_duration_seconds",
            "Time to fetch one prefetch key from the EHR's FHIR server, by key and outcome (ok, timeout, error)",
            ["prefetch_key", "outcome"], buckets=_FETCH_BUCKETS, registry=reg)
        self.fhir_fetch_failures = Counter(
            "vcf_cds_fhir_fetch_failures_total",
            "Prefetch keys that could not be fetched, by key and outcome (timeout, error, not-allowed, unfillable)",
            ["prefetch_key", "outcome"], registry=reg)
        self.audit_write_failures = Counter("vcf_cds_audit_write_failures_total",
                                            "Audit records that could not be written", registry=reg)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: the label sets are small closed sets (see module
        doc), and a dict lookup spares prometheus-client's lock and label checks on every call."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def get_metrics() -> Metrics:
    """The process-wide :class:`Metrics`, created on first call (after ``vcf-cds serve`` has
    set ``PROMETHEUS_MULTIPROC_DIR``)."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def observe_outcome(outcome: Any) -> None:
    """Count the ratings and cards of one answered hook call.

    ``outcome`` is a :class:`cds_service.decision.outcome.Outcome`: ratings by PAMA code and ACR
    variant id (``none`` without a variant), cards by indicator and kind.
    """
    m = get_metrics()
    for od in outcome.decision.orders:
        if od.pama is not None:
            m.child(m.ratings, od.pama, od.variant.id if od.variant is not None else "none").inc()
    kinds = outcome.rendered.card_kinds
    for card in outcome.rendered.response["cards"]:
        m.child(m.cards, card["indicator"], kinds.get(card["uuid"], "unknown")).inc()


def observe_fhir_fetch(prefetch_key: str, outcome: str, seconds: float | None = None) -> None:
    """Record one prefetch key fetched from the EHR's FHIR server.

    ``outcome``: ``ok``, ``timeout``, ``error`` (with ``seconds``, the time spent on the key),
    or ``not-allowed`` / ``unfillable`` (refused before any request; no duration). Every
    outcome but ``ok`` also counts as a failure.
    """
    m = get_metrics()
    if seconds is not None:
        m.fhir_fetch_seconds.labels(prefetch_key, outcome).observe(seconds)
    if outcome != "ok":
        m.fhir_fetch_failures.labels(prefetch_key, outcome).inc()


def count_audit_write_failure() -> None:
    """Count one audit record that could not be written (for the audit trail's writer)."""
    get_metrics().audit_write_failures.inc()


# ------------------------------------------------------------------------------ logs

def _add_pid(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["pid"] = os.getpid()  # which gunicorn worker
    return event


# Added to every event, from structlog or from the standard library.
_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    _add_pid,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(ensure_ascii=False)],
    )


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` mapping: one stderr handler rendering every record
    as a JSON line; gunicorn's error log goes through it, its access log is off (the app logs
    one ``request`` event per request instead)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": _json_formatter}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }


def configure_structlog() -> None:
    """Route structlog events through the standard library (so one handler renders both,
    and pytest's caplog sees them). Idempotent."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_SHARED_PROCESSORS,
                    structlog.stdlib.PositionalArgumentsFormatter(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the whole process (``vcf-cds serve``).

    The JSON lines carry no source location, thread or process name (the worker is ``pid``),
    so the standard library is told not to gather them for each record (the logging HOWTO's
    "Optimization" settings): a few microseconds of every line, two lines per hook call.
    """
    configure_structlog()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # documented in the HOWTO: skips findCaller
    logging.config.dictConfig(logging_config(level))


def bind_request_id(body: Any) -> None:
    """Bind the request body's ``hookInstance`` as ``hook_instance`` to every log event of
    this request (CDS Hooks 2.0: a UUID per hook call). A value that is not a UUID is logged
    as ``sha256:<16 hex>`` so that it still correlates but cannot carry patient data."""
    value = body.get("hookInstance") if isinstance(body, Mapping) else None
    if not isinstance(value, str):
        return
    if not _UUID_RE.fullmatch(value):
        value = "sha256:" + hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:16]
    structlog.contextvars.bind_contextvars(hook_instance=value)
