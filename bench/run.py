"""Benchmark: the real server (``vcf-cds serve``) on loopback, driven by wrk.

First the configuration table: the typical request at concurrency 8 against
  floor (no-op Flask)        a no-op Flask endpoint under the same gunicorn settings (bench/floor.py)
  ours, auth off, SQLite     the embedded database, no client authentication (local use)
  ours, auth on, SQLite      client JWTs verified (ES384), the jti replay cache in SQLite
  ours, auth on, PostgreSQL  what a hospital runs: a throwaway PostgreSQL cluster this script
                             starts on 127.0.0.1 (bench/postgres.py; skipped, with a message,
                             when PostgreSQL is not installed)
in interleaved rounds (each round runs every configuration once, so the machine's other load
falls on all of them alike), with the median over the rounds of req/s, p50 / p99, server CPU
ms per request (master and workers, utime + stime from /proc over the requests answered),
the PostgreSQL processes' CPU ms per request, and the share of the floor's req/s in the same
round. With auth on, every request carries its own client JWT (the service refuses a jti it
has seen): minted before each run with cds_service.ops.tokens from the CDS Hooks sandbox's
published test key pair (../shared/interop/cds-hooks-sandbox/, which the trusted-issuers file
names), ``aud`` the exact URL called, one list per wrk thread (bench/post.lua). Any answer
other than 2xx stops the benchmark.

Then scenario x concurrency (1, 8, 32) on the auth-off service, with the share of the floor:
  typical      fhir_fixtures/bench/typical-request.json: Patient, 25 Conditions, 5 Procedures,
               2 draft orders in prefetch (built by fhir_fixtures/build_typical_request.py)
  large        fhir_fixtures/requests/synthea-keira-huel.json: the largest Synthea record of
               ../shared/interop/synthea/ (all its Conditions and Procedures in prefetch)
  no-prefetch  the typical request without prefetch: the service fetches Patient, Conditions
               and Procedures from a loopback FHIR server (bench/ehr.py) with a bearer token
  reports      the typical request plus 3 radiology reports in prefetch (the seed 003 MRI
               report of tests/corpus/ three times, different ids): the report reading's cost
               at steady state (its results are cached per report text), as CPU ms per
               request over the typical scenario (target: at most 2 ms more)
then cold start (process start to the first 200 of a hook call), RSS per worker and a
per-stage profile of one request in this process.

Growth: server CPU ms per call (sequential calls) of the typical request grown to 100, 500
and 2,000 Conditions and to 2, 10 and 50 selected orders (copies of its own), and the cost
per extra Condition and order between those counts.

The worst request within the default limits (fhir_fixtures/build_worst_request.py: 50
selected draft orders, 4,800 Conditions and 200 Procedures the decision reads, 7.4 MB): the
server's CPU milliseconds per call over sequential calls and the response size, and the
same call in this process (CPU time of decode + evaluate + encode).

Last, the targets, each met or not met. Needs wrk on PATH (``make bench`` installs it from
Debian). Not part of ``make test``.

    .venv/bin/python bench/run.py [--duration 8] [--rounds 3] [--configs floor,on-postgresql]
        [--scenarios typical] [--servers sync,gthread] [--workers N] [--skip-load]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import jwt
import requests

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TYPICAL = ROOT / "fhir_fixtures" / "bench" / "typical-request.json"
LARGE = ROOT / "fhir_fixtures" / "requests" / "synthea-keira-huel.json"
REPORT = ROOT / "tests" / "corpus" / "seed-003-mri-thoracic-spine.json"
SERVICE_PATH = "/cds-services/vcf-order-select"
TOKEN = "bench-token-not-a-secret"
CONCURRENCY = (1, 8, 32)

sys.path.insert(0, str(ROOT / "fhir_fixtures"))
import postgres  # noqa: E402 - bench/postgres.py, beside this file
from build_worst_request import build as build_worst  # noqa: E402
from ehr_server import without_prefetch  # noqa: E402
from postgres import Cluster  # noqa: E402

from cds_service.ops.tokens import mint_client_token  # noqa: E402
from cds_service.web.hooks import decode_json, encode_json  # noqa: E402 - the service's own JSON both ways


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- processes


class Server:
    """A server subprocess (its output in a log file) and the time it took to answer 200."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT):
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 - closed in stop(), outlives this call
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)

    def wait_for_200(self, url: str, body: bytes | None = None, timeout: float = 60) -> float:
        """Seconds from process start to the first 200 answer to ``url`` (POST ``body``, or GET)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if body is None:
                    status = requests.get(url, timeout=2).status_code
                else:
                    status = requests.post(url, data=body, headers={"Content-Type": "application/json"},
                                           timeout=5).status_code
                if status == 200:
                    return time.perf_counter() - self.started
            except requests.ConnectionError:
                pass
            time.sleep(0.01)
        raise SystemExit(f"no 200 from {url} within {timeout:g} s; see {self.log}")

    def workers(self) -> list[int]:
        """Pids of the gunicorn workers (children of the master)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> Iterator[Server]:
    server = Server(argv, env, log, cwd)
    try:
        yield server
    finally:
        server.stop()


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MB: RSS counts pages shared with the master after fork in
    full, PSS splits them between the processes sharing them."""
    rss = pss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        for line in rollup.read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    return rss, pss


# ------------------------------------------------------------------------------ load


def wrk_threads(concurrency: int) -> int:
    """wrk threads for ``concurrency`` connections: at most 2, wrk shares the 2 cores too."""
    return min(concurrency, 2)


def wrk(url: str, body_file: Path, concurrency: int, seconds: float, tokens: Path | None = None) -> dict[str, Any]:
    """One wrk run (POST ``body_file``; with ``tokens``, one client JWT per request from the
    files ``<tokens>.<thread>``, see bench/post.lua): req/s, latency percentiles in ms, the
    socket errors, the responses that were not 2xx and the requests sent without a token."""
    argv = ["wrk", f"-t{wrk_threads(concurrency)}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(BENCH / "post.lua"), url]
    env = {**os.environ, "BODY_FILE": str(body_file)}
    if tokens is not None:
        env["TOKENS_FILE"] = str(tokens)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    return {
        "requests": result["requests"],
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50": result["p50_us"] / 1000, "p95": result["p95_us"] / 1000, "p99": result["p99_us"] / 1000,
        # wrk counts 4xx/5xx answers under errors.status too: they are non2xx here, not socket errors.
        "errors": sum(n for kind, n in result["errors"].items() if kind != "status"),
        "non2xx": result["non2xx"], "exhausted": result["exhausted"],
    }


def with_reports(body: dict[str, Any], n: int = 3) -> dict[str, Any]:
    """``body`` plus ``n`` copies of the seed 003 MRI report (ids bench-report-1..n) as
    prefetch ``radiologyReports``; the other reading keys null (nothing found)."""
    body = json.loads(json.dumps(body))
    patient = body["context"]["patientId"]
    reports = []
    for i in range(1, n + 1):
        r = json.loads(REPORT.read_text(encoding="utf-8"))
        r["id"], r["subject"] = f"bench-report-{i}", {"reference": f"Patient/{patient}"}
        reports.append({"resource": r})
    body["prefetch"]["radiologyReports"] = {"resourceType": "Bundle", "type": "searchset", "entry": reports}
    for key in ("medicationRequests", "medicationStatements", "coagulationLabs"):
        body["prefetch"][key] = None
    return body


def scaled(body: dict[str, Any], *, conditions: int | None = None, orders: int | None = None) -> dict[str, Any]:
    """``body`` (the typical request) with ``conditions`` prefetched Conditions and/or
    ``orders`` selected draft orders: copies of its own, in turn, with new ids (3 of its 25
    Conditions carry a code the decision reads; its 2 orders are an MRI and a CT)."""
    body = json.loads(json.dumps(body))

    def grow(entries: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            entry = json.loads(json.dumps(entries[i % len(entries)]))
            if i >= len(entries):
                entry["resource"]["id"] += f"-x{i}"
            out.append(entry)
        return out

    if conditions is not None:
        bundle = body["prefetch"]["conditions"]
        bundle["entry"] = grow(bundle["entry"], conditions)
        bundle["total"] = conditions
    if orders is not None:
        bundle = body["context"]["draftOrders"]
        bundle["entry"] = grow(bundle["entry"], orders)
        body["context"]["selections"] = [f"ServiceRequest/{e['resource']['id']}" for e in bundle["entry"]]
    return body


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and all its descendants, live
    (/proc/<pid>/task/<pid>/children, recursively) or ended and reaped (the cutime and cstime
    of their parent): a gunicorn master and its workers, a postmaster and its backends."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime (fields 14 to 17)
    seconds = ticks / os.sysconf("SC_CLK_TCK")
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        # One that ended meanwhile is counted in our cutime from now on.
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            seconds += cpu_seconds(int(child))
    return seconds


def fail_unless_all_2xx(what: str, result: dict[str, Any], log: Path, *, warmup: bool = False) -> None:
    """Stop the benchmark (``SystemExit``) when a run got answers other than 2xx, or ran out
    of tokens (a warm-up may run out: it only sizes the next batch)."""
    refused = result["non2xx"] - (result["exhausted"] if warmup else 0)
    if refused > 0 or result["errors"] > 0:
        raise SystemExit(f"{what}: {refused} of {result['requests']} responses were not 2xx and {result['errors']} "
                         f"socket errors; see {log}")
    if result["exhausted"] and not warmup:
        raise SystemExit(f"{what}: {result['exhausted']} requests found no unused token (wrk sent more than the "
                         f"{result['requests'] - result['exhausted']} minted): rerun, the next batch is sized "
                         f"from the rate seen")


def load(url: str, body_file: Path, seconds: int, warmup: int, server: Server) -> dict[int, dict[str, Any]]:
    """wrk at each concurrency, plus the server's CPU milliseconds per request: unlike
    req/s, that figure hardly moves when other processes compete for the cores."""
    fail_unless_all_2xx(f"{body_file.name} warm-up", wrk(url, body_file, 8, warmup), server.log)
    out = {}
    for c in CONCURRENCY:
        before = cpu_seconds(server.proc.pid)
        out[c] = wrk(url, body_file, c, seconds)
        out[c]["cpu_ms"] = 1000 * (cpu_seconds(server.proc.pid) - before) / max(1, out[c]["requests"])
        fail_unless_all_2xx(f"{body_file.name} at concurrency {c}", out[c], server.log)
    return out


# ------------------------------------------------------------------- in-process stages


def stage_profile(body_file: Path, runs: int, raw: bytes | None = None) -> dict[str, float]:
    """Median milliseconds per stage of one evaluation, over ``runs`` evaluations in this
    process (after one warm-up), timing the real pipeline functions in place."""
    import cds_service.decision.engine as engine
    import cds_service.pipeline as pipeline
    from cds_service.app import create_app, state_of

    # The in-process app has no client in front of it (AUTH off) and its own scratch database.
    app = create_app({"AUTH": "off", "DATA_DIR": tempfile.mkdtemp(prefix="vcf-cds-bench-stages-")})
    st = state_of(app)
    raw = raw if raw is not None else body_file.read_bytes()
    spent: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    samples: dict[str, list[float]] = {}
    with mock.patch.object(pipeline, "parse_envelope", timed("parse envelope", pipeline.parse_envelope)), \
            mock.patch.object(pipeline, "parse_record", timed("parse record", pipeline.parse_record)), \
            mock.patch.object(engine, "extract_facts", timed("fact extraction", engine.extract_facts)), \
            mock.patch.object(pipeline, "decide", timed("engine decide (facts + decision)", pipeline.decide)), \
            mock.patch.object(pipeline, "render", timed("rendering", pipeline.render)), \
            mock.patch.object(pipeline, "validate_response", timed("response check (CDS Hooks models)",
                                                                   pipeline.validate_response)):
        for n in range(runs + 1):
            spent.clear()
            t0 = time.perf_counter()
            body = decode_json(raw)
            t1 = time.perf_counter()
            out = pipeline.evaluate(st.knowledge, st.schemas, body, service_id="vcf-order-select",
                                    options=st.render_options, max_depth=st.settings.max_json_depth)
            t2 = time.perf_counter()
            encode_json(out.rendered.response)
            t3 = time.perf_counter()
            if n == 0:
                continue
            spent["json decode"] = t1 - t0
            spent["json encode"] = t3 - t2
            spent["whole call (decode + evaluate + encode)"] = t3 - t0
            for name, seconds in spent.items():
                samples.setdefault(name, []).append(seconds * 1000)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    medians["decision (excluding fact extraction)"] = (medians["engine decide (facts + decision)"]
                                                       - medians["fact extraction"])
    order = ["json decode", "parse envelope", "parse record", "fact extraction", "decision (excluding fact extraction)",
             "engine decide (facts + decision)", "rendering", "response check (CDS Hooks models)", "json encode",
             "whole call (decode + evaluate + encode)"]
    return {name: medians[name] for name in order}


def sequential(url: str, body: bytes, server: Server, *, calls: int = 10, min_seconds: float = 0.0) -> dict[str, float]:
    """Sequential POSTs of ``body`` after one unmeasured call: at least ``calls``, and more
    until ``min_seconds`` have passed. The server's CPU ms per call (master and workers,
    /proc), the response size in bytes and the wall-clock ms of the slowest call."""
    headers = {"Content-Type": "application/json"}
    requests.post(url, data=body, headers=headers, timeout=60).raise_for_status()
    before, slowest, size, done = cpu_seconds(server.proc.pid), 0.0, 0, 0
    started = time.perf_counter()
    while done < calls or time.perf_counter() - started < min_seconds:
        t = time.perf_counter()
        response = requests.post(url, data=body, headers=headers, timeout=60)
        slowest = max(slowest, time.perf_counter() - t)
        response.raise_for_status()
        size, done = len(response.content), done + 1
    return {"cpu_ms": 1000 * (cpu_seconds(server.proc.pid) - before) / done, "bytes": size,
            "slowest_ms": 1000 * slowest, "calls": done}


def worst_in_process(body_file: Path, runs: int) -> dict[str, float]:
    """The worst request evaluated in this process: median CPU ms (``time.process_time``) of
    decode + evaluate + encode over ``runs`` runs after one warm-up, and the response bytes.
    Only the pipeline: the server's figure adds HTTP, the audit record and logging."""
    import cds_service.pipeline as pipeline
    from cds_service.app import create_app, state_of

    app = create_app({"AUTH": "off", "DATA_DIR": tempfile.mkdtemp(prefix="vcf-cds-bench-worst-")})
    st = state_of(app)
    raw = body_file.read_bytes()
    cpu: list[float] = []
    size = 0
    # As `vcf-cds serve` does after its warm-up: the collector then no longer walks the
    # objects loaded at start-up (knowledge, models) each time a request's garbage triggers it.
    gc.collect()
    gc.freeze()
    for n in range(runs + 1):
        t = time.process_time()
        out = pipeline.evaluate(st.knowledge, st.schemas, decode_json(raw), service_id="vcf-order-select",
                                options=st.render_options, **st.settings.request_limits)
        size = len(encode_json(out.rendered.response))
        if n:
            cpu.append(1000 * (time.process_time() - t))
    return {"cpu_ms": statistics.median(cpu), "bytes": size, "request_bytes": len(raw)}


def cpu_per_call(bodies: dict[str, bytes], runs: int, rounds: int = 5) -> dict[str, float]:
    """CPU milliseconds of this process per call (decode + evaluate + encode) for each body:
    the lowest of ``rounds`` rounds of ``runs // rounds`` calls, after one unmeasured call
    each (CPU time, unlike wall time, hardly moves when other processes share the cores)."""
    import cds_service.pipeline as pipeline
    from cds_service.app import create_app, state_of

    app = create_app({"AUTH": "off", "DATA_DIR": tempfile.mkdtemp(prefix="vcf-cds-bench-cpu-")})
    st = state_of(app)

    def call(raw: bytes) -> None:
        out = pipeline.evaluate(st.knowledge, st.schemas, decode_json(raw), service_id="vcf-order-select",
                                options=st.render_options, max_depth=st.settings.max_json_depth)
        encode_json(out.rendered.response)

    per_round = max(1, runs // rounds)
    best = {name: float("inf") for name in bodies}
    for raw in bodies.values():
        call(raw)
    for _ in range(rounds):
        for name, raw in bodies.items():
            started = time.process_time()
            for _ in range(per_round):
                call(raw)
            best[name] = min(best[name], 1000 * (time.process_time() - started) / per_round)
    return best


# ------------------------------------------------------------------ configurations

SANDBOX = ROOT.parent / "shared" / "interop" / "cds-hooks-sandbox"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
# Requests per second assumed before a configuration's first run: sizes the token batch of
# its warm-up (one that runs out only makes the next batch larger).
FIRST_RATE = 1500
CONFIGS = {"floor": "floor (no-op Flask)", "off-sqlite": "ours, auth off, SQLite",
           "on-sqlite": "ours, auth on, SQLite", "on-postgresql": "ours, auth on, PostgreSQL"}


@dataclass
class Target:
    """One configuration under load: its server, the URL called and, with auth on, the
    token batches it needs; ``cluster`` is the PostgreSQL it writes to, if any."""

    key: str
    label: str
    server: Server
    url: str
    auth: bool = False
    cluster: Cluster | None = None
    rate: float = FIRST_RATE  # highest req/s seen so far: sizes the next token batch
    runs: list[dict[str, Any]] = field(default_factory=list)


def write_trusted_issuers(path: Path) -> Path:
    """Write ``path``: a trusted-issuers file (README, "Client authentication") trusting the
    CDS Hooks sandbox through its published JWK Set, whose key signs :func:`mint_tokens`'."""
    path.write_text(json.dumps([{"iss": SANDBOX_ISS, "jwks_file": str(SANDBOX / "jwks.json")}]), encoding="utf-8")
    return path


def mint_tokens(url: str, count: int, files: int, prefix: Path) -> None:
    """``files`` files ``<prefix>.1`` .. ``<prefix>.<files>`` of ``count`` client JWTs each, one a
    line, every one with its own jti and ``aud`` = ``url``: signed with the CDS Hooks sandbox's
    published test key (ES384), as the sandbox signs a call (cds_service.ops.tokens)."""
    key_file = SANDBOX / "ecprivkey.pem"
    first = mint_client_token(url, key_file=key_file, issuer=SANDBOX_ISS, jwks_file=SANDBOX / "jwks.json")
    kid = jwt.get_unverified_header(first)["kid"]
    tokens = [first, *(mint_client_token(url, key_file=key_file, issuer=SANDBOX_ISS, kid=kid)
                       for _ in range(count * files - 1))]
    for n in range(files):
        Path(f"{prefix}.{n + 1}").write_text("\n".join(tokens[n * count:(n + 1) * count]) + "\n", encoding="ascii")


def run_target(target: Target, body_file: Path, seconds: float, tmp: Path, *, warmup: bool = False) -> dict[str, Any]:
    """One wrk run at concurrency 8 against ``target``, with fresh tokens when its auth is
    on (twice what its highest rate so far needs, plus 200 per wrk thread), and the CPU
    per request of its server and of its PostgreSQL (/proc, every process of each)."""
    tokens = None
    if target.auth:
        threads = wrk_threads(8)
        tokens = tmp / f"tokens-{target.key}"
        mint_tokens(target.url, math.ceil(2 * target.rate * seconds / threads) + 200, threads, tokens)
    db_pid = target.cluster.postmaster_pid() if target.cluster else None
    before, db_before = cpu_seconds(target.server.proc.pid), cpu_seconds(db_pid) if db_pid else 0.0
    try:
        result = wrk(target.url, body_file, 8, seconds, tokens)
    finally:
        for used in tmp.glob(f"tokens-{target.key}.*"):
            used.unlink()
    done = max(1, result["requests"])
    result["cpu_ms"] = 1000 * (cpu_seconds(target.server.proc.pid) - before) / done
    result["db_cpu_ms"] = 1000 * (cpu_seconds(db_pid) - db_before) / done if db_pid else None
    fail_unless_all_2xx(f"{target.label}{' warm-up' if warmup else ''}", result, target.server.log, warmup=warmup)
    # A warm-up that ran out of tokens got 401s, cheaper than calls: its rate overestimates.
    target.rate = max(1.0, result["rps"] if warmup else max(target.rate, result["rps"]))
    return result


def interleaved(targets: list[Target], body_file: Path, seconds: float, warmup: int, rounds: int, tmp: Path) -> None:
    """A warm-up run per target, then ``rounds`` rounds each running every target once, in
    the same order (``target.runs``): the machine's other load falls on all of them alike."""
    for target in targets:
        print(f"warm-up: {target.label} ...", flush=True)
        run_target(target, body_file, warmup, tmp, warmup=True)
    for n in range(rounds):
        for target in targets:
            print(f"round {n + 1}/{rounds}: {target.label} ...", flush=True)
            target.runs.append(run_target(target, body_file, seconds, tmp))


def medians(target: Target, floor: Target | None) -> dict[str, Any]:
    """Median over the rounds of each figure of ``target``; ``share``: the median over the
    rounds of its req/s over the floor's req/s in the same round."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in target.runs) for k in ("rps", "p50", "p99", "cpu_ms")}
    out["db_cpu_ms"] = statistics.median(r["db_cpu_ms"] for r in target.runs) if target.cluster else None
    out["share"] = (statistics.median(r["rps"] / f["rps"] for r, f in zip(target.runs, floor.runs, strict=True))
                    if floor is not None else None)
    out["cpu_range"] = (min(r["cpu_ms"] for r in target.runs), max(r["cpu_ms"] for r in target.runs))
    return out


GROWTH = {"Conditions": (100, 500, 2000), "orders": (2, 10, 50)}


def growth(url: str, typical: dict[str, Any], server: Server, rounds: int, min_seconds: float) -> dict[str, dict[int, float]]:
    """Server CPU ms per call (sequential calls, /proc) of the typical request grown to each
    count of :data:`GROWTH`; bodies interleaved, ``rounds`` rounds, median per body."""
    bodies = {(what, n): json.dumps(scaled(typical, **{"conditions" if what == "Conditions" else "orders": n})).encode()
              for what, counts in GROWTH.items() for n in counts}
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in bodies}
    for _ in range(rounds):
        for key, body in bodies.items():
            samples[key].append(sequential(url, body, server, min_seconds=min_seconds)["cpu_ms"])
    out: dict[str, dict[int, float]] = {what: {} for what in GROWTH}
    for (what, n), values in samples.items():
        out[what][n] = statistics.median(values)
    return out


def slopes(by_count: dict[int, float]) -> list[tuple[int, int, float]]:
    """(from, to, ms per extra item) between consecutive counts."""
    counts = sorted(by_count)
    return [(a, b, (by_count[b] - by_count[a]) / (b - a)) for a, b in itertools.pairwise(counts)]


# ------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per measured wrk run (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load per scenario and configuration")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the configuration table and the growth figures (median shown; default 3)")
    parser.add_argument("--configs", type=_choices(CONFIGS), default=list(CONFIGS), metavar="LIST",
                        help=f"configurations of the table, comma-separated (default: all of {','.join(CONFIGS)})")
    parser.add_argument("--scenarios", type=_choices(SCENARIOS), default=list(SCENARIOS), metavar="LIST",
                        help=f"scenarios at concurrency 1, 8, 32, comma-separated ('' for none; default: all of "
                             f"{','.join(SCENARIOS)})")
    parser.add_argument("--servers", type=_choices(SERVERS), default=["sync"], metavar="LIST",
                        help="gunicorn worker classes the configuration table runs under, comma-separated: sync (the "
                             f"service's own), gthread ({GTHREAD_THREADS} threads per worker); default sync")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="a checkout of another version of the service, installed in DIR/.venv: its service "
                             "configurations run in the same interleaved rounds as ours (a before/after in one run)")
    parser.add_argument("--growth-seconds", type=float, default=1.5,
                        help="seconds of sequential calls per grown request and round (0: skip the growth figures)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="gunicorn workers (default: cores)")
    parser.add_argument("--runs", type=int, default=500, help="evaluations for the stage profile")
    parser.add_argument("--cold-starts", type=int, default=3, help="cold starts measured (median shown)")
    parser.add_argument("--worst-calls", type=int, default=10, help="calls of the worst request measured")
    parser.add_argument("--skip-load", action="store_true",
                        help="no wrk runs: only cold start, the worst request, the growth figures and the stage profile")
    args = parser.parse_args()
    if shutil.which("wrk") is None and not args.skip_load:
        print("wrk not found: apt-get install -y wrk (or: make bench)", file=sys.stderr)
        return 2
    if args.skip_load:
        args.configs, args.scenarios = [], []
    if args.baseline and not (args.baseline / ".venv" / "bin" / "python").is_file():
        print(f"--baseline {args.baseline}: no .venv/bin/python there (install that checkout first)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="vcf-cds-bench-"))
    py = sys.executable
    workers = str(args.workers)
    ehr_port = free_port()
    fhir_base = f"http://127.0.0.1:{ehr_port}/fhir"
    typical = json.loads(TYPICAL.read_text())
    no_prefetch, _ = without_prefetch(typical, fhir_server=fhir_base, token=TOKEN)
    bodies = {"typical": TYPICAL, "large": LARGE, "no-prefetch": tmp / "no-prefetch.json",
              "reports": tmp / "reports.json"}
    bodies["no-prefetch"].write_text(json.dumps(no_prefetch))
    bodies["reports"].write_text(json.dumps(with_reports(typical)))
    worst_file = tmp / "worst-request.json"
    worst_file.write_text(json.dumps(build_worst(), ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VCF_CDS_", "PROMETHEUS_"))}
    issuers = write_trusted_issuers(tmp / "trusted-issuers.json")
    # Each configuration its own data directory (SQLite file, audit key); no-prefetch needs the
    # loopback FHIR server allowed.
    config_env = {
        "floor": env,
        "off-sqlite": {**env, "VCF_CDS_AUTH": "off", "VCF_CDS_DATA_DIR": str(tmp / "data-off-sqlite"),
                       "VCF_CDS_FHIR_ALLOWLIST": fhir_base, "VCF_CDS_ALLOW_HTTP_LOOPBACK": "1"},
        "on-sqlite": {**env, "VCF_CDS_AUTH": "on", "VCF_CDS_TRUSTED_ISSUERS": str(issuers),
                      "VCF_CDS_DATA_DIR": str(tmp / "data-on-sqlite")},
        # A shared database needs the audit key given (every host the same); one for this run.
        "on-postgresql": {**env, "VCF_CDS_AUTH": "on", "VCF_CDS_TRUSTED_ISSUERS": str(issuers),
                          "VCF_CDS_DATA_DIR": str(tmp / "data-on-postgresql"),
                          "VCF_CDS_AUDIT_HMAC_KEY": secrets.token_hex(32)},
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [py, "-m", "cds_service.ops.cli", "serve", "--port", str(port), "--workers", workers]
    print(f"vcf-cds bench: {args.workers} workers, {os.cpu_count()} cores, wrk {args.duration} s per run, "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}; logs in {tmp}", flush=True)

    # Cold start: process start to the first 200 of a real hook call.
    colds = []
    for n in range(args.cold_starts):
        with running(serve, config_env["off-sqlite"], tmp / f"cold-{n}.log") as server:
            colds.append(server.wait_for_200(base + SERVICE_PATH, TYPICAL.read_bytes()))

    # The worst request, then the grown typical requests, one call at a time: what one such
    # call costs, not a throughput.
    grown: dict[str, dict[int, float]] = {}
    with running(serve, config_env["off-sqlite"], tmp / "worst.log") as server:
        server.wait_for_200(base + "/readyz")
        print("worst ...", flush=True)
        worst = {"server": sequential(base + SERVICE_PATH, worst_file.read_bytes(), server, calls=args.worst_calls),
                 "process": worst_in_process(worst_file, args.worst_calls)}
        if args.growth_seconds > 0:
            print("growth (Conditions, orders) ...", flush=True)
            grown = growth(base + SERVICE_PATH, typical, server, args.rounds, args.growth_seconds)

    results: dict[str, dict[int, dict[str, Any]]] = {}
    memory: list[tuple[float, float]] = []
    table: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    with contextlib.ExitStack() as stack:
        cluster = None
        if "on-postgresql" in args.configs:
            cluster = _start_postgres(stack, tmp, config_env["on-postgresql"], skipped)
            if cluster is None:
                args.configs.remove("on-postgresql")
        wanted = [(kind, key) for kind in args.servers for key in args.configs]
        if args.baseline:
            wanted += [("baseline", key) for key in args.configs if key != "floor"]
        if args.scenarios:  # the scenarios run on the sync floor and the auth-off service
            wanted += [("sync", key) for key in ("floor", "off-sqlite") if ("sync", key) not in wanted]
        targets = {}
        for kind, key in wanted:
            targets[kind, key] = _start_target(stack, kind, key, config_env, cluster, tmp, workers, args.baseline)
        for target in targets.values():
            target.server.wait_for_200(target.url.removesuffix(SERVICE_PATH) + "/readyz")
        table_targets = [targets[kind, key] for kind in (*args.servers, "baseline") for key in args.configs
                         if (kind, key) in targets]
        if table_targets:
            interleaved(table_targets, TYPICAL, args.duration, args.warmup, args.rounds, tmp)
            for kind in (*args.servers, "baseline"):
                floor_target = targets.get(("sync" if kind == "baseline" else kind, "floor"))
                for key in args.configs:
                    if (kind, key) not in targets:
                        continue
                    target = targets[kind, key]
                    table[target.label] = medians(target, floor_target if floor_target and floor_target.runs else None)
        if args.scenarios:
            floor_target, service = targets["sync", "floor"], targets["sync", "off-sqlite"]
            print("floor at concurrency 1, 8, 32 ...", flush=True)
            results[floor_target.label] = load(floor_target.url, TYPICAL, args.duration, args.warmup, floor_target.server)
            ehr = [py, str(BENCH / "ehr.py"), "--port", str(ehr_port), "--request", str(TYPICAL), "--token", TOKEN]
            if "no-prefetch" in args.scenarios:
                _wait_ehr(stack.enter_context(running(ehr, env, tmp / "ehr.log")), fhir_base,
                          no_prefetch["context"]["patientId"])
            for name in args.scenarios:
                print(f"{name} at concurrency 1, 8, 32 ...", flush=True)
                results[name] = load(service.url, bodies[name], args.duration, args.warmup, service.server)
            memory = [memory_mb(pid) for pid in service.server.workers()]

    stages = stage_profile(TYPICAL, args.runs)
    cpu = cpu_per_call({"typical": TYPICAL.read_bytes(), "reports": bodies["reports"].read_bytes()}, args.runs)
    report(results, colds, memory, stages, worst, args, cpu, table, grown, skipped)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (the machine's other work is in every figure)")
    return 0


SCENARIOS = ("typical", "large", "no-prefetch", "reports")
SERVERS = ("sync", "gthread")
GTHREAD_THREADS = 4


def _choices(allowed: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of some of ``allowed``, in the order given."""
    allowed = list(allowed)

    def parse(text: str) -> list[str]:
        picked = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in picked if item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)} (choose from {','.join(allowed)})")
        return list(dict.fromkeys(picked))
    return parse


def _start_postgres(stack: contextlib.ExitStack, tmp: Path, service_env: dict[str, str],
                    skipped: list[str]) -> Cluster | None:
    """A throwaway PostgreSQL cluster on loopback (bench/postgres.py) with the service's
    schema (``vcf-cds db upgrade``), its URL put in ``service_env``; None, with the reason in
    ``skipped``, when PostgreSQL is not installed."""
    bindir = postgres.binaries()
    if bindir is None:
        message = ("PostgreSQL is not installed (no initdb/pg_ctl in /usr/lib/postgresql/*/bin nor on PATH): "
                   "the configuration 'ours, auth on, PostgreSQL' is skipped; apt-get install postgresql to run it")
        print(message, flush=True)
        skipped.append(message)
        return None
    print(f"PostgreSQL: throwaway cluster from {bindir} ...", flush=True)
    cluster = stack.enter_context(postgres.throwaway_cluster(free_port(), bindir, tmp / "postgresql.log"))
    service_env["VCF_CDS_DATABASE_URL"] = cluster.url
    with open(tmp / "postgresql.log", "ab") as log:
        subprocess.run([sys.executable, "-m", "cds_service.ops.cli", "db", "upgrade"], cwd=ROOT, env=service_env,
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    return cluster


def _start_target(stack: contextlib.ExitStack, kind: str, key: str, config_env: dict[str, dict[str, str]],
                  cluster: Cluster | None, tmp: Path, workers: str, baseline: Path | None = None) -> Target:
    """Start configuration ``key`` under gunicorn worker class ``kind`` (not yet ready); kind
    ``baseline``: ``vcf-cds serve`` of the checkout ``baseline`` (its own .venv), sync workers."""
    port = free_port()
    threads = ["--worker-class", "gthread", "--threads", str(GTHREAD_THREADS)] if kind == "gthread" else []
    label = CONFIGS[key] + (f" [gthread x{GTHREAD_THREADS}]" if kind == "gthread" else "")
    cwd = ROOT
    if kind == "baseline":
        assert baseline is not None
        label = CONFIGS[key].replace("ours", f"baseline {baseline.name}")
        argv = [str(baseline / ".venv" / "bin" / "python"), "-m", "cds_service.ops.cli", "serve"]
        cwd = baseline  # -m puts the working directory first on sys.path: its own package
    elif key == "floor":
        argv = [sys.executable, str(BENCH / "floor.py")]
    elif kind == "sync":
        argv = [sys.executable, "-m", "cds_service.ops.cli", "serve"]
    else:
        argv = [sys.executable, str(BENCH / "serve.py")]
    argv += ["--port", str(port), "--workers", workers, *threads]
    # Its own DATA_DIR: the targets run side by side, and two services starting on one
    # SQLite file would race to migrate it.
    env = {**config_env[key], "VCF_CDS_DATA_DIR": str(tmp / f"data-{kind}-{key}")}
    server = stack.enter_context(running(argv, env, tmp / f"{kind}-{key}.log", cwd))
    return Target(key, label, server, f"http://127.0.0.1:{port}{SERVICE_PATH}", auth=key.startswith("on-"),
                  cluster=cluster if key == "on-postgresql" else None)


def _wait_ehr(server: Server, fhir_base: str, patient_id: str) -> None:
    url = f"{fhir_base}/Patient/{patient_id}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"the loopback FHIR server did not answer; see {server.log}")


def report(results: dict[str, dict[int, dict[str, Any]]], colds: list[float], memory: list[tuple[float, float]],
           stages: dict[str, float], worst: dict[str, dict[str, float]], args: argparse.Namespace,
           reports: dict[str, float] | None = None, table: dict[str, dict[str, Any]] | None = None,
           grown: dict[str, dict[int, float]] | None = None, skipped: Iterable[str] = ()) -> None:
    """Print the configuration table (``table``: :func:`medians` per configuration), the
    scenario table, cold start, memory, stage profile, the growth figures (``grown``: server
    CPU ms per call by count), the worst request's cost, the CPU the report reading adds
    (``reports``: CPU ms per call, typical and with reports) and the targets."""
    table, grown = table or {}, grown or {}
    if table:
        print(f"\nconfigurations, typical request, concurrency 8: median of {args.rounds} interleaved rounds of "
              f"{args.duration} s (CPU from /proc over the requests answered)")
        header = (f"{'configuration':<42}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'server CPU ms/req':>19}"
                  f"{'PostgreSQL ms/req':>19}{'of floor':>10}")
        print(header)
        print("-" * len(header))
        for label, m in table.items():
            lo, hi = m["cpu_range"]
            cpu = f"{m['cpu_ms']:.2f} ({lo:.2f}-{hi:.2f})" if args.rounds > 1 else f"{m['cpu_ms']:.2f}"
            db = f"{m['db_cpu_ms']:.2f}" if m["db_cpu_ms"] is not None else "-"
            share = f"{100 * m['share']:.0f}%" if m["share"] is not None else "-"
            print(f"{label:<42}{m['rps']:>8.0f}{m['p50']:>8.2f}{m['p99']:>8.2f}{cpu:>19}{db:>19}{share:>10}")
    for message in skipped:
        print(message)
    floor = results.get(CONFIGS["floor"], {})
    if results:
        print()
        header = (f"{'scenario':<22}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'of floor':>10}"
                  f"{'CPU ms/req':>12}")
        print(header)
        print("-" * len(header))
        for name, by_conc in results.items():
            for conc, r in by_conc.items():
                share = f"{100 * r['rps'] / floor[conc]['rps']:.0f}%" if floor else "-"
                print(f"{name:<22}{conc:>5}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p95']:>9.2f}{r['p99']:>9.2f}"
                      f"{share:>10}{r['cpu_ms']:>12.2f}")
    print()
    print(f"cold start (process start to first 200 of a hook call): median {statistics.median(colds):.2f} s "
          f"over {len(colds)} starts (min {min(colds):.2f}, max {max(colds):.2f})")
    if memory:
        print("memory per worker after the load: " + ", ".join(f"RSS {r:.0f} MB (PSS {p:.0f} MB)" for r, p in memory))
    print()
    print(f"per-stage profile of the typical request, in process, median of {args.runs} runs:")
    for name, ms in stages.items():
        print(f"  {name:<42}{ms:>8.3f} ms")
    if reports is not None:
        print(f"\nCPU per call in process (best of 5 rounds, {args.runs} calls): typical {reports['typical']:.2f} ms, "
              f"typical + 3 radiology reports {reports['reports']:.2f} ms "
              f"({reports['reports'] - reports['typical']:+.2f} ms; the reading is cached per report text)")
    if grown:
        print(f"\ngrowth: server CPU ms per call, auth off, SQLite, sequential calls, median of {args.rounds} rounds "
              f"(the typical request with copies of its own Conditions or orders):")
        for what, by_count in grown.items():
            figures = ", ".join(f"{n:,} {what}: {ms:.2f} ms" for n, ms in by_count.items())
            steps = ", ".join(f"{a:,}->{b:,}: {1000 * per:.1f} us" for a, b, per in slopes(by_count))
            print(f"  {figures} (per extra {what[:-1] if what.endswith('s') else what}: {steps})")
    print()
    ws, wp = worst["server"], worst["process"]
    print(f"worst request within the default limits ({wp['request_bytes'] / 1e6:.1f} MB: 50 orders, "
          f"4,800 Conditions, 200 Procedures):")
    print(f"  server: {ws['cpu_ms']:.0f} ms CPU per call over {args.worst_calls} calls (slowest "
          f"{ws['slowest_ms']:.0f} ms wall clock), response {ws['bytes']:,} bytes")
    print(f"  in process (decode + evaluate + encode): {wp['cpu_ms']:.0f} ms CPU, median of {args.worst_calls} runs, "
          f"response {wp['bytes']:,} bytes")
    print()
    print("targets:")
    for label, ok, value in targets(results, colds, memory, stages, worst, reports, table, grown):
        print(f"  [{'met' if ok else 'NOT met'}] {label}: {value}")


def targets(results: dict[str, dict[int, dict[str, Any]]], colds: list[float], memory: list[tuple[float, float]],
            stages: dict[str, float], worst: dict[str, dict[str, float]], reports: dict[str, float] | None,
            table: dict[str, dict[str, Any]], grown: dict[str, dict[int, float]]) -> list[tuple[str, bool, str]]:
    """(target, met, measured value) for every target the figures measured."""
    ws, wp = worst["server"], worst["process"]
    checks = []
    production, auth_off = table.get(CONFIGS["on-postgresql"]), table.get(CONFIGS["off-sqlite"])
    if production is not None:
        checks += [("auth on, PostgreSQL: at most 1.5 ms of server CPU per request", production["cpu_ms"] <= 1.5,
                    f"{production['cpu_ms']:.2f} ms (+ {production['db_cpu_ms']:.2f} ms in PostgreSQL)"),
                   ("auth on, PostgreSQL: p99 under 25 ms at concurrency 8", production["p99"] < 25,
                    f"{production['p99']:.2f} ms")]
    if auth_off is not None and auth_off["share"] is not None:
        checks.append(("auth off, SQLite: at least 25% of the floor's req/s", auth_off["share"] >= 0.25,
                       f"{100 * auth_off['share']:.0f}%"))
    if "Conditions" in grown:
        worst_step = max(slopes(grown["Conditions"]), key=lambda step: step[2])
        checks.append(("at most 10 us per extra Condition up to 2,000", worst_step[2] <= 0.010,
                       f"{1000 * worst_step[2]:.1f} us from {worst_step[0]:,} to {worst_step[1]:,}"))
    if "orders" in grown:
        (_, _, first), *_, (_, _, last) = slopes(grown["orders"])
        checks.append(("linear in orders: per-order cost from 10 to 50 at most 1.5x that from 2 to 10",
                       last <= 1.5 * first, f"{1000 * first:.0f} us, then {1000 * last:.0f} us per order"))
    checks += [("worst request: under 1 s of server CPU", ws["cpu_ms"] < 1000, f"{ws['cpu_ms']:.0f} ms"),
               ("worst request: under 300 ms CPU in process", wp["cpu_ms"] < 300, f"{wp['cpu_ms']:.0f} ms"),
               ("worst request: response under 2 MB", ws["bytes"] < 2_000_000, f"{ws['bytes']:,} bytes"),
               ("engine decision under 1 ms median", stages["engine decide (facts + decision)"] < 1.0,
                f"{stages['engine decide (facts + decision)']:.3f} ms"),
               ("cold start under 2 s", statistics.median(colds) < 2.0, f"{statistics.median(colds):.2f} s")]
    if memory:
        checks.append(("under 150 MB RSS per worker", max(r for r, _ in memory) < 150,
                       f"max {max(r for r, _ in memory):.0f} MB"))
    if reports is not None:
        extra = reports["reports"] - reports["typical"]
        checks.append(("3 radiology reports: at most 2 ms more CPU per call in process", extra <= 2.0, f"{extra:+.2f} ms"))
    if "typical" in results and "reports" in results:
        extra_cpu = results["reports"][8]["cpu_ms"] - results["typical"][8]["cpu_ms"]
        checks.append(("3 radiology reports, conc 8: at most 2 ms more server CPU per request", extra_cpu <= 2.0,
                       f"{extra_cpu:+.2f} ms"))
    return checks


if __name__ == "__main__":
    raise SystemExit(main())
