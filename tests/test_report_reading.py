"""Reading radiology reports: the labelled sentence corpus (precision / recall per finding, with
floors), whole DiagnosticReports (conclusion, base64 presentedForm, PDF skipped), the cache, the
reading knowledge loader, and a guard that medspaCy's top-level ``tests`` package cannot shadow
this suite's modules."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import ROOT, load_json
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from cds_service.decision.reading import ReadingKnowledgeError, load_reading_knowledge
from cds_service.decision.reading.loader import DEFAULT_DIR
from cds_service.decision.reading.reports import (
    cache_info,
    clear_cache,
    read_report,
    read_reports,
    read_text,
    vertebral_levels,
)

CORPUS = ROOT / "tests" / "corpus" / "report-sentences.json"

# Floors the corpus must meet. Precision matters more than recall: a false "marrow edema" or
# "intravertebral cleft" moves vertebral augmentation to Usually appropriate (ACR variant 6), so
# those two carry the highest precision floor. Recall floors are lower: a missed finding leaves
# the order unrated with a request for the MRI result, which is safe.
PRECISION_FLOOR = {"marrow-edema": 0.95, "intravertebral-cleft": 0.95}
PRECISION_FLOOR_DEFAULT = 0.90
RECALL_FLOOR = {"marrow-edema": 0.85, "intravertebral-cleft": 0.85, "fracture": 0.85}
RECALL_FLOOR_DEFAULT = 0.75
ACUITY_PRECISION_FLOOR = 0.90

SEED_003_IMPRESSION = ("MRI THORACIC SPINE WITHOUT CONTRAST\n\nFINDINGS: There is an acute compression fracture of the T8 "
                       "vertebral body with approximately 25% loss of height. Extensive bone marrow edema is present "
                       "throughout the vertebral body on STIR images, with a small intravertebral cleft. No retropulsion. "
                       "The spinal canal is patent. No other fracture.\n\nIMPRESSION: Acute T8 vertebral compression "
                       "fracture with extensive bone marrow edema and a small intravertebral cleft.")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _mri_report(**overrides):
    report = {
        "resourceType": "DiagnosticReport",
        "id": "dr-t8-mri",
        "status": "final",
        "category": [{"coding": [{"system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "36532-0", "display": "MR Thoracic spine WO contrast"}],
                 "text": "MRI thoracic spine without contrast"},
        "subject": {"reference": "Patient/pt-a9594e86"},
        "effectiveDateTime": "2026-11-09T14:20:00Z",
        "issued": "2026-11-09T18:02:00Z",
        "conclusion": "Acute T8 vertebral compression fracture with extensive bone marrow edema and a small intravertebral cleft.",
    }
    report.update(overrides)
    DiagnosticReport.model_validate(report)
    return report


# ---------------------------------------------------------------------------------------
# Corpus


def _pairs(items, predicted: bool):
    """Set of (item id, label, level) for findings and for fracture acuity ("fracture:<acuity>")."""
    out: set[tuple[str, str, str | None]] = set()
    for item in items:
        if predicted:
            entries = [{"finding": f.finding, "levels": list(f.levels), "acuity": f.acuity}
                       for f in read_text(item["text"]) if f.present]
        else:
            entries = item["expected"]
        for e in entries:
            for level in e["levels"] or [None]:
                out.add((item["id"], e["finding"], level))
                if e["finding"] == "fracture" and e.get("acuity"):
                    out.add((item["id"], "fracture:" + e["acuity"], level))
    return out


def _scores(gold, pred):
    labels = sorted({p[1] for p in gold | pred})
    rows = {}
    for label in labels:
        g = {p for p in gold if p[1] == label}
        p = {x for x in pred if x[1] == label}
        tp = len(g & p)
        rows[label] = {"tp": tp, "fp": len(p - g), "fn": len(g - p),
                       "precision": tp / len(p) if p else 1.0, "recall": tp / len(g) if g else 1.0,
                       "false_positives": sorted(p - g), "false_negatives": sorted(g - p)}
    return rows


@pytest.fixture(scope="module")
def corpus():
    return load_json(CORPUS)["sentences"]


def test_corpus_is_large_enough_and_covers_every_category(corpus):
    assert len(corpus) >= 60
    categories = Counter(item["category"] for item in corpus)
    for needed in ("affirmed", "negated", "uncertain", "hypothetical", "historical", "other-level", "other-modality"):
        assert categories[needed] >= 4, f"corpus has only {categories[needed]} '{needed}' sentences"
    assert len({item["id"] for item in corpus}) == len(corpus)


def _print_table(title, rows):
    print(title)
    print(f"{'finding':<32}{'TP':>4}{'FP':>4}{'FN':>4}{'precision':>11}{'recall':>8}")
    for label, r in rows.items():
        print(f"{label:<32}{r['tp']:>4}{r['fp']:>4}{r['fn']:>4}{r['precision']:>11.2f}{r['recall']:>8.2f}")
        for fp in r["false_positives"]:
            print(f"    false positive: {fp}")
        for fn in r["false_negatives"]:
            print(f"    missed: {fn}")


def test_corpus_precision_and_recall_per_finding(corpus):
    held_out = [item for item in corpus if item["split"] == "second-batch"]
    _print_table(f"\nSecond batch only ({len(held_out)} sentences written after the rules were first frozen):",
                 _scores(_pairs(held_out, predicted=False), _pairs(held_out, predicted=True)))
    gold, pred = _pairs(corpus, predicted=False), _pairs(corpus, predicted=True)
    rows = _scores(gold, pred)
    _print_table(f"\nWhole corpus ({len(corpus)} sentences; pairs of finding x vertebral level):", rows)
    problems = []
    for label, r in rows.items():
        if label.startswith("fracture:"):
            if r["precision"] < ACUITY_PRECISION_FLOOR:
                problems.append(f"{label}: precision {r['precision']:.2f} < {ACUITY_PRECISION_FLOOR}")
            continue
        p_floor = PRECISION_FLOOR.get(label, PRECISION_FLOOR_DEFAULT)
        r_floor = RECALL_FLOOR.get(label, RECALL_FLOOR_DEFAULT)
        if r["precision"] < p_floor:
            problems.append(f"{label}: precision {r['precision']:.2f} < {p_floor}")
        if r["recall"] < r_floor:
            problems.append(f"{label}: recall {r['recall']:.2f} < {r_floor}")
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("text, finding, status", [
    ("No marrow edema to suggest acute fracture.", "marrow-edema", "negated"),
    ("Marrow edema at T12 cannot be excluded.", "marrow-edema", "uncertain"),
    ("The previously seen marrow edema at L1 has resolved.", "marrow-edema", "negated"),
    ("The intravertebral cleft at T11 is absent.", "intravertebral-cleft", "negated"),
    ("If pain persists, MRI could be obtained to evaluate for marrow edema.", "marrow-edema", "hypothetical"),
    ("History of L1 compression fracture.", "fracture", "historical"),
])
def test_context_rules_added_to_the_defaults(text, finding, status):
    found = [f for f in read_text(text) if f.finding == finding]
    assert found and found[0].status == status and not found[0].present


@pytest.mark.parametrize("text, groups", [
    ("T12-L1", [("T12", "L1")]),
    ("L1-L3", [("L1", "L2", "L3")]),
    ("T11 through L2", [("T11", "T12", "L1", "L2")]),
    ("C5-6 and L5-S1", [("C5", "C6", "L5", "S1")]),
    ("L2 and L3", [("L2", "L3")]),
    ("T10, T11, and T12", [("T10", "T11", "T12")]),
    ("Th12 and D11", [("T12", "T11")]),
    ("T8, 25% height loss; L1 and 2 cm lesion", [("T8",), ("L1",)]),
    ("T1-weighted and T2 hyperintense signal in the T2 vertebral body", [("T2",)]),
])
def test_vertebral_levels(text, groups):
    assert list(vertebral_levels(text)) == groups


# ---------------------------------------------------------------------------------------
# Whole DiagnosticReports


def test_conclusion_of_a_spine_mri_gives_edema_and_cleft_at_t8_with_evidence():
    reading = read_report(_mri_report())
    assert reading.text_source == "conclusion"
    assert (reading.modality, reading.region, reading.is_spine_mri, reading.is_radiology) == ("MR", "thoracic", True, True)
    assert reading.date == datetime(2026, 11, 9, 14, 20, tzinfo=UTC)
    edema = reading.present("marrow-edema", "T8")
    cleft = reading.present("intravertebral-cleft", "T8")
    fracture = reading.present("fracture", "T8")
    assert edema and cleft and fracture and fracture[0].acuity == "acute"
    evidence = edema[0].evidence()
    assert evidence["resource"] == "DiagnosticReport/dr-t8-mri"
    assert evidence["date"] == "2026-11-09"
    assert "bone marrow edema" in evidence["sentence"]
    assert evidence["source"] == "from report text, unconfirmed" and edema[0].unconfirmed
    assert not reading.skipped


def test_base64_text_presented_form_is_read_when_there_is_no_conclusion():
    report = _mri_report(code={"text": "MRI thoracic spine without contrast"})
    del report["conclusion"]
    report["presentedForm"] = [{"contentType": "text/plain; charset=utf-8", "data": _b64(SEED_003_IMPRESSION)}]
    reading = read_report(report)
    assert reading.text_source == "presentedForm"
    assert reading.is_spine_mri and reading.region == "thoracic" and reading.code is None
    assert reading.present("marrow-edema", "T8") and reading.present("intravertebral-cleft", "T8")
    # "No retropulsion." and "No other fracture." are read and negated, not present.
    assert not reading.present("retropulsion")
    assert {f.status for f in reading.findings if f.finding == "retropulsion"} == {"negated"}
    # The FINDINGS sentence without a level inherits T8 from the sentence before it.
    inferred = [f for f in reading.findings if f.finding == "marrow-edema" and f.level_inferred]
    assert inferred and inferred[0].levels == ("T8",)


def test_pdf_and_url_only_attachments_are_skipped_and_reported():
    report = _mri_report()
    del report["conclusion"]
    report["presentedForm"] = [
        {"contentType": "application/pdf", "data": base64.b64encode(b"%PDF-1.4 ...").decode()},
        {"contentType": "text/plain", "url": "Binary/report-text"},
        {"contentType": "text/plain", "data": _b64("Acute L1 compression fracture with marrow edema.")},
    ]
    reading = read_report(report)
    assert [(s.content_type, s.resource_id) for s in reading.skipped] == [("application/pdf", "dr-t8-mri"),
                                                                          ("text/plain", "dr-t8-mri")]
    assert "content type" in reading.skipped[0].reason and "url" in reading.skipped[1].reason
    assert reading.present("marrow-edema", "L1")


def test_pdf_only_report_has_no_findings_and_says_why():
    report = _mri_report()
    del report["conclusion"]
    report["presentedForm"] = [{"contentType": "application/pdf", "data": base64.b64encode(b"%PDF").decode()}]
    reading = read_report(report)
    assert reading.text_source is None and reading.findings == () and len(reading.skipped) == 1


def test_incidental_fracture_on_a_chest_ct_is_not_a_spine_mri():
    report = _mri_report(id="dr-chest-ct",
                         code={"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}],
                               "text": "CT chest without contrast"},
                         conclusion="1. No pulmonary embolism. 2. Incidental age-indeterminate compression deformity of T7.")
    reading = read_report(report)
    assert (reading.modality, reading.region, reading.is_spine_mri) == ("CT", "chest", False)
    fracture = reading.present("fracture", "T7")
    assert fracture and fracture[0].incidental and fracture[0].acuity == "age-indeterminate"
    assert not fracture[0].is_spine_mri


def test_read_reports_applies_look_back_and_status_and_sorts_newest_first():
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    recent = _mri_report()
    older = _mri_report(id="dr-old", effectiveDateTime="2026-03-01T10:00:00Z")
    erroneous = _mri_report(id="dr-error", status="entered-in-error")
    undated = _mri_report(id="dr-undated")
    del undated["effectiveDateTime"], undated["issued"]
    newer = _mri_report(id="dr-newer", effectiveDateTime="2026-11-20T10:00:00Z")
    result = read_reports([recent, older, erroneous, undated, newer, {"resourceType": "Observation"}],
                          now=now, lookback_days=84)
    assert [r.report_id for r in result.readings] == ["dr-newer", "dr-t8-mri"]
    assert {(s.resource_id, s.reason.split(":")[0]) for s in result.skipped} == {
        ("dr-error", "status 'entered-in-error' not read"), ("dr-undated", "no date")}


def test_not_a_diagnostic_report_is_refused():
    with pytest.raises(ValueError):
        read_report({"resourceType": "Observation"})


def test_reading_is_cached_by_content_and_cost_is_printed():
    three = [_mri_report(id=f"dr-{i}", conclusion=f"{SEED_003_IMPRESSION}\nAddendum {i}: no change.") for i in range(3)]
    read_text("warm the pipeline: acute T8 fracture.")
    clear_cache()
    t0 = time.perf_counter()
    first = [read_report(r) for r in three]
    cold = (time.perf_counter() - t0) * 1000 / 3
    t0 = time.perf_counter()
    for _ in range(20):
        again = [read_report(r) for r in three]
    cached = (time.perf_counter() - t0) * 1000 / 60
    info = cache_info()
    assert info["misses"] == 3 and info["hits"] == 60 and info["size"] == 3
    assert [r.findings for r in again] == [r.findings for r in first]
    print(f"\nreport reading: {cold:.2f} ms per report uncached (pipeline warm), {cached:.3f} ms per report cached "
          f"({len(SEED_003_IMPRESSION)} characters)")


def test_text_without_any_target_phrase_skips_the_pipeline():
    assert read_text("Normal alignment. Disc spaces preserved. Unremarkable paraspinal soft tissues.") == ()


# ---------------------------------------------------------------------------------------
# Knowledge


def test_reading_knowledge_loads_and_cites_its_sources():
    k = load_reading_knowledge()
    assert {f.id for f in k.findings.findings} >= {"fracture", "marrow-edema", "intravertebral-cleft", "retropulsion",
                                                    "vertebra-plana", "malignancy-features"}
    assert all(f.source for f in k.findings.findings)
    assert {"cannot be excluded", "has resolved", "is absent"} <= {r.literal for r in k.context.rules}
    assert "Patel IJ" in k.thresholds.citation and "2019" in k.thresholds.citation


def test_broken_reading_knowledge_names_file_and_entry(tmp_path: Path):
    target = tmp_path / "reading"
    shutil.copytree(DEFAULT_DIR, target)
    findings = json.loads((target / "findings.json").read_text(encoding="utf-8"))
    broken = copy.deepcopy(findings)
    broken["findings"][0]["source"] = ""
    (target / "findings.json").write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(ReadingKnowledgeError) as err:
        load_reading_knowledge(target)
    assert err.value.file == "findings.json" and "source" in err.value.entry

    (target / "findings.json").write_text(json.dumps(findings), encoding="utf-8")
    levels = json.loads((target / "levels.json").read_text(encoding="utf-8"))
    levels["level"] = "([CTL"
    (target / "levels.json").write_text(json.dumps(levels), encoding="utf-8")
    with pytest.raises(ReadingKnowledgeError, match=r"levels.json: level: .*regular expression"):
        load_reading_knowledge(target)


def test_prefetch_proposals_are_well_formed():
    k = load_reading_knowledge()
    keys = {p.key: p for p in k.prefetch.keys}
    assert set(keys) == {"radiologyReports", "medicationRequests", "medicationStatements", "coagulationLabs"}
    assert "category=http://loinc.org|LP29684-5" in keys["radiologyReports"].template
    for p in keys.values():
        assert "{{context.patientId}}" in p.template and "{patientId}" in p.query and p.purpose


# ---------------------------------------------------------------------------------------
# medspaCy installs top-level packages named 'tests' and 'resources' (medspacy_quickumls).


def test_this_suite_is_not_shadowed_by_site_packages_tests():
    conftest = sys.modules["conftest"]
    assert Path(conftest.__file__).resolve().parent == ROOT / "tests"
    # Shared test modules are imported by module name (tests/ has no __init__.py, pytest's default
    # 'prepend' import mode puts tests/ first on sys.path), never as 'tests.<name>': a
    # 'tests' package in site-packages therefore cannot replace them.
    assert not list((ROOT / "tests").rglob("__init__.py"))
    forbidden = ("from " + "tests", "import " + "tests")
    for path in (ROOT / "tests").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not any(f in text for f in forbidden), f"{path.name} imports the 'tests' package"
    assert not (ROOT / "resources").exists()


# ---------------------------------------------------------------------------------------
# Imaging facts for the decision (variant 6, seed 002, MRI reminder, repeat study, incidental)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_seed_003_mri_gives_edema_and_cleft_at_the_current_t8_fracture():
    from cds_service.decision.reading.imaging import imaging_facts

    facts = imaging_facts([read_report(_mri_report())], now=NOW)
    assert not facts.no_spine_mri
    assert {f.finding for f in facts.edema_or_cleft} == {"marrow-edema", "intravertebral-cleft"}
    assert facts.fracture_levels == ("T8",)
    assert all(f.evidence()["resource"] == "DiagnosticReport/dr-t8-mri" for f in facts.edema_or_cleft)


def test_seed_002_edema_at_a_previously_augmented_level_is_not_a_new_fracture():
    from cds_service.decision.reading.imaging import imaging_facts

    report = _mri_report(id="dr-after-vp", conclusion=("Persistent marrow edema at the previously augmented L1 level, "
                                                       "a common finding after vertebroplasty. No new fracture."))
    from_procedure = imaging_facts([read_report(report)], now=NOW, fracture_levels=["L1"], augmented_levels=["L1"])
    assert from_procedure.edema_or_cleft == () and len(from_procedure.edema_at_augmented_level) == 1
    # The report itself names the augmented level: same answer without a coded Procedure.
    from_text = imaging_facts([read_report(report)], now=NOW, fracture_levels=["L1"])
    assert from_text.edema_or_cleft == () and from_text.augmented_levels == ("L1",)


def test_edema_at_another_level_than_the_fracture_does_not_count():
    from cds_service.decision.reading.imaging import imaging_facts

    report = _mri_report(conclusion="Chronic T8 compression fracture without edema. Marrow edema in the L3 vertebral body "
                                    "without fracture, likely degenerative.")
    facts = imaging_facts([read_report(report)], now=NOW, fracture_levels=["T8"])
    assert facts.edema_or_cleft == ()


def test_an_mri_older_than_12_weeks_or_no_mri_means_no_spine_mri_on_record():
    from cds_service.decision.reading.imaging import imaging_facts

    old = _mri_report(effectiveDateTime="2026-08-01T10:00:00Z", issued="2026-08-01T12:00:00Z")
    assert imaging_facts([read_report(old)], now=NOW).no_spine_mri
    assert imaging_facts([], now=NOW).no_spine_mri


def test_incidental_fracture_from_a_chest_ct_and_the_same_study_recently():
    from cds_service.decision.reading.imaging import imaging_facts, same_study_recently

    chest = read_report(_mri_report(id="dr-chest", code={"text": "CT chest with contrast"},
                                    conclusion="Incidental age-indeterminate compression deformity of T7."))
    mri = read_report(_mri_report(effectiveDateTime="2026-11-20T10:00:00Z"))
    facts = imaging_facts([chest, mri], now=NOW)
    assert [f.report_id for f in facts.incidental_fractures] == ["dr-chest"]
    assert [r.report_id for r in same_study_recently([chest, mri], now=NOW, loinc="36532-0")] == ["dr-t8-mri"]
    assert [r.report_id for r in same_study_recently([chest, mri], now=NOW, modality="MR", region="thoracic")] == ["dr-t8-mri"]
    assert same_study_recently([chest, mri], now=NOW, modality="MR", region="lumbar") == ()


# ---------------------------------------------------------------------------------------
# The corpus reports (US Core DiagnosticReport for Report and Note, base64 text/plain presentedForm)


def _corpus_report(name):
    report = load_json(ROOT / "tests" / "corpus" / name)
    DiagnosticReport.model_validate(report)
    return report


def test_seed_003_mri_report_makes_variant_6_facts_and_lists_its_pdf_as_skipped():
    from cds_service.decision.reading.imaging import imaging_facts

    result = read_reports([_corpus_report("seed-003-mri-thoracic-spine.json")], now=NOW, lookback_days=365)
    (reading,) = result.readings
    assert reading.is_spine_mri and reading.text_source == "presentedForm"
    assert [(s.resource_id, s.content_type) for s in result.skipped] == [("dr-seed003-mri-t-spine", "application/pdf")]
    facts = imaging_facts(result.readings, now=NOW)
    assert {(f.finding, f.levels) for f in facts.edema_or_cleft} == {("marrow-edema", ("T8",)),
                                                                      ("intravertebral-cleft", ("T8",))}
    assert not reading.present("retropulsion") and not reading.present("malignancy-features")


def test_seed_002_mri_report_edema_only_at_the_augmented_level():
    from cds_service.decision.reading.imaging import imaging_facts

    readings = read_reports([_corpus_report("seed-002-mri-after-vertebroplasty.json")], now=NOW, lookback_days=365).readings
    facts = imaging_facts(readings, now=NOW)
    assert facts.augmented_levels == ("L1",)
    assert facts.edema_or_cleft == () and facts.edema_at_augmented_level
    assert not facts.no_spine_mri


def test_chest_ct_report_gives_an_incidental_fracture_and_no_spine_mri():
    from cds_service.decision.reading.imaging import imaging_facts

    readings = read_reports([_corpus_report("chest-ct-incidental-t7.json")], now=NOW, lookback_days=365).readings
    facts = imaging_facts(readings, now=NOW)
    assert facts.no_spine_mri
    assert {(f.levels, f.acuity, f.incidental) for f in facts.incidental_fractures} >= {(("T7",), "age-indeterminate", True)}
