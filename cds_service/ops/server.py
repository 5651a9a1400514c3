"""Production serving: ``vcf-cds serve`` runs the app under gunicorn.

gunicorn sync workers (one request at a time per process, default one per core); the app
preloaded in the master, so knowledge is loaded and checked once before forking; a warm-up
in the master (every FHIR model class the service validates imported, one built-in request
evaluated) whose result the workers inherit, then ``gc.freeze()`` so that the objects the
workers share with the master stay shared, and the young-generation collection threshold
raised (:data:`GC_YOUNG_THRESHOLD`) so that a call rarely pays for one; each worker repeats the warm-up in the
``post_fork`` hook, before it accepts a connection; graceful shutdown on SIGTERM (workers
finish their request within ``graceful_timeout``); Prometheus multiprocess metrics:
``PROMETHEUS_MULTIPROC_DIR`` is a fresh temporary directory per start (removed at exit)
unless the environment names one, and the ``child_exit`` hook marks dead workers (as
prometheus-client requires for live gauges).

Errors gunicorn answers itself (a malformed request line or header, headers too large, a
request line too long, an unknown Transfer-Encoding) get a JSON OperationOutcome, and the log
names only the error's type: gunicorn's own handler answers HTML and logs the whole request
line, which can carry the signed token of a "Why this advice?" link (:class:`JsonErrorWorker`).
What gunicorn cannot answer (a connection that never completes its headers) is for the
buffering front (deploy/nginx/vcf-cds.conf): sync workers must not face clients directly.

:func:`gunicorn_options` holds the gunicorn settings, so the benchmark runs its no-op floor
app under exactly the same ones.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import os
import shutil
import tempfile
import time
import typing
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

from gunicorn.workers.sync import SyncWorker

from cds_service.observability import MULTIPROC_ENV, configure_logging, logging_config
from cds_service.pipeline import evaluate
from cds_service.protocol.errors import operation_outcome

__all__ = ["WARM_UP_REQUEST", "JsonErrorWorker", "gunicorn_options", "load_fhir_models", "run", "serve", "warm_up"]

GC_YOUNG_THRESHOLD = 20_000
"""Allocations (net) between two young-generation collections in a serving process (Python's default: 700)."""

log = logging.getLogger("cds_service.ops.server")

GRACEFUL_TIMEOUT_SECONDS = 10

# One order-select call touching every resource type the service validates (Patient,
# Condition, Procedure, ServiceRequest, DiagnosticReport, MedicationRequest, Observation) and
# the fact, report reading, decision and rendering paths. Made up;
# identifies nobody. Kept as data (warmup/order-select-request.json), like every code.
WARM_UP_REQUEST: Mapping[str, Any] = json.loads(
    resources.files("cds_service.ops").joinpath("warmup", "order-select-request.json").read_text(encoding="utf-8"))


# The resource types the service validates (prefetch and the draft orders it rates).
WARM_UP_RESOURCE_TYPES = ("Patient", "Condition", "Procedure", "ServiceRequest", "DiagnosticReport",
                          "MedicationRequest", "MedicationStatement", "Medication", "Observation")


def load_fhir_models(resource_types: Sequence[str] = WARM_UP_RESOURCE_TYPES) -> int:
    """Import every fhir.resources R4B model class reachable from the fields of these
    resource types; returns how many. fhir.resources imports the class of a complex
    element (HumanName, Meta, Annotation ...) only when a resource first carries one, which
    costs 5-20 ms each in the request that does; after this call no request does.
    """
    from fhir.resources.R4B import get_fhir_model_class

    seen: set[type] = set()

    def element_types(annotation: Any) -> Iterator[Any]:
        if hasattr(annotation, "get_model_klass"):  # fhir_core's lazy reference to a model class
            yield annotation
        for arg in typing.get_args(annotation):
            yield from element_types(arg)

    def walk(model: Any) -> None:
        if model in seen:
            return
        seen.add(model)
        for info in model.model_fields.values():
            for element_type in element_types(info.annotation):
                walk(element_type.get_model_klass())

    for name in resource_types:
        walk(get_fhir_model_class(name))
    return len(seen)


def warm_up(app: Flask) -> float:
    """Load the FHIR model classes (:func:`load_fhir_models`) and evaluate
    :data:`WARM_UP_REQUEST` with ``app``'s knowledge and settings, without HTTP, metrics or
    logs; returns the seconds it took. The first validation of each FHIR resource type in a
    process costs tens of milliseconds (fhir.resources builds its validators lazily), and the
    first radiology report read builds the report reader (spaCy and medspaCy's ConText, about
    2 s): the request's report sentence moves both costs before the first real request, and
    into the master, whose workers share the result.

    Raises whatever the evaluation raises: a service that cannot answer its own warm-up
    request must not take traffic.
    """
    started = time.perf_counter()
    load_fhir_models()
    from cds_service.app import state_of

    st = state_of(app)
    service_id = next(s.id for s in st.knowledge.services.values() if s.hook == "order-select")
    outcome = evaluate(st.knowledge, st.schemas, copy.deepcopy(dict(WARM_UP_REQUEST)), service_id=service_id,
                       options=st.render_options, max_depth=st.settings.max_json_depth)
    json.dumps(outcome.rendered.response)
    return time.perf_counter() - started


# gunicorn's parse errors (gunicorn.http.errors, by class name: stable across its versions)
# -> (HTTP status, reason phrase, FHIR IssueType, diagnostic). Anything else is a 500.
_PARSE_ERRORS = {
    "LimitRequestLine": (414, "URI Too Long", "too-long", "the request line is longer than this service accepts"),
    "LimitRequestHeaders": (431, "Request Header Fields Too Large", "too-long",
                            "the request headers are larger or more numerous than this service accepts"),
    "UnsupportedTransferCoding": (501, "Not Implemented", "not-supported",
                                  "the Transfer-Encoding of the request is not supported"),
    "ExpectationFailed": (417, "Expectation Failed", "not-supported", "the Expect header cannot be met"),
    "ForbiddenProxyRequest": (403, "Forbidden", "processing", "request forbidden"),
}
_BAD_REQUEST = (400, "Bad Request", "structure", "the request is not well-formed HTTP/1.1")


class JsonErrorWorker(SyncWorker):
    """gunicorn's sync worker, answering the errors gunicorn handles itself (it never reached
    the app) with a JSON OperationOutcome instead of an HTML page, and logging only the
    error's type and status: never the request line or a header (a link's token, a bearer
    token). Statuses as gunicorn's: 400 malformed, 414 request line too long, 431 headers
    too large, 501 unknown Transfer-Encoding, 500 anything else."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Write the JSON error response to ``client`` (the connection is closed afterwards)."""
        name = type(exc).__name__
        parse_error = any(cls.__module__ == "gunicorn.http.errors" for cls in type(exc).__mro__)
        if parse_error and name != "ConfigurationProblem":
            status, reason, code, text = _PARSE_ERRORS.get(name, _BAD_REQUEST)
            self.log.warning("invalid request answered %d (%s)", status, name)
        else:
            status, reason, code, text = 500, "Internal Server Error", "exception", "internal error"
            self.log.error("error handling a request (%s)", name)
        body = json.dumps(operation_outcome(status, code, text)).encode("utf-8")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(OSError):  # the client is gone
            client.sendall(head.encode("ascii") + body)


def gunicorn_options(*, host: str, port: int, workers: int, timeout: int = 30,
                     log_level: str = "INFO") -> dict[str, Any]:
    """The gunicorn settings (names as in gunicorn's documentation) of the service and of the
    benchmark's floor: sync workers answering their own errors as JSON (:class:`JsonErrorWorker`),
    preloaded app, graceful shutdown, JSON logs, gunicorn's request-size limits (request line
    4094 bytes, 100 header fields of 8190 bytes at most)."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": JsonErrorWorker,
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "preload_app": True,
        "timeout": timeout,
        "graceful_timeout": GRACEFUL_TIMEOUT_SECONDS,
        "logconfig_dict": logging_config(log_level),
        # gunicorn >= 25.1 opens a control socket at one path per user by default, so two
        # servers of one user (the service and the benchmark's floor) would fight over it;
        # signals are all the control this service needs.
        "control_socket_disable": True,
    }


def run(app: Any, options: Mapping[str, Any]) -> None:
    """Serve the WSGI ``app`` under gunicorn with ``options`` (from :func:`gunicorn_options`
    plus server hooks such as ``post_fork``). Returns only through ``SystemExit``."""
    from gunicorn.app.base import BaseApplication

    class _Application(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if key == "control_socket_disable" and key not in self.cfg.settings:
                    continue  # gunicorn < 25.1: no control socket
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    _Application().run()


def _metrics_dir() -> tuple[str, bool]:
    """(directory, made here) for prometheus-client's multiprocess files. Must run before
    prometheus-client is imported: it reads the variable at import time."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        return given, False
    made = tempfile.mkdtemp(prefix="vcf-cds-metrics-")
    os.environ[MULTIPROC_ENV] = made
    return made, True


def serve(*, host: str, port: int, workers: int) -> None:
    """``vcf-cds serve``: build the app from ``VCF_CDS_*`` settings and serve it.

    Raises :class:`cds_service.decision.knowledge.KnowledgeError` or
    :class:`cds_service.settings.SettingsError` before anything listens; otherwise returns
    only through ``SystemExit`` when gunicorn stops (SIGTERM / SIGINT: graceful).
    """
    metrics_dir, made = _metrics_dir()
    # Imported after _metrics_dir: see the observability module docstring.
    from cds_service.app import create_app
    from cds_service.settings import Settings

    try:
        settings = Settings.load()
        configure_logging(settings.log_level)
        app = create_app()
    except BaseException:
        # Not started: leave no temporary directory, nor a variable pointing at it, behind.
        if made:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)
        raise
    log.info("metrics directory %s (%s)", metrics_dir, "temporary" if made else "given")
    log.info("warm-up in the master took %.1f ms", warm_up(app) * 1000)
    # Everything built so far (knowledge, validators, modules) lives as long as the process:
    # keep it out of the collector's reach, so a full collection in a worker does not walk
    # it, nor write to (and so copy) the pages the workers share with the master.
    gc.collect()
    gc.freeze()
    # A hook call allocates a few thousand container objects and frees nearly all of them by
    # reference counting; with the default threshold of 700 nearly every call paid a young
    # collection (0.07 ms of 3.8 ms in process). Every 20,000 net allocations the young
    # generation is collected: about once in ten calls, the same garbage cycles found later.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])

    def post_fork(server: Any, worker: Any) -> None:
        log.info("worker %d warmed up in %.1f ms", worker.pid, warm_up(app) * 1000)

    def child_exit(server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    def on_exit(server: Any) -> None:
        if made:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    options = gunicorn_options(host=host, port=port, workers=workers, log_level=settings.log_level,
                               timeout=max(30, int(settings.fhir_budget_seconds) + 10))
    run(app, {**options, "post_fork": post_fork, "child_exit": child_exit, "on_exit": on_exit})
