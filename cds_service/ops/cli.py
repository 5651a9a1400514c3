"""``vcf-cds`` command line: serve, evaluate a request file, print the knowledge."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

from cds_service.decision.knowledge import CATEGORY_DISPLAY, KnowledgeError, load_knowledge
from cds_service.decision.render import RenderOptions
from cds_service.extras import MissingExtraError
from cds_service.fhir.client import FhirClient
from cds_service.pipeline import evaluate
from cds_service.protocol.errors import RequestError
from cds_service.protocol.request import load_request_schemas
from cds_service.settings import Settings, SettingsError
from cds_service.store.db import DatabaseError


def _serve(args: argparse.Namespace) -> int:
    from cds_service.ops.server import serve

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
                       options=RenderOptions(argonaut_copy=settings.argonaut_system_actions, qcdsm=settings.qcdsm,
                                             pama_official_only=settings.pama_official_only),
                       fhir_client=FhirClient(settings.fetch_policy()), **settings.request_limits)
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
    for issue in out.record.issues:
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
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from cds_service.store.db import Database, head_revision

    with Database.from_settings(Settings.load()) as db:
        before = db.revision()
        db.upgrade()
    print(f"{db.backend} database: schema revision {before or 'none'} -> {head_revision()}")
    return 0


def _purge(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta

    from cds_service.store.audit import purge
    from cds_service.store.db import open_database

    settings = Settings.load()
    days = settings.audit_retention_days if args.days is None else args.days
    before = datetime.now(UTC) - timedelta(days=days)
    with open_database(settings, strict=True) as db:
        result = purge(db, before, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {result.calls} audit records of calls and {result.feedback} feedback entries older than "
          f"{days} days (before {before:%Y-%m-%d %H:%M} UTC), and {result.replay_entries} expired JWT replay entries")
    return 0


def _report(args: argparse.Namespace) -> int:
    from cds_service.store.db import open_database
    from cds_service.store.report import RENDERERS, build_report

    settings = Settings.load()
    reasons = load_knowledge(settings.knowledge_dir).cards.overrideReasons
    labels = {(reasons["system"], r["code"]): r["display"] for r in reasons["codes"]}
    with open_database(settings, strict=True) as db:
        report = build_report(db, args.since, labels)
    text = RENDERERS[args.format](report)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of days of at least 1: {value!r}")
    return int(value)


def _date(value: str):
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


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
    p = sub.add_parser("report", help="appropriateness, acceptance and override report from the audit trail")
    p.add_argument("--since", type=_date, help="only calls on or after this UTC date (YYYY-MM-DD)")
    p.add_argument("--format", choices=["table", "csv", "html"], default="table")
    p.add_argument("--output", "-o", help="write to this file instead of standard output")
    p.set_defaults(func=_report)
    p = sub.add_parser("purge", help="delete audit records and feedback older than the retention period")
    p.add_argument("--days", type=_positive_int, help="retention in days (default: setting AUDIT_RETENTION_DAYS)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.set_defaults(func=_purge)
    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    p = dbsub.add_parser("upgrade", help="migrate the database schema to this version (Alembic upgrade head)")
    p.set_defaults(func=_db_upgrade)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (KnowledgeError, SettingsError, DatabaseError, MissingExtraError) as exc:
        print(f"vcf-cds: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
