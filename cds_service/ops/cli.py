"""The vcf-cds command line: serve, evaluate a request file, mint a test token, print the
knowledge, report on and purge the audit trail, migrate the database.

Start-up is kept short (``vcf-cds --help`` answers in well under half a second): at module
level only the standard library's argparse, os and sys are imported; each command imports
what it needs (the knowledge, the pipeline, SQLAlchemy, PyJWT, gunicorn) when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import date

    from cds_service.decision.knowledge import Knowledge

PROG = "vcf-cds"
DISTRIBUTION = "vcf-cds-hooks"
# Exit statuses: 1 the request was refused (evaluate), 2 a usage or configuration error (as
# argparse), 130 interrupted, 141 the reader of our output went away (as a process killed by
# SIGPIPE, what `yes | head` gives).
EXIT_REFUSED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141

DESCRIPTION = """\
CDS Hooks 2.0 service rating spine imaging and vertebral augmentation orders against the
ACR Appropriateness Criteria for vertebral compression fractures.

Settings come from VCF_CDS_* environment variables (see the README, "Settings")."""

EPILOG = """\
examples:
  vcf-cds serve --port 8080
  vcf-cds evaluate fhir_fixtures/requests/seed-001-v3-ct-with-contrast.json
  vcf-cds evaluate --json request.json | jq .cards
  vcf-cds token --key ecprivkey.pem --iss https://sandbox.cds-hooks.org \\
      --kid 44823f3d-0b01-4a6c-a80e-b9d3e8a7226f http://127.0.0.1:8080/cds-services/vcf-order-select
  vcf-cds db upgrade

'vcf-cds COMMAND --help' describes a command and its options."""


class _VersionAction(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from importlib.metadata import version

        print(f"{PROG} {version(DISTRIBUTION)}")
        parser.exit()


# ---------------------------------------------------------------------------- output


def _dump_json(payload: Any, args: argparse.Namespace) -> None:
    """Print JSON: indented on a terminal (or with --pretty), one line when piped (or with --compact)."""
    import json

    pretty = args.pretty if args.pretty is not None else sys.stdout.isatty()
    if pretty:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        print(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def _error(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_USAGE


# ---------------------------------------------------------------------------- commands


def _serve(args: argparse.Namespace) -> int:
    from cds_service.ops.server import serve

    serve(host=args.host, port=args.port, workers=args.workers)
    return 0


def _service_for(knowledge: Knowledge, body: Any, requested: str | None) -> str | None:
    """The service to evaluate ``body`` with: ``--service`` when given, else the one whose
    hook is the request's ``hook``; None when none is."""
    if requested:
        return requested
    hook = body.get("hook") if isinstance(body, dict) else None
    return next((s.id for s in knowledge.services.values() if s.hook == hook), None)


def _evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from cds_service.decision.knowledge import load_knowledge
    from cds_service.decision.render import RenderOptions
    from cds_service.fhir.client import FhirClient
    from cds_service.pipeline import evaluate
    from cds_service.protocol.errors import RequestError
    from cds_service.protocol.request import load_request_schemas
    from cds_service.settings import Settings

    settings = Settings.load()
    knowledge = load_knowledge(settings.knowledge_dir)
    try:
        body = json.loads(Path(args.request).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return _error(f"cannot read {args.request}: {exc}")
    service_id = _service_for(knowledge, body, args.service)
    if service_id is None:
        hook = body.get("hook") if isinstance(body, dict) else None
        offered = ", ".join(f"{s.id} ({s.hook})" for s in knowledge.services.values())
        return _error(f"no service answers the request's hook {hook!r}; services: {offered} (choose one with --service)")
    try:
        out = evaluate(knowledge, load_request_schemas(), body, service_id=service_id,
                       options=RenderOptions(argonaut_copy=settings.argonaut_system_actions, qcdsm=settings.qcdsm,
                                             pama_official_only=settings.pama_official_only),
                       fhir_client=FhirClient(settings.fetch_policy()), **settings.request_limits)
    except RequestError as exc:
        if args.json:
            _dump_json(exc.to_operation_outcome(), args)
        else:
            print(f"HTTP {exc.status} ({exc.code}): {exc.diagnostic}")
        return EXIT_REFUSED
    if args.json:
        _dump_json(out.rendered.response, args)
        return 0
    print(f"Service {service_id} (hook {knowledge.services[service_id].hook})")
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
    for issue in (*out.envelope.skipped_orders, *out.record.issues):
        print(f"skipped {issue.location}: {issue.diagnostic}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from cds_service.ops.tokens import TokenError, mint_client_token

    try:
        token = mint_client_token(args.url, key_file=args.key, issuer=args.iss, kid=args.kid, jwks_file=args.jwks,
                                  lifetime_seconds=args.lifetime, jku=args.jku, tenant=args.tenant)
    except TokenError as exc:
        return _error(str(exc))
    print(token)
    return 0


def _knowledge(args: argparse.Namespace) -> int:
    from cds_service.decision.knowledge import CATEGORY_DISPLAY, load_knowledge
    from cds_service.settings import Settings

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
    from cds_service.settings import Settings
    from cds_service.store.db import Database, head_revision

    with Database.from_settings(Settings.load()) as db:
        before = db.revision()
        db.upgrade()
    print(f"{db.backend} database: schema revision {before or 'none'} -> {head_revision()}")
    return 0


def _purge(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from cds_service.settings import Settings
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
    from pathlib import Path

    from cds_service.decision.knowledge import load_knowledge
    from cds_service.settings import Settings
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


# ---------------------------------------------------------------------------- arguments


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of days of at least 1: {value!r}")
    return int(value)


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {value!r}")
    return int(value)


def _workers(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a number of worker processes of at least 1: {value!r}")
    return int(value)


def _lifetime(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 3600:
        raise argparse.ArgumentTypeError(f"not a lifetime in seconds from 1 to 3600: {value!r}")
    return int(value)


def _date(value: str) -> date:
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _verbose_parent() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="also print informational log lines (database migrations, settings)")
    return common


def _output_parent() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(add_help=False)
    group = out.add_mutually_exclusive_group()
    group.add_argument("--pretty", dest="pretty", action="store_true", default=None,
                       help="indent JSON output (the default on a terminal)")
    group.add_argument("--compact", dest="pretty", action="store_false",
                       help="JSON output on one line (the default when piped or redirected)")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``vcf-cds`` argument parser (every command and option with its help)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verbose = _verbose_parent()

    def command(name: str, summary: str, description: str, func: Callable[[argparse.Namespace], int],
                parents: Sequence[argparse.ArgumentParser] = (verbose,)) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=description, formatter_class=fmt, parents=list(parents))
        p.set_defaults(func=func)
        return p

    p = command("serve", "run the service under gunicorn",
                "Run the service under gunicorn: sync workers, the app preloaded and warmed up, JSON logs on\n"
                "standard error (level: setting LOG_LEVEL), graceful shutdown on SIGTERM. Settings come from\n"
                "VCF_CDS_* variables.", _serve, parents=())
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port to listen on (default: %(default)s)")
    p.add_argument("--workers", type=_workers, default=os.cpu_count() or 1, metavar="N",
                   help="worker processes, each answering one request at a time (default: one per CPU core, here %(default)s)")

    p = command("evaluate", "evaluate a CDS Hooks request file and print the answer",
                "Evaluate a CDS Hooks request body (JSON file, as an EHR posts it) with the service whose hook\n"
                "is the request's \"hook\" (order-select or order-sign), and print what was decided: orders,\n"
                "variant, rating, cards. With --json, print the CDS Hooks response instead. Exit status 1\n"
                "when the request is refused (what the HTTP endpoint answers with 400, 412 or 413).",
                _evaluate, parents=(verbose, _output_parent()))
    p.add_argument("request", metavar="REQUEST", help="request body, a JSON file")
    p.add_argument("--json", action="store_true",
                   help="print the CDS Hooks response (or the OperationOutcome of a refused request)")
    p.add_argument("--service", metavar="ID",
                   help="evaluate with this service (vcf-order-select, vcf-order-sign) whatever the request's hook")

    p = command("token", "mint a client JWT for calling the service locally (testing only)",
                "Mint the bearer JWT a CDS Client sends (CDS Hooks 2.0, Trusting CDS Clients), for trying the\n"
                "service with curl while authentication is on. Signed with a private key file (PEM, EC or RSA);\n"
                "the service accepts it when --iss is in its trusted-issuers file with the matching public key\n"
                "under --kid. Each token is good for one call (its jti is remembered) and for --lifetime seconds.",
                _token)
    p.add_argument("url", metavar="URL",
                   help="the exact URL the token will be sent to (its aud claim), e.g. "
                        "http://127.0.0.1:8080/cds-services/vcf-order-select")
    p.add_argument("--key", required=True, metavar="PEM", help="private key file (PEM) to sign with")
    p.add_argument("--iss", required=True, metavar="ISSUER", help="the iss claim: the client's issuer URL")
    kid = p.add_mutually_exclusive_group(required=True)
    kid.add_argument("--kid", help="key id for the JWT header")
    kid.add_argument("--jwks", metavar="FILE",
                     help="take the key id from this JWK Set file: the key whose public half matches --key")
    p.add_argument("--lifetime", type=_lifetime, default=300, metavar="SECONDS",
                   help="seconds until exp (default: %(default)s, as the CDS Hooks sandbox; at most 3600)")
    p.add_argument("--jku", metavar="URL", help="jku header: the URL of the issuer's JWK Set (default: none)")
    p.add_argument("--tenant", help="tenant claim (the healthcare organization), when the client sends one")

    p = command("knowledge", "print the loaded variants, ratings and provenance",
                "Load and check the knowledge (ACR tables, value sets, card text) and print the variants and\n"
                "their ratings with provenance.", _knowledge)
    p.add_argument("--dir", metavar="DIR", help="knowledge directory (default: setting KNOWLEDGE_DIR, else the bundled one)")

    p = command("report", "appropriateness, acceptance and override report from the audit trail",
                "Summarise the audit trail: ratings by variant, cards shown, suggestions accepted and\n"
                "override reasons.", _report)
    p.add_argument("--since", type=_date, metavar="YYYY-MM-DD", help="only calls on or after this UTC date")
    p.add_argument("--format", choices=["table", "csv", "html"], default="table",
                   help="output format (default: %(default)s)")
    p.add_argument("--output", "-o", metavar="FILE", help="write to this file instead of standard output")

    p = command("purge", "delete audit records and feedback older than the retention period",
                "Delete audit records of calls and feedback older than the retention period, and expired JWT\n"
                "replay entries.", _purge)
    p.add_argument("--days", type=_positive_int, metavar="N", help="retention in days (default: setting AUDIT_RETENTION_DAYS)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")

    p = sub.add_parser("db", help="database schema", description="Database schema commands.")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    p = dbsub.add_parser("upgrade", help="migrate the database schema to this version",
                         description="Migrate the database (DATABASE_URL, else the SQLite file in DATA_DIR) to the\n"
                                     "schema this version needs (Alembic upgrade head); does nothing when it is there.",
                         formatter_class=fmt, parents=[verbose])
    p.set_defaults(func=_db_upgrade)
    return parser


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":  # serve configures its own JSON logging
        import logging

        # Quiet by default: Alembic logs each migration step at INFO. Its logger gets the level
        # too, for a process whose logging was configured before (basicConfig then does nothing).
        level = logging.INFO if args.verbose else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("alembic").setLevel(level)
    try:
        status: int = args.func(args)
    except BrokenPipeError:
        raise  # main() ends quietly
    except OSError as exc:  # a file or directory named by an option or a setting cannot be read
        return _error(str(exc))
    except Exception as exc:
        if isinstance(exc, _configuration_errors()):
            return _error(str(exc))
        raise
    return status


# (module, exception) a command reports in one line: unusable settings, broken knowledge, a
# database that cannot be reached or is behind, an optional extra that is not installed.
# Looked up among the modules already loaded, so that a command that never touched the
# database does not import SQLAlchemy to say so.
_CONFIGURATION_ERRORS = (("cds_service.decision.knowledge", "KnowledgeError"), ("cds_service.settings", "SettingsError"),
                         ("cds_service.store.db", "DatabaseError"), ("cds_service.extras", "MissingExtraError"))


def _configuration_errors() -> tuple[type[Exception], ...]:
    return tuple(getattr(sys.modules[module], name) for module, name in _CONFIGURATION_ERRORS if module in sys.modules)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vcf-cds`` console script; returns the exit status."""
    try:
        status = _run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader closed the pipe (``vcf-cds evaluate x.json | head``): stop quietly. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return status


if __name__ == "__main__":
    raise SystemExit(main())
