"""Inputs that used to get a 500, a 503 forever, a silent audit gap or an accepted bad token,
and a readiness check that missed a database unable to take writes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import uuid

import pytest
from client_tokens import BASE, bearer, sandbox_file_app, sandbox_token
from conftest import FIXTURES, load_json, make_app
from faults import clean_env, serve_process
from replay import SERVICE_URL, overridden, post_feedback, table_rows
from sqlalchemy.engine import make_url

from cds_service.store.tables import AuditCall, Feedback
from cds_service.web.state import state_of

REQUEST = load_json(FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json")


# ----------------------------------------------------------------------------- feedback


def test_a_timestamp_past_the_last_utc_instant_is_a_400(db_app, database):
    resp = post_feedback(db_app.test_client(), overridden(str(uuid.uuid4()), when="9999-12-31T23:59:59-23:59"))
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["issue"][0]["expression"] == ["feedback[0].outcomeTimestamp"]
    assert table_rows(database, Feedback) == []


@pytest.mark.parametrize("where", ["comment", "reason"])
def test_a_nul_character_in_feedback_is_a_400_on_every_database(where, db_app, database):
    reason = {"system": "http://example.org/reasons", "code": "x\x00y"} if where == "reason" else None
    entry = overridden(str(uuid.uuid4()), reason=reason, comment="fine\x00" if where == "comment" else None)
    resp = post_feedback(db_app.test_client(), entry)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert "NUL" in resp.get_json()["issue"][0]["diagnostics"]
    assert table_rows(database, Feedback) == []


def test_a_nul_character_in_hook_instance_is_still_audited(db_app, database):
    body = {**REQUEST, "hookInstance": "d1577c69-dfbe-44ad-ba6d\x00-3e05e953b2ea"}
    resp = db_app.test_client().post(SERVICE_URL, json=body)
    assert resp.status_code == 200
    assert state_of(db_app).audit.failures.value == 0
    [call] = table_rows(database, AuditCall)
    assert call["hook_instance"] == "d1577c69-dfbe-44ad-ba6d\ufffd-3e05e953b2ea"


def _with_lone_surrogate(where: str) -> dict:
    body = json.loads(json.dumps(REQUEST))
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    lone = "x\ud800y"  # what a request decodes to from the escape "x\\ud800y"
    if where == "hookInstance":
        body["hookInstance"] = lone
    elif where == "fhirServer":
        body["fhirServer"] = "https://ehr.example.org/" + lone
    elif where == "selections":
        body["context"]["selections"] = [lone]
    elif where == "order resourceType":
        order["resourceType"] = lone
    elif where == "prefetch key":
        body["prefetch"][lone] = None
    return body


@pytest.mark.parametrize("where, status", [("hookInstance", 200), ("fhirServer", 200), ("selections", 400),
                                           ("order resourceType", 400), ("prefetch key", 200)])
def test_a_lone_surrogate_escaped_in_the_request_is_answered_and_audited(where, status, db_app, database):
    # JSON lets a request escape half of a surrogate pair ("\ud800"); no UTF-8 text can hold
    # one. The answer is still JSON (such a character written back escaped), never a 500.
    raw = json.dumps(_with_lone_surrogate(where)).encode("ascii")
    resp = db_app.test_client().post(SERVICE_URL, data=raw, content_type="application/json")
    assert resp.status_code == status, resp.get_data(as_text=True)
    json.loads(resp.get_data())  # valid JSON, in valid UTF-8
    assert state_of(db_app).audit.failures.value == 0
    [call] = table_rows(database, AuditCall)
    assert call["status"] == status


# ----------------------------------------------------------------------------- tokens


def test_exp_as_a_numeric_string_is_refused():
    app = sandbox_file_app()
    token = sandbox_token(BASE + SERVICE_URL)
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    for name in ("exp", "iat"):
        bad = sandbox_token(BASE + SERVICE_URL, **{name: str(claims[name])})
        assert app.test_client().post(SERVICE_URL, json=REQUEST, headers=bearer(bad)).status_code == 401
    assert app.test_client().post(SERVICE_URL, json=REQUEST, headers=bearer(token)).status_code == 200


def test_a_token_living_longer_than_the_maximum_is_refused():
    app = sandbox_file_app(JWT_MAX_LIFETIME_SECONDS=600)
    token = sandbox_token(BASE + SERVICE_URL)
    import jwt

    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    client = app.test_client()
    assert client.post(SERVICE_URL, json=REQUEST, headers=bearer(sandbox_token(BASE + SERVICE_URL, exp=iat + 601))
                       ).status_code == 401
    assert client.post(SERVICE_URL, json=REQUEST, headers=bearer(sandbox_token(BASE + SERVICE_URL, exp=iat + 600))
                       ).status_code == 200


# ----------------------------------------------------------------------------- readiness


def test_readyz_is_not_ready_when_postgresql_takes_no_write(db_config):
    if "DATABASE_URL" not in db_config:
        pytest.skip("read-only PostgreSQL session; SQLite: see the full/read-only file system test")
    url = make_url(db_config["DATABASE_URL"])
    options = url.query["options"] + " -cdefault_transaction_read_only=on"
    app = make_app(**{**db_config, "DATABASE_URL": url.update_query_dict({"options": options})
                      .render_as_string(hide_password=False)})
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["checks"]["database"].startswith("failed")
    state_of(app).database.dispose()


@contextlib.contextmanager
def small_file_system(path, size="4m"):
    """A tmpfs at ``path`` (root only, where mounts are allowed: skipped elsewhere)."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_readyz_is_not_ready_on_a_full_disk_or_a_read_only_file_system(tmp_path):
    with small_file_system(tmp_path / "small") as data_dir:
        app = make_app(DATA_DIR=str(data_dir))
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        filler = data_dir / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
        resp = client.get("/readyz")
        assert resp.status_code == 503 and resp.get_json()["checks"]["database"].startswith("failed")
        filler.unlink()
        assert client.get("/readyz").status_code == 200
        state_of(app).database.dispose()  # a file open for writing would keep it writable
        subprocess.run(["mount", "-o", "remount,ro", str(data_dir)], check=True)
        resp = client.get("/readyz")
        assert resp.status_code == 503, resp.get_data(as_text=True)
        state_of(app).database.dispose()


# ----------------------------------------------------------------------------- the HTTP server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    log_path = tmp / "serve.log"
    env = clean_env(VCF_CDS_AUTH="off", VCF_CDS_DATA_DIR=str(tmp / "var"))
    with serve_process(env, log_path) as url:
        yield url, log_path


def raw_exchange(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


SECRET = "eyJzZWNyZXQiOiJsaW5rLXRva2VuIn0.c2lnbmF0dXJl"


@pytest.mark.parametrize("name, request_bytes, status", [
    ("malformed chunked body", b"POST /cds-services/vcf-order-select HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    ("malformed request line", f"GET /explain?token={SECRET} HTTP/1.1 extra\r\nHost: x\r\n\r\n".encode(), 400),
    ("request line too long", f"GET /explain?token={SECRET}{'A' * 5000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 414),
    ("headers too large", b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"X-Filler-{i}: {'a' * 100}\r\n".encode() for i in range(120)) + b"\r\n", 431),
    ("unknown transfer coding", b"POST /cds-services/vcf-order-select HTTP/1.1\r\nHost: x\r\n"
                                b"Transfer-Encoding: x-unknown, chunked\r\n\r\n0\r\n\r\n", 501),
])
def test_what_the_http_server_refuses_is_a_json_outcome_and_never_logged_whole(name, request_bytes, status, served):
    url, log_path = served
    got, headers, body = raw_exchange(url, request_bytes)
    assert got == status, (name, body)
    assert headers["content-type"].startswith("application/json"), name
    assert json.loads(body)["resourceType"] == "OperationOutcome"
    assert SECRET not in log_path.read_text(), "the request line reached the log"
