"""The "Why this advice?" page in a real browser: headless Chromium (Debian's) through Playwright.

The service runs as it is deployed (``vcf-cds serve``: gunicorn, two worker processes sharing
one database) on loopback; each seed case is posted to the hook as an EHR would, and every
card's link is opened in Chromium, whichever worker answers it. Checked: the content (rating,
variant, the ordered row of the rating table, radiation icons, citation, from the case
manifest and the knowledge, not from the page's own code), and keyboard and screen-reader
basics (lang, one h1, heading order, table header scopes, the ordered row named in text,
links reachable with Tab, text contrast of at least 4.5:1 computed from the styles the
browser applied). The server's access log must hold neither a link's token nor the Referer
the browser sent. One full-page screenshot per case is kept in ``test-artifacts/``
(``VCF_CDS_TEST_ARTIFACTS`` to change), its path printed.

Without Chromium (``VCF_CDS_CHROMIUM``, default ``/usr/bin/chromium``) or the playwright
package these tests are skipped, unless ``VCF_CDS_REQUIRE_BROWSER=1`` (set by ``.ci/run``),
which makes them fail instead. Playwright never downloads a browser here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from conftest import FIXTURES, ROOT, load_json
from processes import stop

from cds_service.decision.engine import classify_order
from cds_service.decision.knowledge import CATEGORY_DISPLAY

CHROMIUM = os.environ.get("VCF_CDS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REQUIRE_BROWSER = os.environ.get("VCF_CDS_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(os.environ.get("VCF_CDS_TEST_ARTIFACTS") or ROOT / "test-artifacts")
SELECT_URL = "/cds-services/vcf-order-select"
SEED_CASES = [c for c in load_json(FIXTURES / "cases.json") if c["id"].startswith("seed-")]
CARD_CASES = [c for c in SEED_CASES if c["expect"]["indicators"]]
MIN_CONTRAST = 4.5

# Run in the page by the test (the page itself has no script): every element with text of
# its own, its text colour, and the first opaque background behind it.
_TEXT_COLOURS_JS = """() => {
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    if (!own || el.getClientRects().length === 0) continue;
    let bg = 'rgba(0, 0, 0, 0)';
    for (let p = el; p; p = p.parentElement) {
      const c = getComputedStyle(p).backgroundColor;
      if (!/rgba\\(.*, 0\\)$/.test(c) && c !== 'transparent') { bg = c; break; }
    }
    out.push({text: own.slice(0, 40), color: getComputedStyle(el).color, background: bg});
  }
  return out;
}"""


def _browser_or_skip() -> None:
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VCF_CDS_CHROMIUM)"
    if problem:
        if REQUIRE_BROWSER:
            pytest.fail(problem + " (VCF_CDS_REQUIRE_BROWSER=1)")
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory):
    """``vcf-cds serve`` with two workers on a loopback port; ``url``, ``logs`` (its stdout and stderr)."""
    work = tmp_path_factory.mktemp("explain-browser")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VCF_CDS_")}
    env["VCF_CDS_DATA_DIR"] = str(work / "var")
    env["VCF_CDS_AUTH"] = "off"  # a browser is not a CDS Client; the hook calls here stand in for the EHR
    out, err = (work / "stdout.log").open("wb"), (work / "stderr.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cds_service.ops.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "2"], env=env, stdout=out, stderr=err, cwd=work)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/cds-services", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (work / "stderr.log").read_text()[-2000:]
        time.sleep(0.2)
    try:
        yield SimpleNamespace(url=url, logs=(work / "stdout.log", work / "stderr.log"))
    finally:
        stop(proc)
        out.close()
        err.close()


@pytest.fixture(scope="module")
def server(gunicorn) -> str:
    return gunicorn.url


@pytest.fixture(scope="module")
def browser():
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900}, java_script_enabled=False)
    yield context.new_page()
    context.close()


def _luminance(css: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(foreground: str, background: str) -> float:
    """WCAG 2.x contrast ratio of two CSS ``rgb(...)`` colours."""
    hi, lo = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_formula_matches_wcag_reference_values():
    assert contrast("rgb(0, 0, 0)", "rgb(255, 255, 255)") == pytest.approx(21.0)
    assert contrast("rgb(118, 118, 118)", "rgb(255, 255, 255)") == pytest.approx(4.54, abs=0.01)
    assert contrast("rgb(255, 255, 255)", "rgb(255, 255, 255)") == pytest.approx(1.0)


def test_seed_cases_without_cards_are_usually_appropriate_orders():
    """A Usually appropriate order gets no card (its rating travels in systemActions), so three
    seed cases have no card to link from (the thoracic MRI after an L2 kyphoplasty does not image
    the treated level: no post-augmentation card); every other seed case is opened in the browser."""
    silent = [c for c in SEED_CASES if c not in CARD_CASES]
    assert {c["id"] for c in silent} == {"seed-001-v3-ct-without", "seed-001-v3-pain-from-reasoncode-only",
                                         "seed-001-v3-mri-after-kyphoplasty"}
    assert all(set(c["expect"]["ratings"].values()) == {"appropriate"} for c in silent)


def _post(server: str, case: dict) -> tuple[dict, dict]:
    body = load_json(FIXTURES / case["file"])
    resp = requests.post(server + SELECT_URL, data=json.dumps(body), timeout=30,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text[:300]
    return body, resp.json()


@pytest.mark.parametrize("case", CARD_CASES, ids=[c["id"] for c in CARD_CASES])
def test_seed_case_cards_open_their_page_in_chromium(case, gunicorn, page, knowledge, capsys):
    server = gunicorn.url
    body, payload = _post(server, case)
    assert payload["cards"], "the manifest expects cards for this case"
    (selected,) = body["context"]["selections"]
    order = next(e["resource"] for e in body["context"]["draftOrders"]["entry"]
                 if f"ServiceRequest/{e['resource']['id']}" == selected)
    procedure = classify_order(knowledge, order).procedure
    pama = case["expect"]["ratings"][selected]
    variant = knowledge.variants.get(case["expect"]["variant"] or "")
    loaded: list[str] = []
    page.on("request", lambda r: loaded.append(r.url))
    for n, card in enumerate(payload["cards"]):
        url = card["links"][0]["url"]
        assert url.startswith(server + "/explain?token=")
        loaded.clear()
        # As from an EHR screen whose address names the patient: that must not reach the log.
        response = page.goto(url, referer=f"https://ehr.example.org/chart/{body['context']['patientId']}")
        assert response.status == 200 and response.headers["content-type"].startswith("text/html")
        assert loaded == [url], "the page loads nothing else"
        _check_accessibility(page)
        _check_content(page, card, procedure, pama, variant, knowledge)
        if n == 0:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / f"explain-{case['id']}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            with capsys.disabled():
                print(f"\nscreenshot: {shot}")
    logs = "".join(path.read_text(encoding="utf-8") for path in gunicorn.logs)
    requests_logged = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(r.get("event") == "request" and r.get("endpoint") == "/explain" and r.get("status") == 200
               for r in requests_logged)
    for card in payload["cards"]:
        assert card["links"][0]["url"].split("token=")[1] not in logs
    assert body["context"]["patientId"] not in logs


def _check_content(page, card: dict, procedure, pama: str | None, variant, knowledge) -> None:
    text = page.inner_text("main")
    assert card["summary"] in text
    order_facts = dict(zip(page.locator("dl.order dt").all_inner_texts(), page.locator("dl.order dd").all_inner_texts(), strict=False))
    if pama is None:
        assert order_facts["PAMA rating sent"] == "none: the order was not rated"
    else:
        assert order_facts["PAMA rating sent"].endswith(f"({pama})")
    assert order_facts["ACR procedure"].startswith(procedure.display)
    rows = page.locator("table.ratings tbody tr")
    if variant is None:
        assert rows.count() == 0
        topic = next(t for t in knowledge.topics if any(v.routing is None for v in t.variants))
    else:
        assert f"Variant {variant.id}: {variant.title}" in text
        assert rows.count() == len(variant.ratings)
        for i, rating in enumerate(variant.ratings):
            row = rows.nth(i)
            assert row.locator("th").inner_text().endswith(knowledge.procedures[rating.procedure].display)
            assert row.locator("td").nth(0).inner_text().startswith(CATEGORY_DISPLAY[rating.category])
            # Radiation drawn as the ACR's icons: as many as the table's radiation symbols.
            assert row.locator("svg.rrl-icon").count() == (rating.rrl or "").count("☢")
        ordered = page.locator("table.ratings tr.ordered")
        own = variant.rating_for(procedure.id)
        if own is None:
            assert ordered.count() == 0
            assert order_facts["ACR rating"] == "not rated"
        else:
            assert ordered.count() == 1
            # Named in text, not by colour alone.
            assert ordered.locator("th").inner_text().split(None, 1) == ["Ordered", procedure.display]
            assert order_facts["ACR rating"].startswith(CATEGORY_DISPLAY[own.category])
        topic = knowledge.variant_topic[variant.id]
    assert topic.citation in text
    assert page.locator(f'a[href="{topic.url}"]').count() == 1


def _check_accessibility(page) -> None:
    assert page.get_attribute("html", "lang") == "en"
    assert page.locator("h1").all_inner_texts() == ["Why this advice?"]
    levels = page.eval_on_selector_all("h1, h2, h3, h4, h5, h6", "els => els.map(e => Number(e.tagName[1]))")
    assert levels[0] == 1 and all(b <= a + 1 for a, b in zip(levels, levels[1:], strict=False)), levels
    for table in page.locator("table").all():
        assert table.locator("caption").count() == 1
        assert set(table.locator("thead th").evaluate_all("els => els.map(e => e.scope)")) == {"col"}
        assert set(table.locator("tbody th").evaluate_all("els => els.map(e => e.scope)")) <= {"row"}
        assert table.locator("tbody tr").count() == table.locator("tbody th").count()
    # Every link is reached with the Tab key.
    links = page.locator("a[href]").evaluate_all("els => els.map(e => e.href)")
    assert links
    focused = []
    for _ in range(len(links) + 2):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("() => document.activeElement && document.activeElement.href"))
    assert set(links) <= set(focused)
    low = [(t["text"], t["color"], t["background"], round(contrast(t["color"], t["background"]), 2))
           for t in page.evaluate(_TEXT_COLOURS_JS) if contrast(t["color"], t["background"]) < MIN_CONTRAST]
    assert low == [], low


def test_tampered_link_gets_the_plain_403_page_in_chromium(server, page):
    _, payload = _post(server, next(c for c in CARD_CASES if c["id"] == "seed-001-v3-ct-with-contrast"))
    url = payload["cards"][0]["links"][0]["url"]
    response = page.goto(url[:-4] + ("AAAA" if not url.endswith("AAAA") else "BBBB"))
    assert response.status == 403
    assert page.get_attribute("html", "lang") == "en"
    assert page.locator("h1").all_inner_texts() == ["This link is not valid"]
    assert "Traceback" not in page.content()
