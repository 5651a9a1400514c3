"""Regenerate fhir_fixtures/expected/<case>.json: the service's full response per 200 case.

Run after a deliberate change in behaviour, then READ the diff before committing: these
files are what tests/test_engine_cases.py holds the service to. Ids come from a counter
(00000000-0000-4000-8000-000000000001, ...) so the files are stable.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cds_service.decision.knowledge import load_knowledge  # noqa: E402
from cds_service.decision.render import RenderOptions  # noqa: E402
from cds_service.pipeline import evaluate  # noqa: E402
from cds_service.protocol.errors import RequestError  # noqa: E402
from cds_service.protocol.request import load_request_schemas  # noqa: E402


def counter_ids():
    n = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(n):012d}"


def expected_response(knowledge, schemas, body):
    try:
        out = evaluate(knowledge, schemas, body, service_id="vcf-order-select",
                       options=RenderOptions(new_id=counter_ids()))
    except RequestError as exc:
        return {"status": exc.status, "body": exc.to_operation_outcome()}
    return {"status": 200, "body": out.rendered.response}


def main() -> int:
    knowledge, schemas = load_knowledge(), load_request_schemas()
    cases = json.loads((HERE / "cases.json").read_text(encoding="utf-8"))
    out_dir = HERE / "expected"
    out_dir.mkdir(exist_ok=True)
    for case in cases:
        body = json.loads((HERE / case["file"]).read_text(encoding="utf-8"))
        result = expected_response(knowledge, schemas, body)
        (out_dir / f"{case['id']}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
    print(f"wrote {len(cases)} expected responses to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
