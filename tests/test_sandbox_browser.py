"""The service in the real CDS Hooks sandbox: headless Chromium (Debian's) through Playwright.

Everything on loopback, authentication on: ``vcf-cds serve`` trusting the sandbox's public test
key (``examples/issuers.json``) with CORS for the sandbox's origin, the fixture FHIR server
(``fhir_fixtures/ehr_server.py``, as ``make sandbox-ehr`` runs it), and a build of the sandbox
(github.com/cds-hooks/sandbox) served as static files. Requests leaving the machine are refused.
Checked: discovery lists both services; on the PAMA screen a not-appropriate order gets our
warning card and the rating; clicking its first suggestion (an ``update`` of the draft order)
sends the acceptance as feedback, swaps the order and shows the new rating; Rx View and Rx Sign
(a MedicationRequest draft the service does not rate) get an answer listing it as skipped. Screenshots go to
``test-artifacts/sandbox-*.png`` (``VCF_CDS_TEST_ARTIFACTS`` to change), their paths printed;
``docs/img/`` holds reviewed copies, taken with ``VCF_CDS_SANDBOX_README_PORTS=1`` so that they
show the README walkthrough's ports (sandbox 8000, FHIR server 8081, service 8080; they must be free).

The sandbox is not part of this repository: build it yourself as its README describes and
set ``VCF_CDS_SANDBOX_BUILD`` to its ``build/`` directory; without it (or without Chromium and
the playwright package) these tests are skipped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from conftest import FIXTURES, ROOT
from processes import stop

CHROMIUM = os.environ.get("VCF_CDS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SANDBOX_BUILD = os.environ.get("VCF_CDS_SANDBOX_BUILD")
ARTIFACTS = Path(os.environ.get("VCF_CDS_TEST_ARTIFACTS") or ROOT / "test-artifacts")
PATIENT = "pt-9697fe64"  # seed-001: prior kyphoplasty, new back pain (ACR VCF variant V3)
STUDY = "Computed tomography, thoracic spine; with contrast material"
REASON = "Backache (finding)"


def _skip_unless_ready() -> None:
    if not SANDBOX_BUILD or not (Path(SANDBOX_BUILD) / "index.html").is_file():
        pytest.skip("VCF_CDS_SANDBOX_BUILD does not name a build of github.com/cds-hooks/sandbox")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VCF_CDS_CHROMIUM)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], work: Path, name: str, ready_url: str) -> subprocess.Popen:
    with (work / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(ready_url, timeout=2).status_code < 500:
                return proc
        except requests.ConnectionError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (work / f"{name}.log").read_text()[-2000:]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """The sandbox, the fixture FHIR server and the service, each on its own loopback port."""
    _skip_unless_ready()
    work = tmp_path_factory.mktemp("sandbox")
    if os.environ.get("VCF_CDS_SANDBOX_README_PORTS") == "1":
        ports = SimpleNamespace(sandbox=8000, ehr=8081, service=8080)
    else:
        ports = SimpleNamespace(sandbox=_free_port(), ehr=_free_port(), service=_free_port())
    origin = f"http://127.0.0.1:{ports.sandbox}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VCF_CDS_")}
    service_env = dict(env, VCF_CDS_DATA_DIR=str(work / "var"), VCF_CDS_AUTH="on", VCF_CDS_CORS_ORIGINS=origin,
                       VCF_CDS_TRUSTED_ISSUERS=str(ROOT / "examples" / "issuers.json"))
    procs = [
        _start([sys.executable, "-m", "http.server", str(ports.sandbox), "--bind", "127.0.0.1",
                "--directory", str(SANDBOX_BUILD)], env, work, "sandbox", origin + "/"),
        _start([sys.executable, str(FIXTURES / "ehr_server.py"), "--port", str(ports.ehr), "--cors-origin", origin],
               env, work, "ehr", f"http://127.0.0.1:{ports.ehr}/fhir/metadata"),
        _start([sys.executable, "-m", "cds_service.ops.cli", "serve", "--host", "127.0.0.1", "--port", str(ports.service),
                "--workers", "1"], service_env, work, "service", f"http://127.0.0.1:{ports.service}/healthz"),
    ]
    try:
        yield SimpleNamespace(origin=origin, fhir=f"http://127.0.0.1:{ports.ehr}/fhir",
                              discovery=f"http://127.0.0.1:{ports.service}/cds-services")
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def browser(stack):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def sandbox(browser, stack):
    """A fresh sandbox page; ``exchanges`` lists the service's answers (url, method, status, body)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # The sandbox also calls its public default services and FHIR server: refused, never sent.
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1:")
                  else route.abort())
    page = context.new_page()
    exchanges: list[dict] = []

    def record(response) -> None:
        if response.url.startswith(stack.discovery):
            try:
                body = response.json()
            except (ValueError, UnicodeDecodeError):
                body = None
            exchanges.append({"url": response.url, "method": response.request.method, "status": response.status,
                              "request": response.request.post_data, "body": body})

    page.on("response", record)

    def open_screen(hook: str, screen: str) -> None:
        page.goto(f"{stack.origin}/?fhirServiceUrl={stack.fhir}&patientId={PATIENT}"
                  f"&serviceDiscoveryURL={stack.discovery}&hook={hook}&screen={screen}")
        page.wait_for_load_state("networkidle")

    yield SimpleNamespace(page=page, exchanges=exchanges, open=open_screen)
    context.close()


def _shot(page, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"sandbox-{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")


def _settle(page, seconds: float = 1.0) -> None:
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(seconds * 1000)  # the sandbox renders after its redux round trip


def test_discovery_lists_both_services(sandbox, stack):
    sandbox.open("order-select", "pama")
    page = sandbox.page
    page.locator("header button").last.click()
    page.get_by_text("Configure CDS Services").click()
    for service in ("vcf-order-select", "vcf-order-sign"):
        page.get_by_role("dialog").get_by_text(f"{stack.discovery}/{service}", exact=True).wait_for()
    page.wait_for_timeout(1000)  # the dialog fades in
    discovery = [e for e in sandbox.exchanges if e["method"] == "GET" and e["url"] == stack.discovery]
    assert discovery and discovery[0]["status"] == 200  # signed by the sandbox, accepted with auth on
    _shot(page, "discovery")


def test_pama_screen_shows_our_card_and_a_suggestion_click(sandbox):
    sandbox.open("order-select", "pama")
    page = sandbox.page
    page.get_by_text("Search orders").click()
    page.keyboard.type("thoracic spine with contrast")
    page.get_by_text(STUDY, exact=True).click()
    _settle(page)
    page.get_by_text("Search reasons").click()
    page.keyboard.type("Backache")
    page.get_by_text(REASON, exact=True).click()
    _settle(page, 2)
    rating = page.get_by_text("PAMA Rating:")
    assert "not-appropriate" in rating.inner_text()
    answer = [e for e in sandbox.exchanges if e["method"] == "POST" and e["body"] and e["body"].get("cards")][-1]
    (card,) = answer["body"]["cards"]
    assert card["indicator"] == "warning"
    page.get_by_text(card["summary"], exact=True).first.wait_for()
    _shot(page, "pama-cards", full_page=True)

    suggestion = card["suggestions"][0]
    calls_before = len(sandbox.exchanges)
    page.get_by_role("button", name=suggestion["label"]).first.click()
    _settle(page, 2)
    after = sandbox.exchanges[calls_before:]
    feedback = [json.loads(e["request"]) for e in after if e["url"].endswith("/feedback")]
    assert feedback and feedback[0]["feedback"][0]["outcome"] == "accepted"
    assert all(e["status"] == 200 for e in after)
    # The sandbox applies update actions only: the order is swapped and rated again.
    (update,) = [a["resource"] for a in suggestion["actions"] if a["type"] == "update"]
    new_code = update["code"]["coding"][0]
    page.get_by_text(new_code["display"], exact=True).wait_for()
    assert "appropriate" in rating.inner_text() and "not-appropriate" not in rating.inner_text()
    again = [e for e in after if e["url"].endswith("/vcf-order-select") and new_code["code"] in (e["request"] or "")]
    assert again and again[-1]["body"]["cards"] == []
    _shot(page, "pama-after-suggestion", full_page=True)


@pytest.mark.parametrize(("hook", "screen"), [("order-select", "rx-view"), ("order-sign", "rx-sign")])
def test_rx_screens_get_an_answer(sandbox, hook, screen):
    sandbox.open(hook, screen)
    page = sandbox.page
    page.locator("input[name=medication-input]").fill("acetaminophen 325")
    page.locator("[role=button]", has_text="Acetaminophen 325 MG Oral Tablet").first.click()
    _settle(page)
    if screen == "rx-sign":
        page.get_by_role("button", name="Sign Order").click()
        _settle(page, 2)
    _shot(page, screen)
    calls = [e for e in sandbox.exchanges if e["method"] == "POST" and e["url"].endswith(f"vcf-{hook}")]
    assert calls and all(e["status"] == 200 for e in calls), [(e["status"], e["body"]) for e in calls]
    for e in calls:  # the MedicationRequest is not rated: no card, listed as skipped
        assert e["body"]["cards"] == [] and "systemActions" not in e["body"]
        skipped = e["body"]["extension"]["vcf-cds-hooks"]["skippedResources"]
        assert [(i["resource_type"], i["resource_id"]) for i in skipped] == [("MedicationRequest", "request-123")]
