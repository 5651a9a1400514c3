"""Measure what the audit record adds to a hook call.

Posts one fixture request N times through the app (Flask test client) and times the audit
write of each call (``record_outcome``: building the rows and the one transaction), and
the whole call. Embedded SQLite in a temporary DATA_DIR by default; ``--database-url``
(and ``VCF_CDS_AUDIT_HMAC_KEY`` or a built-in test key) for another, already migrated, database.

    .venv/bin/python scripts/bench_audit.py [--calls 500] [--request fhir_fixtures/requests/...json]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.app import create_app, state_of  # noqa: E402
from cds_service.web import hooks as api  # noqa: E402


def _summary(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return (f"{name:<26} median {statistics.median(ms):7.3f} ms   p95 {p(0.95):7.3f} ms   "
            f"p99 {p(0.99):7.3f} ms   max {ms[-1]:7.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--request", default=str(ROOT / "fhir_fixtures/requests/seed-004-coagulopathy.json"))
    parser.add_argument("--database-url", help="default: embedded SQLite in a temporary directory")
    args = parser.parse_args()
    logging.disable(logging.INFO)

    with tempfile.TemporaryDirectory() as tmp:
        config = {"DATA_DIR": tmp, "AUTH": "off"}  # in-process calls: no CDS Client in front
        if args.database_url:
            config.update(DATABASE_URL=args.database_url,
                          AUDIT_HMAC_KEY=os.environ.get("VCF_CDS_AUDIT_HMAC_KEY", "bench-key-" + "x" * 32))
        app = create_app(config)
        client = app.test_client()
        body = Path(args.request).read_bytes()

        audit_ms: list[float] = []
        real_record = api.record_outcome

        def timed_record(*a, **kw):
            t = time.perf_counter()
            real_record(*a, **kw)
            audit_ms.append((time.perf_counter() - t) * 1000)

        api.record_outcome = timed_record
        call_ms: list[float] = []
        for n in range(args.calls + 20):
            t = time.perf_counter()
            resp = client.post("/cds-services/vcf-order-select", data=body, content_type="application/json")
            if n >= 20:  # the first calls warm caches and the connection pool
                call_ms.append((time.perf_counter() - t) * 1000)
            assert resp.status_code == 200, resp.status_code
        api.record_outcome = real_record
        audit_ms = audit_ms[20:]

        db = state_of(app).database
        failures = state_of(app).audit.failures.value
        print(f"{args.calls} calls of {Path(args.request).name} on {db.backend} "
              f"({'embedded file' if db.embedded else 'configured URL'}), audit failures: {failures}")
        print(_summary("audit write per call", audit_ms))
        print(_summary("whole hook call", call_ms))
        print(f"audit share of the call (median): {100 * statistics.median(audit_ms) / statistics.median(call_ms):.1f}%")
        db.dispose()
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
