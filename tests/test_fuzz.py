"""Fuzzing: no input gets a 5xx, and every error is a JSON OperationOutcome.

- schemathesis drives the app in-process from its own ``/openapi.json`` (positive, negative,
  coverage and fuzzing phases, and its authentication probes), each case carrying a fresh
  sandbox-signed token, so the fuzz reaches the parser behind the authentication;
- hypothesis feeds ``parse_envelope``/``parse_record`` and the POST endpoint real fixture bodies with one
  spot replaced by junk JSON, a wrong type, a huge string, deep nesting or an unknown
  resourceType, and whole bodies of junk.

Bounded for CI (``FUZZ_EXAMPLES``, default 50, per test); ``make fuzz`` runs 2000. The numbers
of cases that ran are printed at the end of this module.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from typing import Any

import jwt
import pytest
import schemathesis
from client_tokens import (
    BASE,
    SANDBOX_ISS,
    SANDBOX_ISSUERS_FILE,
    SANDBOX_JKU,
    SANDBOX_KID,
    bearer,
    hand_made_token,
    sandbox_claims,
    sandbox_file_app,
    sandbox_private_key,
    sandbox_token,
)
from conftest import FIXTURES, SESSION_DATA_DIR, load_json, make_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from cds_service.protocol.errors import RequestError
from cds_service.protocol.models import check_response
from cds_service.protocol.request import PatientRecord, parse_envelope, parse_record
from cds_service.security.auth import AuthError, TokenVerifier, load_trusted_issuers
from cds_service.security.replay import MemoryReplayCache

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
SERVICE = "/cds-services/vcf-order-select"
BODIES = {p.stem: load_json(p) for p in sorted((FIXTURES / "requests").glob("*.json"))}
RUNS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_case_counts(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and RUNS:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\nfuzz cases run: " + ", ".join(f"{name} {n}" for name, n in sorted(RUNS.items())))


def assert_json_answer(status: int, content: bytes, content_type: str) -> Any:
    assert status < 500, content[:500]
    assert content_type.startswith("application/json"), content_type
    payload = json.loads(content)
    if status >= 400:
        assert payload["resourceType"] == "OperationOutcome"
        assert payload["issue"] and payload["issue"][0]["severity"] == "error"
    return payload


# ------------------------------------------------------------------------- schemathesis


# Loaded at import (schemathesis parametrizes from it), before any test's own DATA_DIR
# exists: this app keeps its database in a temporary directory of its own.
API = schemathesis.openapi.from_wsgi("/openapi.json", sandbox_file_app(DATA_DIR=tempfile.mkdtemp(dir=SESSION_DATA_DIR)))


@API.parametrize()
@FUZZ
def test_schemathesis_finds_no_server_error(case):
    RUNS["schemathesis"] += 1
    token = sandbox_token(BASE + case.formatted_path, jku=SANDBOX_JKU)
    # positive_data_acceptance is left out: a schema-valid body is still refused when a selection
    # names no draft order or a draft order is not valid FHIR R4B, which JSON Schema cannot say.
    resp = case.call_and_validate(headers=bearer(token), excluded_checks=[positive_data_acceptance])
    content_type = next((v[0] for k, v in resp.headers.items() if k.lower() == "content-type"), "")
    if case.method == "OPTIONS":
        assert resp.status_code == 200  # Flask's Allow answer (a CORS preflight when origins are set): no body
        return
    if case.path in ("/explain", "/metrics"):  # an HTML page and the Prometheus text format
        assert resp.status_code < 500, resp.content[:500]
        return
    assert_json_answer(resp.status_code, resp.content, content_type)


# --------------------------------------------------------------------------- hypothesis

DEEP = "__DEEP__"

json_leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
               | st.text(max_size=20))


def _containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)


junk_json = st.recursive(json_leaves, _containers, max_leaves=12)
huge_strings = st.builds(lambda n, c: c * n, st.integers(10_000, 300_000), st.sampled_from(["x", "é", "\ud800", "0"]))
# Nesting is written into the sent text (see _wire): json.dumps itself would recurse that deep.
deep_nesting = st.integers(20, 5000).map(lambda n: f"{DEEP}{n}")
resource_types = st.sampled_from(["Nope", "Resource", "DomainResource", "Coding", "Bundle", "Patient",
                                  "OperationOutcome", "serviceRequest", "", "ServiceRequest "]) \
    | st.from_regex(r"[A-Z][A-Za-z]{0,30}", fullmatch=True)
replacements = junk_json | huge_strings | deep_nesting | resource_types


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a JSON value, as a key/index tuple (the root excluded)."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append(prefix + (key,))
        found.extend(_paths(child, prefix + (key,)))
    return found


@st.composite
def mutated_bodies(draw) -> Any:
    """A real fixture body with one spot replaced; resourceType spots get unknown types more often."""
    body = json.loads(json.dumps(BODIES[draw(st.sampled_from(sorted(BODIES)))]))
    paths = _paths(body)
    type_paths = [p for p in paths if p[-1] == "resourceType"]
    path = draw(st.sampled_from(type_paths) if type_paths and draw(st.booleans()) else st.sampled_from(paths))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = draw(resource_types if path[-1] == "resourceType" else replacements)
    return body


bodies = mutated_bodies() | junk_json


def _wire(body: Any) -> str:
    text = json.dumps(body)
    return re.sub(rf'"{DEEP}(\d+)"', lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)


def _deep_value(marker: str) -> Any:
    value: Any = []
    for _ in range(int(marker[len(DEEP):]) - 1):
        value = [value]
    return value


def _materialise(body: Any) -> Any:
    """The body as the parser gets it after json.loads: deep markers become real nesting."""
    if isinstance(body, dict):
        return {k: _materialise(v) for k, v in body.items()}
    if isinstance(body, list):
        return [_materialise(v) for v in body]
    if isinstance(body, str) and body.startswith(DEEP):
        return _deep_value(body)
    return body


def test_request_parsers_raise_only_request_errors(schemas):
    runs = Counter()

    @FUZZ
    @given(body=bodies)
    def run(body):
        runs["cases"] += 1
        try:
            envelope = parse_envelope(_materialise(body), schemas=schemas)
            parsed = parse_record(envelope.prefetch, patient_id=envelope.patient_id, required=("conditions",))
        except RequestError as exc:
            assert 400 <= exc.status < 500
            assert exc.to_operation_outcome()["issue"][0]["diagnostics"]
            runs[exc.status] += 1
        else:
            assert isinstance(parsed, PatientRecord)
            runs["parsed"] += 1

    run()
    RUNS["hypothesis parse_envelope+parse_record"] += runs["cases"]
    assert runs["cases"] >= min(FUZZ_EXAMPLES, 10)
    assert runs[400] > 0  # the junk reached the checks


def test_post_endpoint_answers_json_and_never_5xx():
    client = make_app().test_client()
    runs = Counter()

    @FUZZ
    @given(body=bodies | st.binary(max_size=64).map(lambda b: b"\xff" + b))
    def run(body):
        runs["cases"] += 1
        data = body if isinstance(body, bytes) else _wire(body)
        resp = client.post(SERVICE, data=data, content_type="application/json")
        payload = assert_json_answer(resp.status_code, resp.get_data(), resp.content_type)
        if resp.status_code == 200:
            assert check_response(payload) == []
        runs[resp.status_code] += 1

    run()
    RUNS["hypothesis POST endpoint"] += runs["cases"]
    assert runs["cases"] >= min(FUZZ_EXAMPLES, 10)
    assert runs[400] > 0


header_values = st.sampled_from(["ES384", "RS384", "none", "HS256", "JWT", SANDBOX_KID, SANDBOX_JKU, SANDBOX_ISS]) \
    | junk_json
extreme_numbers = st.integers(-2**70, 2**70) | st.sampled_from([10**400, -10**400, 2**63, 2**64, 1e308, -0.0])
# The sandbox's header with some fields replaced, so many tokens get as far as the signature check.
jose_headers = st.builds(lambda extra: {"alg": "ES384", "typ": "JWT", "kid": SANDBOX_KID, **extra},
                         st.dictionaries(st.sampled_from(["alg", "typ", "kid", "jku", "crit", "b64"]), header_values,
                                         max_size=2))
# The sandbox's claims (a fresh jti each, so replays do not hide the rest) with one or two replaced.
claim_sets = st.builds(lambda jti, extra: {**sandbox_claims(BASE + SERVICE), "jti": jti, **extra},
                       st.uuids().map(str),
                       st.dictionaries(st.sampled_from(["iss", "aud", "exp", "iat", "nbf", "jti", "tenant"]),
                                       extreme_numbers | junk_json, max_size=2))


def _signed_by_sandbox(claims: dict[str, Any]) -> str:
    """Junk claims under a valid sandbox signature: they reach PyJWT's claim checks and ours."""
    header = {"typ": "JWT", "kid": SANDBOX_KID}
    return "Bearer " + hand_made_token({"alg": "ES384", **header}, claims,
                                       lambda data: _es384_jws_signature(data))


def _es384_jws_signature(data: bytes) -> bytes:
    key = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA384)
    return key.sign(data, key.prepare_key(sandbox_private_key()))


# (Authorization value, True when signed with the trusted sandbox key)
authorization_values = (
    st.builds(lambda h, c, sig: ("Bearer " + hand_made_token(h, c, (lambda _: sig) if sig else None), False),
              jose_headers, claim_sets, st.binary(max_size=96))
    | claim_sets.map(lambda c: (_signed_by_sandbox(c), True))
    | st.text(max_size=200).map(lambda t: ("Bearer " + t, False))
    | st.text(max_size=200).map(lambda t: (t, False))
)


def test_token_verifier_raises_only_auth_errors():
    """Hostile Authorization headers: random JOSE headers and claims (wrong types, huge numbers,
    alg none, crit ...), random signatures, random text, and junk claims under the trusted
    sandbox signature: only AuthError, never anything else; nothing unsigned is accepted."""
    verifier = TokenVerifier(load_trusted_issuers(SANDBOX_ISSUERS_FILE), MemoryReplayCache())
    runs = Counter()

    @FUZZ
    @given(value=authorization_values)
    def run(value):
        authorization, signed = value
        runs["cases"] += 1
        try:
            verifier.verify_request_token(authorization, BASE + SERVICE)
        except AuthError as exc:
            runs[exc.reason] += 1
        else:
            assert signed, "a token without the issuer's signature was accepted"
            runs["accepted"] += 1  # junk claims that happen to be fine

    run()
    RUNS["hypothesis verify_request_token"] += runs["cases"]
    assert runs["cases"] >= min(FUZZ_EXAMPLES, 10)
