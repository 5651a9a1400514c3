"""``vcf-cds serve`` as an operator runs it: gunicorn workers behind one port, readiness,
metrics summed over the workers, JSON logs, graceful stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from conftest import FIXTURES, ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_workers_that_share_metrics_and_stops_gracefully(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VCF_CDS_", "PROMETHEUS_"))}
    env["VCF_CDS_AUTH"] = "off"  # the test calls stand in for an EHR; authentication is tested elsewhere
    env["VCF_CDS_DATA_DIR"] = str(tmp_path / "var")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "cds_service.ops.cli", "serve", "--port", str(port),
                                 "--workers", "2"], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "not ready within 30 s"
                time.sleep(0.05)
            body = (FIXTURES / "bench" / "typical-request.json").read_bytes()
            for _ in range(6):
                resp = requests.post(f"{url}/cds-services/vcf-order-select", data=body,
                                     headers={"Content-Type": "application/json"}, timeout=10)
                assert resp.status_code == 200
            metrics = requests.get(f"{url}/metrics", timeout=5).text
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
    assert code == 0
    # Six calls, whichever worker answered them, and both ratings of each.
    assert 'vcf_cds_http_requests_total{endpoint="/cds-services/<service_id>",method="POST",status="200"} 6.0' in metrics
    assert 'vcf_cds_ratings_total{code="not-appropriate",variant="V1"} 6.0' in metrics
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]  # every line is JSON
    events = [line["event"] for line in lines]
    assert sum("warmed up" in e for e in events) == 2  # each worker, before taking traffic
    # One access line per hook call; readiness polls and the scrape log at DEBUG only.
    hook_calls = [line for line in lines if line["event"] == "request"]
    assert len(hook_calls) == 6 and all(line["status"] == 200 and line["hook_instance"] for line in hook_calls)
    metrics_dir = next(e for e in events if e.startswith("metrics directory")).split()[2]
    assert not Path(metrics_dir).exists()  # the temporary multiprocess directory is removed
