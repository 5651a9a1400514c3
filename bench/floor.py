"""The benchmark's floor: a no-op Flask endpoint under the service's own gunicorn settings.

``POST /cds-services/<service_id>`` reads the request body and answers ``{"cards": []}``:
what any Flask app on this server costs before doing any work. Run by bench/run.py:

    python bench/floor.py --port 18090 --workers 2 [--worker-class gthread --threads 4]
"""

from __future__ import annotations

import argparse
from typing import Any

from flask import Flask, Response, request

from cds_service.ops.server import gunicorn_options, run


def floor_app() -> Flask:
    """A Flask app with one no-op CDS service endpoint."""
    app = Flask(__name__)

    @app.post("/cds-services/<service_id>")
    def call_service(service_id: str) -> Response:
        request.get_data(cache=False)
        return Response('{"cards":[]}', mimetype="application/json")

    @app.get("/readyz")
    def readyz() -> Response:
        return Response('{"status":"ready"}', mimetype="application/json")

    return app


def server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options bench/run.py starts the floor and the service with."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--worker-class", choices=["sync", "gthread"], default="sync",
                        help="sync: the service's own worker; gthread: gunicorn's threaded worker (keep-alive)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gthread worker")


def worker_options(args: argparse.Namespace) -> dict[str, Any]:
    """gunicorn settings replacing the service's sync worker when ``--worker-class`` asks."""
    if args.worker_class == "sync":
        return {}
    return {"worker_class": args.worker_class, "threads": args.threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    server_arguments(parser)
    args = parser.parse_args()
    run(floor_app(), {**gunicorn_options(host=args.host, port=args.port, workers=args.workers), **worker_options(args)})


if __name__ == "__main__":
    main()
