"""Scaling out: two service instances (two `vcf-cds serve` processes on their own ports) behind
the shipped nginx front, sharing one PostgreSQL, behave as one service.

Needs PostgreSQL (VCF_CDS_TEST_POSTGRES_URL; skipped without it, failed in CI) and nginx
(skipped without it, failed in CI).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from urllib.parse import urlsplit

import requests
from client_tokens import SANDBOX_ISSUERS_FILE, sandbox_token
from conftest import FIXTURES, ROOT
from faults import clean_env, free_port, fresh_postgres_schema, nginx_front, nginx_or_skip, serve_process

SERVICE = "/cds-services/vcf-order-select"
BODY = (FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json").read_bytes()


def post(url: str, public: str, cert: str | bool = False) -> requests.Response:
    return post_token(url, sandbox_token(public + SERVICE), cert)


def post_token(url: str, token: str, cert: str | bool = False) -> requests.Response:
    return requests.post(url + SERVICE, data=BODY, timeout=30, verify=cert,
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})


def answered_calls(env: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-m", "cds_service.ops.cli", "report", "--format", "csv"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # CSV blocks: a header row, then rows of (section, columns...).
    rows = [row for block in out.stdout.strip().split("\n\n") for row in list(csv.reader(io.StringIO(block)))[1:]]
    calls = [int(r[2]) for r in rows if r[0].startswith("Calls by HTTP status") and r[1] == "200"]
    assert calls, out.stdout
    return sum(calls)


def test_two_instances_behind_nginx_share_one_postgresql(tmp_path):
    nginx_or_skip()
    with fresh_postgres_schema() as (config, _url):
        front_port = free_port()
        public = f"https://127.0.0.1:{front_port}"
        env = clean_env(VCF_CDS_AUTH="on", VCF_CDS_TRUSTED_ISSUERS=str(SANDBOX_ISSUERS_FILE),
                        VCF_CDS_PUBLIC_BASE_URL=public, VCF_CDS_DB_TIMEOUT_SECONDS="30", **{f"VCF_CDS_{k}": v for k, v in config.items()})
        ports = [free_port(), free_port()]
        with serve_process({**env, "VCF_CDS_DATA_DIR": str(tmp_path / "a")}, tmp_path / "a.log", workers=1,
                           port=ports[0]) as a, \
                serve_process({**env, "VCF_CDS_DATA_DIR": str(tmp_path / "b")}, tmp_path / "b.log", workers=1,
                              port=ports[1]) as b, \
                nginx_front([f"127.0.0.1:{p}" for p in ports], tmp_path / "nginx", port=front_port) as front:
            # A token used on one instance is a replay on the other.
            token = sandbox_token(public + SERVICE)
            first = post_token(a, token)
            assert first.status_code == 200
            assert post_token(b, token).status_code == 401
            assert post_token(front["url"], token, front["cert"]).status_code == 401
            # "Why this advice?" issued by A opens on B, and through the front.
            link = first.json()["cards"][0]["links"][0]["url"]
            assert link.startswith(public + "/explain?token=")
            path = urlsplit(link)._replace(scheme="", netloc="").geturl()
            page = requests.get(b + path, timeout=30)
            assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
            assert requests.get(link, verify=front["cert"], timeout=30).status_code == 200
            # Calls to either instance, directly or through the front, all land in one audit trail.
            assert post(b, public).status_code == 200
            for _ in range(4):
                assert post(front["url"], public, front["cert"]).status_code == 200
            for log in ("a.log", "b.log"):  # each instance answered calls (the front spreads them)
                events = [json.loads(line).get("event") for line in (tmp_path / log).read_text().splitlines()
                          if line.startswith("{")]
                assert events.count("request") >= 2, log
        assert answered_calls(env) == 6
