"""``vcf-cds report`` on a database filled by replaying the fixtures and their feedback.

Expected counts come from the fixtures' manifest (cases.json): statuses, PAMA ratings of the
selected orders, ACR variants and card indicators; nothing here is a hard-coded count.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser

import pytest
from dbsupport import env_for
from replay import accepted, overridden, post_feedback, replay_fixtures

from cds_service.app import state_of
from cds_service.ops.cli import main
from cds_service.store.audit import CallRecord, write_record
from cds_service.store.report import PAMA_RATINGS, UNRATED, build_report, code_label, render_html

NEVER_ISSUED = "f6b95768-b1c8-40dc-8385-bf3504b82ffb"


def _csv_sections(text: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for block in text.strip().split("\n\n"):
        rows = list(csv.reader(io.StringIO(block)))
        header = rows[0]
        for row in rows[1:]:
            out.setdefault(row[0], []).append(dict(zip(header[1:], row[1:], strict=False)))
    return out


def _section(sections: dict, prefix: str) -> list[dict[str, str]]:
    (name,) = [n for n in sections if n.startswith(prefix)]
    return sections[name]


def _run_report(db_config, monkeypatch, capsys, *args: str) -> str:
    for key, value in env_for(db_config).items():
        monkeypatch.setenv(key, value)
    assert main(["report", *args]) == 0
    return capsys.readouterr().out


def _expected_from_manifest(replayed) -> dict:
    """What the report must show, from cases.json (and the request bodies for order codes)."""
    answered = [r for r in replayed if r.case["expect"]["status"] == 200]
    ratings: dict[tuple[str, str], Counter] = {}
    for r in answered:
        expect = r.case["expect"]
        for order in r.selected_orders():
            rating = expect["ratings"][f"ServiceRequest/{order['id']}"]
            # An unrated order keeps its variant when one applied (the rating withheld because the
            # order misses the fractured region): the manifest names it.
            variant = expect["variant"]
            coding = order["code"]["coding"][0]
            key = (variant or "none", code_label(coding["system"], coding["code"]))
            ratings.setdefault(key, Counter())[rating or UNRATED] += 1
    indicators = Counter(i for r in answered for i in r.case["expect"]["indicators"])
    info_options = [[alt.count("info") for alt in [r.case["expect"]["indicators"],
                                                   *r.case["expect"].get("acceptable_indicators", [])]]
                    for r in answered]
    return {
        "statuses": Counter(r.case["expect"]["status"] for r in replayed),
        "ratings": ratings,
        "critical": indicators["critical"],
        "warning": indicators["warning"],
        "info_range": (sum(min(o) for o in info_options), sum(max(o) for o in info_options)),
        "answered": len(answered),
    }


def test_report_on_replayed_fixtures_and_feedback_shows_the_expected_counts(db_app, db_config, monkeypatch, capsys):
    """The issue's "done" check. Clinicians' feedback, decided by indicator: every critical
    card accepted (all its suggestions), every warning card overridden with the service's
    override reasons in turn, info cards ignored; all of it sent twice, plus feedback for a
    card never issued."""
    client = db_app.test_client()
    replayed = replay_fixtures(client)
    expected = _expected_from_manifest(replayed)
    reasons = state_of(db_app).knowledge.cards.overrideReasons
    entries = []
    for card in (c for r in replayed if r.status == 200 for c in r.response["cards"]):
        if card["indicator"] == "critical":
            assert card.get("suggestions"), "a critical card offers what to order"
            entries.append(accepted(card, all_suggestions=True))
        elif card["indicator"] == "warning":
            code = reasons["codes"][len([e for e in entries if e["outcome"] == "overridden"]) % len(reasons["codes"])]
            entries.append(overridden(card["uuid"], {"system": reasons["system"], "code": code["code"]}))
    entries.append(overridden(NEVER_ISSUED))
    for _ in range(2):
        assert post_feedback(client, *entries).status_code == 200
    expected_reasons = Counter(reasons["codes"][i % len(reasons["codes"])]["display"]
                               for i in range(expected["warning"]))

    sections = _csv_sections(_run_report(db_config, monkeypatch, capsys, "--format", "csv"))

    assert {int(r["status"]): int(r["calls"]) for r in _section(sections, "Calls by HTTP status")} == expected["statuses"]

    shown = {(r["variant"], r["order code"]): Counter({k: int(r[k]) for k in [*PAMA_RATINGS, UNRATED] if int(r[k])})
             for r in _section(sections, "Orders by ACR variant")}
    assert shown == expected["ratings"]
    for r in _section(sections, "Orders by ACR variant"):
        for rating in PAMA_RATINGS:
            assert r[f"% {rating}"] == f"{100 * int(r[rating]) / int(r['orders']):.1f}%"

    cards = _section(sections, "Cards by kind")
    by_indicator = {i: [r for r in cards if r["indicator"] == i] for i in ("critical", "warning", "info")}
    total = lambda rows, col: sum(int(r[col]) for r in rows)  # noqa: E731
    assert total(by_indicator["critical"], "issued") == total(by_indicator["critical"], "accepted") == expected["critical"]
    assert total(by_indicator["warning"], "issued") == total(by_indicator["warning"], "overridden") == expected["warning"]
    assert expected["info_range"][0] <= total(by_indicator["info"], "issued") <= expected["info_range"][1]
    assert total(cards, "accepted") == expected["critical"] and total(cards, "overridden") == expected["warning"]
    for r in by_indicator["critical"]:
        assert (r["acceptance rate"], r["override rate"]) == ("100.0%", "0.0%")

    reasons_shown = {r["reason"]: int(r["overrides"]) for r in _section(sections, "Top override reasons")}
    assert reasons_shown == dict(expected_reasons)

    weeks = _section(sections, "Trend per week")
    assert total(weeks, "calls") == expected["answered"]
    assert total(weeks, "cards") == total(cards, "issued")
    assert total(weeks, "accepted") == expected["critical"] and total(weeks, "overridden") == expected["warning"]
    assert all(date.fromisoformat(w["week of"]).weekday() == 0 for w in weeks)

    feedback = {r["measure"]: int(r["count"]) for r in _section(sections, "Feedback")}
    assert feedback["feedback for cards never issued (flagged)"] == 1
    assert feedback["feedback entries on issued cards"] == len(entries) - 1

    table = _run_report(db_config, monkeypatch, capsys)
    for (variant, code), _counts in expected["ratings"].items():
        words = [variant, *code.split()]  # "SNOMED CT 308482002" is three words
        assert any(line.split()[:len(words)] == words for line in table.splitlines()), (variant, code)


def _call(at: datetime, pama: str | None, variant: str | None, card_uuid: str, kind: str) -> CallRecord:
    call = {"called_at": at, "service_id": "vcf-order-select", "hook_instance": card_uuid, "patient_hmac": "0" * 64,
            "status": 200, "issue_code": None, "latency_ms": 3.0, "knowledge_version": "test"}
    order = {"position": 0, "code_system": "http://www.ama-assn.org/go/cpt", "code": "72158", "procedure": None,
             "variant": variant, "scenario": "selected", "acr_category": None, "provenance": None,
             "pama_rating": pama, "consult_id": None}
    card = {"uuid": card_uuid, "kind": kind, "indicator": "warning", "summary": "s", "suggestions": []}
    return CallRecord(call, [order], [card])


def test_since_and_weekly_trend(app_factory, database):
    """Calls in three weeks; --since keeps the later ones; weeks start on Monday (UTC)."""
    client = app_factory().test_client()
    monday = datetime(2026, 10, 5, 0, 30, tzinfo=UTC)  # a Monday
    plan = [(monday - timedelta(days=1), "appropriate", "a"),           # Sunday: week of 2026-09-28
            (monday, "not-appropriate", "b"),
            (monday + timedelta(days=6, hours=23), "not-appropriate", "c"),  # Sunday night, same week
            (monday + timedelta(days=14), "appropriate", "d")]
    for at, pama, tag in plan:
        write_record(database, _call(at, pama, "V1", f"00000000-0000-4000-8000-00000000000{tag}", "not-appropriate"))
    assert post_feedback(client, overridden("00000000-0000-4000-8000-00000000000b", when="2026-10-06T08:00:00Z")).status_code == 200

    report = build_report(database)
    weeks = {w.start: (w.calls, w.ratings.get("not-appropriate", 0), w.overridden) for w in report.weeks}
    assert weeks == {date(2026, 9, 28): (1, 0, 0), date(2026, 10, 5): (2, 2, 1), date(2026, 10, 19): (1, 0, 0)}

    later = build_report(database, since=date(2026, 10, 5))
    assert later.rating_totals() == Counter({"not-appropriate": 2, "appropriate": 1})
    assert [(c.kind, c.issued, c.overridden) for c in later.cards] == [("not-appropriate", 3, 1)]
    assert [w.start for w in later.weeks] == [date(2026, 10, 5), date(2026, 10, 19)]
    assert build_report(database, since=date(2026, 10, 13)).cards[0].overridden == 0


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter = Counter()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_draws_the_charts(db_app, database, db_config, monkeypatch, capsys, tmp_path):
    client = db_app.test_client()
    replayed = replay_fixtures(client)
    warning = next(c for r in replayed if r.status == 200 for c in r.response["cards"] if c["indicator"] == "warning")
    reasons = state_of(db_app).knowledge.cards.overrideReasons
    post_feedback(client, overridden(warning["uuid"], {"system": reasons["system"], "code": reasons["codes"][0]["code"]}))
    out = tmp_path / "report.html"
    _run_report(db_config, monkeypatch, capsys, "--format", "html", "--output", str(out))
    page = out.read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(page)
    assert parsed.tags["svg"] == 4 and parsed.tags["table"] == 6
    assert page.count("Matplotlib v") == 4  # drawn by the plotting library, not by hand
    text = " ".join(parsed.text)
    # Chart text stays text: axis labels name the variants, card kinds and reasons.
    for label in ("V1", "not-appropriate", reasons["codes"][0]["display"], "Trend per week"):
        assert label in text
    assert render_html(build_report(database, now=datetime(2026, 1, 1, tzinfo=UTC))) == \
        render_html(build_report(database, now=datetime(2026, 1, 1, tzinfo=UTC)))


def test_report_on_an_empty_database_says_none(db_app, db_config, monkeypatch, capsys):
    table = _run_report(db_config, monkeypatch, capsys)
    assert "(none)" in table
    assert "no data" in _run_report(db_config, monkeypatch, capsys, "--format", "html")


@pytest.mark.parametrize("value", ["2026-13-01", "last week"])
def test_since_must_be_a_date(value, capsys):
    with pytest.raises(SystemExit):
        main(["report", "--since", value])
    assert "YYYY-MM-DD" in capsys.readouterr().err
