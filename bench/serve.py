"""``vcf-cds serve`` under another gunicorn worker class, for bench/run.py ``--servers``.

Everything as ``vcf-cds serve`` does it (settings, warm-up, gc.freeze, hooks), with gunicorn's
worker class and threads from the command line instead of the service's sync worker:

    python bench/serve.py --port 18092 --workers 2 --worker-class gthread --threads 4
"""

from __future__ import annotations

import argparse
from typing import Any

from floor import server_arguments, worker_options

import cds_service.ops.server as server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    server_arguments(parser)
    args = parser.parse_args()
    options = server.gunicorn_options

    def with_worker(**kwargs: Any) -> dict[str, Any]:
        return {**options(**kwargs), **worker_options(args)}

    server.gunicorn_options = with_worker  # serve() looks it up when it runs
    server.serve(host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
