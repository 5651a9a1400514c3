"""``vcf-cds`` command line: serve, evaluate a request file, print the knowledge."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import RequestError
from .fhir_input import load_request_schemas
from .knowledge import CATEGORY_DISPLAY, KnowledgeError, load_knowledge
from .pipeline import evaluate
from .render import RenderOptions
from .settings import Settings, SettingsError


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    serve(host=args.host, port=args.port, workers=args.workers)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    settings = Settings.load()
    knowledge = load_knowledge(settings.knowledge_dir)
    try:
        body = json.loads(Path(args.request).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.request}: {exc}", file=sys.stderr)
        return 2
    try:
        out = evaluate(knowledge, load_request_schemas(), body, service_id=args.service,
                       options=RenderOptions(argonaut_copy=settings.argonaut_system_actions, qcdsm=settings.qcdsm),
                       max_depth=settings.max_json_depth)
    except RequestError as exc:
        if args.json:
            print(json.dumps(exc.to_operation_outcome(), indent=2))
        else:
            print(f"HTTP {exc.status} ({exc.code}): {exc.diagnostic}")
        return 1
    if args.json:
        print(json.dumps(out.rendered.response, indent=2, ensure_ascii=False))
        return 0
    for od in out.decision.orders:
        proc = od.order_class.procedure
        code = (od.order_class.coding or {}).get("code", "?")
        print(f"Order {od.ref}: {proc.display if proc else 'not in scope'} (code {code})")
        if od.choice is not None:
            v = od.variant
            print(f"  scenario: {od.choice.status}" + (f", ACR variant {v.id}: {v.title}" if v else ""))
            for gap in od.choice.missing:
                print(f"  missing: {' and '.join(knowledge.fact_label(f) for f in gap)}")
        if od.rating is not None:
            print(f"  rating: {od.rating.category_display} [{od.rating.provenance}] -> PAMA {od.pama}")
        elif od.pama:
            print(f"  rating: PAMA {od.pama}")
        else:
            print("  rating: none")
        for fact, evs in od.facts.evidence.items():
            if fact in knowledge.facts:
                for e in evs:
                    print(f"  fact {fact}: {e.system.rsplit('/', 1)[-1]} {e.code} from {e.resource}")
    for card in out.rendered.response["cards"]:
        print(f"[{card['indicator']}] {card['summary']}")
        for s in card.get("suggestions", ()):
            print(f"    suggestion: {s['label']}" + (" (recommended)" if s.get("isRecommended") else ""))
    if not out.rendered.response["cards"]:
        print("(no cards)")
    for issue in out.request.issues:
        print(f"skipped {issue.location}: {issue.diagnostic}")
    return 0


def _knowledge(args: argparse.Namespace) -> int:
    k = load_knowledge(args.dir or Settings.load().knowledge_dir)
    print(f"Knowledge {k.version} from {k.directory}")
    rows = [("variant", "procedure", "rating", "score", "RRL", "provenance")]
    for topic in k.topics:
        print(f"\n{topic.title} (revised {topic.revised}) {topic.url}")
        for v in topic.variants:
            flag = "" if v.titleConfirmed else " [title unconfirmed]"
            print(f"  {v.id}: {v.title}{flag}")
        for v in topic.variants:
            for r in v.ratings:
                rows.append((v.id, k.procedures[r.procedure].display, CATEGORY_DISPLAY[r.category],
                             "" if r.score is None else str(r.score), r.rrl or "", r.provenance))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vcf-cds`` console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="vcf-cds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the service under gunicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.set_defaults(func=_serve)
    p = sub.add_parser("evaluate", help="evaluate an order-select request file")
    p.add_argument("request", help="request body JSON file")
    p.add_argument("--json", action="store_true", help="print the raw CDS Hooks response")
    p.add_argument("--service", default="vcf-order-select")
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("knowledge", help="print the loaded variants, ratings and provenance")
    p.add_argument("--dir", help="knowledge directory (default: setting or bundled)")
    p.set_defaults(func=_knowledge)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (KnowledgeError, SettingsError) as exc:
        print(f"vcf-cds: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
