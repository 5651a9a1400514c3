"""Client authentication as a CDS Client meets it (CDS Hooks 2.0 §Trusting CDS Clients).

Tokens are signed as the CDS Hooks sandbox signs them, with its published key, and its JWK Set
is served from a loopback HTTP server (the sandbox's own host cannot be reached from here); a
second issuer signs RS384 with a key made here and pinned in a jwks_file; the spec's own example
token is checked against the spec's published JWK Set.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time

import gunicorn.app.base
import jwt
import pytest
from client_tokens import (
    BASE,
    SANDBOX_ISS,
    SANDBOX_JKU,
    SANDBOX_JWKS_PATH,
    SANDBOX_KID,
    SPEC_ISS,
    SPEC_JWKS,
    SPEC_PRIVATE_JWK,
    SPEC_TOKEN,
    bearer,
    hand_made_token,
    sandbox_claims,
    sandbox_jwks,
    sandbox_private_key,
    sandbox_token,
    write_issuers,
)
from conftest import FIXTURES, load_json, make_app
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from replay import table_rows

from cds_service.observability import MULTIPROC_ENV
from cds_service.ops import server
from cds_service.ops.cli import main as cli_main
from cds_service.security.auth import AuthError, TokenVerifier, load_trusted_issuers
from cds_service.security.replay import MemoryReplayCache
from cds_service.settings import SettingsError
from cds_service.store.tables import AuditCall
from cds_service.web.state import state_of

SERVICE = "/cds-services/vcf-order-select"
REQUEST = load_json(FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json")
RSA_ISS = "https://ehr.example.org/fhir"
RSA_KID = "ehr-2025"
GENERIC_401 = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "login", "diagnostics": "the request is not authenticated"}]}


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture()
def jwks_server(httpserver):
    """The sandbox's JWK Set, served on loopback as the sandbox serves it at its jku."""
    httpserver.expect_request(SANDBOX_JWKS_PATH).respond_with_json(sandbox_jwks())
    return httpserver


@pytest.fixture()
def issuers_file(tmp_path, jwks_server, rsa_key):
    rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    # No "alg" in the JWK, as many EHRs publish RSA keys: the token's RS384 must still verify.
    rsa_jwk.update(kid=RSA_KID, use="sig")
    return write_issuers(tmp_path, [
        {"iss": SANDBOX_ISS, "jku": [jwks_server.url_for(SANDBOX_JWKS_PATH)]},
        {"iss": RSA_ISS, "jwks_file": "ehr-jwks.json"},
        {"iss": SPEC_ISS, "jwks_file": "spec-jwks.json"},
    ], {"ehr-jwks.json": {"keys": [rsa_jwk]}, "spec-jwks.json": SPEC_JWKS})


@pytest.fixture()
def client(issuers_file):
    return make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers_file)).test_client()


def sandbox(jwks_server, path: str = SERVICE, **claims) -> str:
    """A sandbox token for ``path`` whose jku is the loopback copy of the sandbox's JWK Set."""
    aud = claims.pop("aud", BASE + path)
    return sandbox_token(aud, jku=jwks_server.url_for(SANDBOX_JWKS_PATH), **claims)


def post(client, token: str | None, path: str = SERVICE, body=REQUEST):
    return client.post(path, data=json.dumps(body), content_type="application/json",
                       headers=bearer(token) if token else {})


def assert_refused(resp) -> None:
    """401, the same generic body whatever the cause, and the Bearer challenge."""
    assert resp.status_code == 401, resp.get_data(as_text=True)[:300]
    assert resp.mimetype == "application/json"
    assert resp.get_json() == GENERIC_401
    assert resp.headers["WWW-Authenticate"] == "Bearer"


# ------------------------------------------------------------------------- accepted calls


def test_sandbox_signed_calls_are_answered(client, jwks_server):
    resp = client.get("/cds-services", headers=bearer(sandbox(jwks_server, "/cds-services")))
    assert resp.status_code == 200
    assert resp.get_json()["services"][0]["id"] == "vcf-order-select"

    resp = post(client, sandbox(jwks_server))
    assert resp.status_code == 200
    reference = make_app().test_client().post(SERVICE, json=REQUEST).get_json()
    assert sorted(c["summary"] for c in resp.get_json()["cards"]) == sorted(c["summary"] for c in reference["cards"])
    # Two calls, one fetch: the JWK Set is cached.
    assert len(jwks_server.log) == 1


def test_aud_may_be_a_one_element_array(client, jwks_server):
    assert post(client, sandbox(jwks_server, aud=[BASE + SERVICE])).status_code == 200


def rsa_token(rsa_key, **claims) -> str:
    """An RS384 token of the second issuer, whose key set is pinned in a jwks_file."""
    payload = {**sandbox_claims(BASE + SERVICE), "iss": RSA_ISS, **claims}
    return jwt.encode(payload, rsa_key, algorithm="RS384", headers={"kid": RSA_KID, "typ": "JWT"})


def test_rs384_issuer_with_pinned_key_set(client, rsa_key):
    assert post(client, rsa_token(rsa_key)).status_code == 200


def test_spec_example_token_verifies_against_the_spec_key_but_has_expired(client, caplog):
    """The CDS Hooks 2.0 example token, verbatim: its signature checks out with the JWK Set the spec
    publishes (PyJWT checks the signature before the claims, so 'expired' is the verdict of a
    verified token), and it expired in 2015."""
    assert jwt.get_unverified_header(SPEC_TOKEN) == {
        "alg": "ES384", "typ": "JWT", "kid": "example-kid", "jku": "https://fhir-ehr.example.com/jwk_uri"}
    claims = jwt.decode(SPEC_TOKEN, options={"verify_signature": False})
    assert set(claims) >= {"iss", "aud", "exp", "iat", "jti", "tenant"}
    assert claims["aud"] == "https://cds.example.org/cds-services/some-service"
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        resp = client.post("/cds-services/some-service", json=REQUEST, headers=bearer(SPEC_TOKEN),
                           base_url="https://cds.example.org")
    assert_refused(resp)
    assert "token expired" in caplog.text


def test_spec_example_key_signs_an_accepted_call(issuers_file):
    """The spec also publishes the private key: a fresh token of the example's shape is accepted,
    and its tenant reaches the service."""
    claims = jwt.decode(SPEC_TOKEN, options={"verify_signature": False})
    now = int(time.time())
    url = "https://cds.example.org" + SERVICE
    claims.update(aud=url, iat=now, exp=now + 300, jti="spec-shape-" + str(now))
    header = jwt.get_unverified_header(SPEC_TOKEN)
    key = jwt.PyJWK(SPEC_PRIVATE_JWK).key
    token = jwt.encode(claims, key, algorithm="ES384", headers=header)

    app = make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers_file), PUBLIC_BASE_URL="https://cds.example.org")
    assert post(app.test_client(), token).status_code == 200

    verifier = TokenVerifier(load_trusted_issuers(issuers_file), MemoryReplayCache())
    client_id = verifier.verify_request_token(f"Bearer {token}", url)
    assert (client_id.issuer, client_id.tenant) == (SPEC_ISS, "2ddd6c3a-8e9a-44c6-a305-52111ad302a2")


def test_spec_example_token_is_refused_when_its_issuer_is_not_trusted(jwks_server, tmp_path, caplog):
    only_sandbox = write_issuers(tmp_path, [{"iss": SANDBOX_ISS, "jku": [jwks_server.url_for(SANDBOX_JWKS_PATH)]}])
    client = make_app(AUTH="on", TRUSTED_ISSUERS=str(only_sandbox)).test_client()
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        assert_refused(client.post("/cds-services/some-service", json=REQUEST, headers=bearer(SPEC_TOKEN),
                                   base_url="https://cds.example.org"))
    assert "iss is not a trusted issuer" in caplog.text


def test_public_base_url_is_the_audience(issuers_file, jwks_server):
    app = make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers_file), PUBLIC_BASE_URL="https://cds.example.org/hooks/")
    client = app.test_client()
    good = sandbox_token("https://cds.example.org/hooks" + SERVICE, jku=jwks_server.url_for(SANDBOX_JWKS_PATH))
    assert post(client, good).status_code == 200
    # The URL this process sees is not the one the client called.
    assert_refused(post(client, sandbox(jwks_server)))


# ------------------------------------------------------------------------- refused calls


def _hs256_with_public_key(jwks_server) -> str:
    """The classic key-confusion attack: HMAC-sign with the issuer's public key as the secret."""
    public_pem = jwt.PyJWK(sandbox_jwks()["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": SANDBOX_KID, "jku": jwks_server.url_for(SANDBOX_JWKS_PATH)}
    return hand_made_token(header, sandbox_claims(BASE + SERVICE),
                           lambda data: hmac.new(public_pem, data, hashlib.sha256).digest())


def _alg_none(jwks_server) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": SANDBOX_KID, "jku": jwks_server.url_for(SANDBOX_JWKS_PATH)}
    return hand_made_token(header, sandbox_claims(BASE + SERVICE))


def _other_key_same_kid(jwks_server) -> str:
    return sandbox(jwks_server, key=ec.generate_private_key(ec.SECP384R1()))


def _typ_not_jwt(jwks_server) -> str:
    return jwt.encode(sandbox_claims(BASE + SERVICE), sandbox_private_key(), algorithm="ES384",
                      headers={"typ": "at+jwt", "kid": SANDBOX_KID, "jku": jwks_server.url_for(SANDBOX_JWKS_PATH)})


def _t(offset: int) -> int:
    return round(time.time()) + offset


BAD_TOKENS = {
    "expired": (lambda s: sandbox(s, iat=_t(-1000), exp=_t(-600)), "token expired"),
    "future-iat": (lambda s: sandbox(s, iat=_t(600), exp=_t(900)), "token iat or nbf is in the future"),
    "future-nbf": (lambda s: sandbox(s, nbf=_t(600)), "token iat or nbf is in the future"),
    "wrong-aud": (lambda s: sandbox(s, aud=BASE + "/cds-services/another-service"), "aud is not the URL called"),
    "aud-other-host": (lambda s: sandbox(s, aud="https://elsewhere.example" + SERVICE), "aud is not the URL called"),
    "wrong-iss": (lambda s: sandbox(s, iss="https://evil.example"), "iss is not a trusted issuer"),
    "alg-none": (_alg_none, "alg is not an accepted asymmetric algorithm"),
    "hs256-with-public-key": (_hs256_with_public_key, "alg is not an accepted asymmetric algorithm"),
    "signed-by-another-key": (_other_key_same_kid, "signature does not verify"),
    "unknown-kid": (lambda s: sandbox_token(BASE + SERVICE, jku=s.url_for(SANDBOX_JWKS_PATH), kid="no-such-kid"),
                    "no key with this kid in the issuer's JWK Set"),
    "missing-kid": (lambda s: jwt.encode(sandbox_claims(BASE + SERVICE), sandbox_private_key(), algorithm="ES384",
                                         headers={"typ": "JWT", "jku": s.url_for(SANDBOX_JWKS_PATH)}),
                    "kid missing, or kid or jku not a string"),
    "missing-jti": (lambda s: sandbox(s, jti=None), "a required claim is missing"),
    "missing-exp": (lambda s: sandbox(s, exp=None), "a required claim is missing"),
    "typ-not-jwt": (_typ_not_jwt, "typ header is not JWT"),
    "tenant-not-string": (lambda s: sandbox(s, tenant=7), "tenant is not a string"),
    "exp-beyond-float": (lambda s: sandbox(s, exp=10**400), "exp is out of range"),  # found by the fuzz
    "malformed-segments": (lambda s: "eyJhbGciOiJFUzM4NCJ9.not-base64!.x", "Authorization is not 'Bearer <JWT>'"),
    "malformed-json": (lambda s: "bm90IGpzb24.bm90IGpzb24.c2ln", "token is not a well-formed JWT"),
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
def test_bad_token_is_refused_with_no_detail(client, jwks_server, caplog, name):
    make, reason = BAD_TOKENS[name]
    token = make(jwks_server)
    with caplog.at_level(logging.DEBUG):
        assert_refused(post(client, token))
    refusals = [r for r in caplog.records if r.name == "cds_service.web.security" and r.levelno == logging.WARNING]
    assert [r.getMessage().rsplit(": ", 1)[1] for r in refusals] == [reason]
    assert all(token not in r.getMessage() and token[:40] not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("headers,reason", [
    ({}, "no Authorization header"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "Authorization is not 'Bearer <JWT>'"),
    ({"Authorization": "Bearer"}, "Authorization is not 'Bearer <JWT>'"),
    ({"Authorization": "Bearer " + "a" * 9000}, "Authorization header too long"),
], ids=["missing", "basic", "empty-bearer", "huge"])
def test_missing_or_malformed_header_is_refused(client, caplog, headers, reason):
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        assert_refused(client.post(SERVICE, json=REQUEST, headers=headers))
    assert reason in caplog.text


def test_replayed_token_is_refused(client, jwks_server, rsa_key, caplog):
    token = sandbox(jwks_server)
    assert post(client, token).status_code == 200
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        assert_refused(post(client, token))
    assert "jti replayed" in caplog.text
    # jti values are unique per issuer only: another issuer's token with the same jti is new.
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert post(client, rsa_token(rsa_key, jti=jti)).status_code == 200


@pytest.mark.parametrize("jku", ["loopback-not-listed", SANDBOX_JKU])
def test_jku_off_the_allowlist_is_refused_without_being_fetched(client, jwks_server, caplog, jku):
    if jku == "loopback-not-listed":
        jku = jwks_server.url_for("/attacker/jwks.json")
        jwks_server.expect_request("/attacker/jwks.json").respond_with_json(sandbox_jwks())
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        assert_refused(post(client, sandbox_token(BASE + SERVICE, jku=jku)))
    assert "jku is not on the issuer's allowlist (not fetched)" in caplog.text
    assert jwks_server.log == []  # nothing was fetched, neither the listed nor the unlisted URL


class FakeClock:
    """A monotonic clock the test moves by hand; it starts at 0, as on a machine booted just now."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_unknown_kid_refetches_the_key_set_at_most_once_a_minute(issuers_file, jwks_server):
    """The issuers' key-set cache runs on the clock it is given: a minute passes without waiting."""
    clock = FakeClock()
    verifier = TokenVerifier(load_trusted_issuers(issuers_file, clock=clock), MemoryReplayCache())
    jku = jwks_server.url_for(SANDBOX_JWKS_PATH)
    fetches = lambda: len(jwks_server.log)  # noqa: E731

    def refused(token: str) -> str:
        with pytest.raises(AuthError) as err:
            verifier.verify_request_token("Bearer " + token, BASE + SERVICE)
        return err.value.reason

    assert verifier.verify_request_token("Bearer " + sandbox(jwks_server), BASE + SERVICE).issuer == SANDBOX_ISS
    assert fetches() == 1
    for _ in range(5):
        assert refused(sandbox_token(BASE + SERVICE, jku=jku, kid="rotated-key")) == \
            "no key with this kid in the issuer's JWK Set"
    assert fetches() == 1  # within a minute of the last fetch: no refetch

    clock.now += 61
    refused(sandbox_token(BASE + SERVICE, jku=jku, kid="rotated-key"))
    assert fetches() == 2
    refused(sandbox_token(BASE + SERVICE, jku=jku, kid="rotated-key"))
    assert fetches() == 2

    # The issuer rotates in a new key; after the cool-down its first token triggers the refetch.
    new_key = ec.generate_private_key(ec.SECP384R1())
    new_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(new_key.public_key(), as_dict=True),
               "kid": "rotated-key", "use": "sig", "alg": "ES384"}
    jwks_server.clear_all_handlers()
    jwks_server.expect_request(SANDBOX_JWKS_PATH).respond_with_json({"keys": sandbox_jwks()["keys"] + [new_jwk]})
    clock.now += 61
    token = sandbox_token(BASE + SERVICE, jku=jku, kid="rotated-key", key=new_key)
    assert verifier.verify_request_token("Bearer " + token, BASE + SERVICE).issuer == SANDBOX_ISS
    assert fetches() == 3

    # Five minutes after the last fetch the set is fetched again even for a known kid.
    assert verifier.verify_request_token("Bearer " + sandbox(jwks_server), BASE + SERVICE).issuer == SANDBOX_ISS
    assert fetches() == 3
    clock.now += 300
    assert verifier.verify_request_token("Bearer " + sandbox(jwks_server), BASE + SERVICE).issuer == SANDBOX_ISS
    assert fetches() == 4


def test_unreachable_key_set_is_refused(tmp_path, caplog):
    issuers = write_issuers(tmp_path, [{"iss": SANDBOX_ISS, "jku": ["http://127.0.0.1:9/jwks.json"]}])
    client = make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers)).test_client()
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        assert_refused(post(client, sandbox_token(BASE + SERVICE, jku="http://127.0.0.1:9/jwks.json")))
    assert "the issuer's JWK Set could not be fetched" in caplog.text


@pytest.mark.parametrize("answer", ["not json", json.dumps({"keys": []}), json.dumps([1])],
                         ids=["html", "no-keys", "not-an-object"])
def test_unusable_key_set_is_refused(client, jwks_server, caplog, answer):
    jwks_server.clear_all_handlers()
    jwks_server.expect_request(SANDBOX_JWKS_PATH).respond_with_data(answer, content_type="text/html")
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        assert_refused(post(client, sandbox(jwks_server)))
    assert "401 for POST" in caplog.text


# --------------------------------------------------------------------- what is covered


@pytest.mark.parametrize("method,path", [
    ("GET", "/cds-services"),
    ("POST", SERVICE),
    ("POST", SERVICE + "/feedback"),  # CDS Hooks 2.0 §Feedback: covered without naming the route
    ("POST", "/cds-services/unknown-service"),
    ("PUT", "/cds-services"),
    ("GET", "/elsewhere"),
])
def test_every_route_needs_a_token(client, method, path):
    assert_refused(client.open(path, method=method, json=REQUEST if method == "POST" else None))


def test_a_good_token_reaches_routing_and_validation(client, jwks_server):
    assert post(client, sandbox(jwks_server, "/cds-services/unknown-service"),
                "/cds-services/unknown-service").status_code == 404
    assert post(client, sandbox(jwks_server), body={"hook": "order-select"}).status_code == 400


def test_openapi_document_and_preflight_need_no_token(client):
    assert client.get("/openapi.json").status_code == 200
    assert client.options(SERVICE).status_code == 200


# --------------------------------------------------------------------------- start-up


def test_auth_on_without_trusted_issuers_refuses_to_start():
    with pytest.raises(SettingsError, match="VCF_CDS_TRUSTED_ISSUERS.*VCF_CDS_AUTH=off"):
        make_app(AUTH="on")


def test_auth_is_on_by_default(monkeypatch, capsys, tmp_path):
    """``vcf-cds serve`` with no settings stops before serving, saying what to set."""
    for name in [n for n in os.environ if n.startswith("VCF_CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the default DATA_DIR, ./var, is then the test's own
    # serve() sets these for the whole process; later tests must not inherit them (metrics
    # read from multiprocess files, logs written to this test's captured stderr).
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "metrics"))
    monkeypatch.setattr(server, "configure_logging", lambda level: None)

    def serve(self):
        raise AssertionError("the server started without trusted issuers")

    monkeypatch.setattr(gunicorn.app.base.BaseApplication, "run", serve)
    assert cli_main(["serve", "--port", "1"]) == 2
    assert "VCF_CDS_TRUSTED_ISSUERS" in capsys.readouterr().err


def test_auth_off_warns_at_start_up(caplog):
    with caplog.at_level(logging.WARNING, logger="cds_service"):
        client = make_app(AUTH="off").test_client()
    assert "AUTH is off" in caplog.text
    assert client.get("/cds-services").status_code == 200


@pytest.mark.parametrize("content,message", [
    ("not json", "cannot read"),
    ("[]", "non-empty JSON list"),
    ('[{"iss": "a"}]', "exactly one of 'jwks_file'"),
    ('[{"iss": "a", "jwks_file": "x.json", "jku": ["https://a.example/jwks"]}]', "exactly one of 'jwks_file'"),
    ('[{"iss": "a", "jku": ["http://a.example/jwks"]}]', "must be an https URL"),
    ('[{"iss": "a", "jku": []}]', "jku"),
    ('[{"iss": "a", "jwks_file": "missing.json"}]', "not a usable JWK Set"),
    ('[{"iss": "a", "jku": ["https://a.example/j"]}, {"iss": "a", "jku": ["https://a.example/j"]}]', "listed twice"),
    ('[{"iss": "a", "jku": ["https://a.example/j"], "alg": "HS256"}]', "alg"),
], ids=["not-json", "empty", "no-keys", "both", "http-jku", "empty-jku", "missing-file", "duplicate", "unknown-field"])
def test_bad_trusted_issuers_file_refuses_to_start(tmp_path, content, message):
    path = tmp_path / "issuers.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SettingsError, match="VCF_CDS_TRUSTED_ISSUERS") as err:
        make_app(AUTH="on", TRUSTED_ISSUERS=str(path))
    assert message in str(err.value)


def test_replay_on_another_worker_is_refused_through_the_database(issuers_file, jwks_server):
    # Two apps on one database stand for two gunicorn workers (or two hosts).
    first = make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers_file)).test_client()
    second = make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers_file)).test_client()
    token = sandbox(jwks_server)
    assert post(first, token).status_code == 200
    assert_refused(post(second, token))


def test_a_replay_found_in_the_database_leaves_no_record_and_refused_calls_consume_their_jti(issuers_file,
                                                                                           jwks_server, caplog):
    # Two workers on one database: a replay reaching the other one is found when the call's
    # audit record and jti are written (one transaction), after the call was evaluated.
    first = make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers_file)).test_client()
    second = make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers_file)).test_client()
    token = sandbox(jwks_server)
    assert post(first, token).status_code == 200
    assert_refused(post(second, token))
    refused = sandbox(jwks_server)  # a call answered 400 has used its token all the same
    assert post(first, refused, body={"hook": "order-select"}).status_code == 400
    assert_refused(post(second, refused))
    unknown = "/cds-services/unknown-service"  # so has one answered 404, which has no audit record
    not_found = sandbox(jwks_server, unknown)
    assert post(first, not_found, unknown).status_code == 404
    with caplog.at_level(logging.INFO, logger="cds_service"):
        assert_refused(post(second, not_found, unknown))
    # The access log has the status sent, not the 404 the view made before the jti was written.
    assert [r.msg["status"] for r in caplog.records if r.name == "cds_service.access"] == [401]
    calls = table_rows(state_of(first.application).database, AuditCall)
    assert sorted(c["status"] for c in calls) == [200, 400]  # nothing of the replayed calls


def test_replay_cache_falls_back_to_the_process_while_the_database_is_down(issuers_file, jwks_server, caplog,
                                                                          monkeypatch):
    from sqlalchemy.exc import OperationalError

    from cds_service.store.db import Database

    def database_down(self, conn, key, expires_at):
        raise OperationalError("INSERT ...", {}, Exception("connection refused"))

    # The replay entry cannot be written, whether alone or in the hook call's audit transaction.
    monkeypatch.setattr(Database, "remember_token", database_down)
    client = make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers_file)).test_client()
    token = sandbox(jwks_server)
    with caplog.at_level(logging.ERROR, logger="cds_service"):
        assert post(client, token).status_code == 200  # order entry keeps working
    assert "replay cache database unavailable (OperationalError)" in caplog.text
    assert_refused(post(client, token))  # and a replay within this process is still caught


def test_why_this_advice_link_opens_without_a_client_jwt(client, jwks_server):
    # The clinician's browser follows the card link with no JWT: the signed link is the credential.
    body = load_json(FIXTURES / "requests/seed-001-v3-ct-with-contrast.json")
    answer = post(client, sandbox(jwks_server), body=body).get_json()
    link = answer["cards"][0]["links"][0]
    assert link["label"] == "Why this advice?"
    page = client.get(link["url"].removeprefix(BASE))
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert client.get("/explain?token=forged").status_code == 403
