"""A loopback EHR FHIR server for the benchmark's no-prefetch scenario.

Serves the prefetch of a request body (fhir_fixtures/ehr_server.py: read, search, paging,
bearer token) under gunicorn with threads, so the service's three fetches per call are not
queued behind one another. Run by bench/run.py:

    python bench/ehr.py --port 18091 --request fhir_fixtures/bench/typical-request.json --token T
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fhir_fixtures"))
from ehr_server import without_prefetch  # noqa: E402

from cds_service.ops.server import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--request", type=Path, required=True, help="request body whose prefetch is served")
    parser.add_argument("--token", required=True, help="bearer token the server requires")
    args = parser.parse_args()
    body = json.loads(args.request.read_text(encoding="utf-8"))
    _, server = without_prefetch(body, fhir_server=f"http://127.0.0.1:{args.port}/fhir", token=args.token)
    server.seen = _Discard()
    run(server.wsgi, {"bind": f"127.0.0.1:{args.port}", "workers": 1, "worker_class": "gthread", "threads": 8,
                      "control_socket_disable": True, "loglevel": "warning"})


class _Discard(list):
    """EhrFhirServer records every request for tests; a benchmark run would only grow it."""

    def append(self, item: object) -> None:
        pass


if __name__ == "__main__":
    main()
