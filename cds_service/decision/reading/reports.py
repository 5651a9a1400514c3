"""Read radiology reports (FHIR R4 DiagnosticReport JSON): findings, levels, assertion status.

What is read, in order: ``conclusion``; when it is empty, every ``presentedForm`` attachment
of content type ``text/plain`` with inline base64 ``data``. Other attachments (PDF, HTML, a
``url`` without data) are not read and come back as :class:`SkippedContent` so the caller can
list them under ``skippedResources``.

How: the text is split into blocks (blank lines, list items, headings) and sentences (spaCy's
rule-based sentencizer; medspaCy's PyRuSH splitter costs ten times the rest); only sentences
that contain a target phrase of ``data/reading/findings.json`` go through medspaCy's target
matcher and ConText (Harkema et al., J Biomed Inform 2009), with medspaCy's default English
rules plus those of ``data/reading/context-rules.json``. Each finding gets the vertebral
level(s) nearest to it in its clause (``data/reading/levels.json``), or those of the sentence
before when its own sentence names none (marked ``level_inferred``). A fracture gets the acuity
word nearest to it (acute, subacute, chronic, healed, age-indeterminate).

Every finding is evidence from report text: it is unconfirmed by nature, and carries the report
id, date, and the sentence, for the card and the "Why this advice?" page.

Cost: results per text are cached per process by content hash (bounded LRU, ``CACHE_SIZE``
entries); a text with no target phrase at all skips the NLP entirely.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from cds_service.decision.frozen import replaced
from cds_service.decision.reading._fhir import codings, concept_text, iso_date, mapping, parse_fhir_datetime
from cds_service.decision.reading.loader import FindingDef, ReadingKnowledge, TargetPhrase, load_reading_knowledge

Status = Literal["affirmed", "negated", "uncertain", "hypothetical", "historical", "family"]
CACHE_SIZE = 512

# ConText modifier category -> assertion status, strongest first: a hypothetical or negated
# mention is never affirmed, whatever else modifies it.
_STATUS_ORDER: tuple[tuple[str, Status], ...] = (
    ("HYPOTHETICAL", "hypothetical"),
    ("NEGATED_EXISTENCE", "negated"),
    ("POSSIBLE_EXISTENCE", "uncertain"),
    ("HISTORICAL", "historical"),
    ("FAMILY", "family"),
)
# A bare number after a level is a second level ("L4-5", "L2 and 3") unless it is a measurement.
_UNIT_AFTER = re.compile(r"\s*(?:mm|cm|%|percent|degrees?|°|x\b|weeks?|months?|years?)", re.IGNORECASE)


@dataclass(frozen=True)
class TextFinding:
    """One finding mention in report text (no report metadata): what the cache holds."""

    finding: str
    label: str
    status: Status
    present: bool
    levels: tuple[str, ...]
    level_inferred: bool
    acuity: str | None
    incidental: bool
    sentence: str
    matched: str


@dataclass(frozen=True)
class ReportFinding(TextFinding):
    """A finding read from one report: the :class:`TextFinding` plus the report it was read from.

    ``present`` is True when the mention is affirmed (or uncertain, for findings whose
    ``uncertainCounts`` is set, e.g. features suspicious for malignancy). ``levels`` are
    vertebral levels such as ``("T12", "L1")``; empty when the text names none. Always
    ``unconfirmed``: it comes from free text, not a coded fact.
    """

    report_id: str | None
    report_date: str | None
    modality: str | None
    region: str | None
    is_spine_mri: bool
    unconfirmed: bool = True

    def evidence(self) -> dict[str, Any]:
        """JSON-ready evidence: report reference, date, sentence, status, levels."""
        return {
            "resource": f"DiagnosticReport/{self.report_id}" if self.report_id else "DiagnosticReport",
            "date": self.report_date,
            "finding": self.finding,
            "status": self.status,
            "levels": list(self.levels),
            "levelInferred": self.level_inferred,
            "acuity": self.acuity,
            "sentence": self.sentence,
            "spineMri": self.is_spine_mri,
            "source": "from report text, unconfirmed",
        }


@dataclass(frozen=True)
class SkippedContent:
    """An attachment (or a report) not read, and why: for ``skippedResources``."""

    resource_type: str
    resource_id: str | None
    content_type: str | None
    reason: str


@dataclass(frozen=True)
class ReportReading:
    """What one DiagnosticReport says: classification, findings, attachments not read.

    ``date`` is ``effectiveDateTime`` / ``effectivePeriod.start`` / ``issued`` (UTC), or None.
    ``text_source`` is ``"conclusion"``, ``"presentedForm"`` or None (nothing readable).
    """

    report_id: str | None
    status: str | None
    date: datetime | None
    code: str | None
    code_display: str
    is_radiology: bool
    modality: str | None
    region: str | None
    is_spine_mri: bool
    text_source: str | None
    findings: tuple[ReportFinding, ...] = ()
    skipped: tuple[SkippedContent, ...] = ()

    def present(self, finding: str, level: str | None = None) -> tuple[ReportFinding, ...]:
        """The present mentions of ``finding`` (at ``level`` when given)."""
        return tuple(f for f in self.findings
                     if f.finding == finding and f.present and (level is None or level in f.levels))


# ---------------------------------------------------------------------------------------
# The NLP engine: built once per knowledge version and shared; uncached texts are read under
# its lock, the cache has its own.


class _Engine:
    def __init__(self, knowledge: ReadingKnowledge):
        with warnings.catch_warnings():
            # spaCy 3.7 imports click/typer APIs that warn DeprecationWarning at import time:
            # third-party noise, not ours to fix (and an error under the test suite's filters).
            warnings.simplefilter("ignore", DeprecationWarning)
            import spacy
            from medspacy.context import ConTextRule
            from medspacy.ner import TargetRule

        self.lock = threading.Lock()
        self.k = knowledge
        # spaCy's rule-based sentencizer, on blocks split at blank lines, list items and headings:
        # medspaCy's PyRuSH splitter was measured at ~22 ms for a 450-character report (pure
        # Python rule engine), ten times the rest of the reading.
        self.sentencizer = spacy.blank("en")
        self.sentencizer.add_pipe("sentencizer")
        self.nlp = spacy.blank("en")
        matcher: Any = self.nlp.add_pipe("medspacy_target_matcher")
        context: Any = self.nlp.add_pipe("medspacy_context")
        self.targets: dict[tuple[str, str], TargetPhrase] = {}
        self.defs: dict[str, FindingDef] = {}
        rules = []
        phrases: list[str] = []
        for fd in knowledge.findings.findings:
            self.defs[fd.id] = fd
            for t in fd.targets:
                self.targets[(fd.id, t.phrase.lower())] = t
                words = [tok.lower_ for tok in self.nlp.make_doc(t.phrase)]
                # One-token phrases as token patterns, longer ones as phrases: medspaCy keeps a
                # token matcher and a phrase matcher, and spaCy warns on every call for an empty one.
                rules.append(TargetRule(t.phrase, fd.id, pattern=[{"LOWER": words[0]}]) if len(words) == 1
                             else TargetRule(t.phrase, fd.id))
                phrases.append(t.phrase)
        matcher.add(rules)
        context.add([ConTextRule(r.literal, r.category, direction=r.direction) for r in knowledge.context.rules])
        # Prefilter: a sentence goes through ConText only when one of these occurs in it.
        alternatives = sorted({re.escape(p.lower()) for p in phrases}, key=len, reverse=True)
        self.prefilter = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)
        acuity = knowledge.findings.fractureAcuity
        self.acuity_window = acuity.window
        # Tokenised like the sentences, so "age-indeterminate" is matched as age / - / indeterminate.
        self.acuity_terms = sorted((([t.lower_ for t in self.nlp.make_doc(p)], term.acuity)
                                    for term in acuity.terms for p in term.phrases), key=lambda x: -len(x[0]))
        self.incidental = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in knowledge.findings.incidental.phrases)
                                     + r")(?!\w)", re.IGNORECASE)
        lv = knowledge.levels
        self.level_re = re.compile(lv.level)
        self.joiner_re = re.compile(lv.joiners, re.IGNORECASE)
        self.bare_re = re.compile(lv.joiners + lv.bareNumberAfterJoiner, re.IGNORECASE)
        self.not_level = [re.compile(p, re.IGNORECASE) for p in lv.notLevel]
        self.order = {name: i for i, name in enumerate(lv.order)}
        self.order_list = lv.order
        self.aliases = {k.upper(): v for k, v in lv.letterAliases.items()}
        self.range_joiners = {j.lower() for j in lv.rangeJoiners}

    # -- levels -------------------------------------------------------------------------

    def _level_name(self, letter: str, number: str) -> str | None:
        name = self.aliases.get(letter.upper(), letter.upper()) + str(int(number))
        return name if name in self.order else None

    def _expand(self, a: str, b: str, joiner: str) -> list[str]:
        if joiner.strip().lower() in self.range_joiners:
            ia, ib = self.order[a], self.order[b]
            if 0 < ib - ia < self.k.levels.maxRange:
                return list(self.order_list[ia:ib + 1])
        return [a, b]

    def level_groups(self, text: str) -> list[tuple[int, int, tuple[str, ...]]]:
        """Level groups in ``text``: (start, end, levels) with ranges expanded, in order."""
        excluded: list[tuple[int, int]] = []
        for rx in self.not_level:
            excluded += [(m.start(), m.end()) for m in rx.finditer(text)]
        singles: list[tuple[int, int, str]] = []
        for m in self.level_re.finditer(text):
            if any(s <= m.start() < e for s, e in excluded):
                continue
            name = self._level_name(m.group("letter"), m.group("number"))
            if name:
                singles.append((m.start(), m.end(), name))
        groups: list[tuple[int, int, tuple[str, ...]]] = []
        i = 0
        while i < len(singles):
            start, end, name = singles[i]
            levels = [name]
            while True:
                # bare number continuation: "L4-5", "L2 and 3"
                bm = self.bare_re.match(text, end)
                if bm and not _UNIT_AFTER.match(text, bm.end()) and not text[bm.end():bm.end() + 1].isalnum():
                    nxt = self._level_name(levels[-1][0], bm.group("number"))
                    if nxt and self.order[nxt] > self.order[levels[-1]]:
                        joiner = text[end:bm.start("number")]
                        levels[-1:] = self._expand(levels[-1], nxt, joiner)
                        end = bm.end()
                        continue
                if i + 1 < len(singles) and self.joiner_re.fullmatch(text[end:singles[i + 1][0]]):
                    joiner = text[end:singles[i + 1][0]]
                    nxt = singles[i + 1][2]
                    if self.order[nxt] > self.order[levels[-1]]:
                        levels[-1:] = self._expand(levels[-1], nxt, joiner)
                    elif nxt not in levels:
                        levels.append(nxt)
                    end = singles[i + 1][1]
                    i += 1
                    continue
                break
            groups.append((start, end, tuple(dict.fromkeys(levels))))
            i += 1
        return groups

    # -- acuity -------------------------------------------------------------------------

    def acuity_near(self, words: Sequence[str], start: int, end: int) -> str | None:
        """The acuity term nearest to tokens [start, end) within the window, or None."""
        best: tuple[int, str] | None = None
        for tokens, acuity in self.acuity_terms:
            n = len(tokens)
            lo, hi = max(0, start - self.acuity_window - n), min(len(words), end + self.acuity_window)
            for i in range(lo, hi - n + 1):
                if words[i:i + n] == tokens:
                    dist = start - (i + n) if i + n <= start else (i - end if i >= end else 0)
                    if best is None or dist < best[0]:
                        best = (dist, acuity)
        return best[1] if best else None

    # -- one sentence ---------------------------------------------------------------------

    def _allowed(self, t: TargetPhrase, sentence_lower: str, has_level: bool, preceding: Sequence[str],
                 following: Sequence[str]) -> bool:
        if t.requiresAny and not any((has_level if r == "<level>" else r in sentence_lower) for r in t.requiresAny):
            return False
        return not any(w in preceding for w in t.excludeIfPreceding) and not any(w in following for w in t.excludeIfFollowing)

    def read_sentences(self, items: Sequence[tuple[str, tuple[str, ...]]]) -> list[TextFinding]:
        """Findings in ``(sentence, inherited levels)`` items, run as one document (one pass of
        the target matcher and ConText; each sentence is its own ConText scope)."""
        if not items:
            return []
        starts: list[int] = []
        pos = 0
        for sentence, _ in items:
            starts.append(pos)
            pos += len(sentence) + 1
        doc = self.nlp.make_doc(" ".join(sentence for sentence, _ in items))
        start_set = set(starts)
        for i, tok in enumerate(doc):
            tok.is_sent_start = i == 0 or tok.idx in start_set
        for _, proc in self.nlp.pipeline:
            doc = proc(doc)
        out: list[TextFinding] = []
        per_sentence: dict[int, tuple[str, list[tuple[int, int, tuple[str, ...]]], list[int], list[str], int, bool]] = {}
        for ent in doc.ents:
            t = self.targets.get((ent.label_, ent.text.lower()))
            if t is None:
                continue
            k = bisect.bisect_right(starts, ent.start_char) - 1
            if k not in per_sentence:
                sentence = items[k][0]
                sent = ent.sent
                per_sentence[k] = (sentence, self.level_groups(sentence), [m.start() for m in re.finditer(r";", sentence)],
                                   [tok.lower_ for tok in sent], sent.start, bool(self.incidental.search(sentence)))
            sentence, groups, clauses, words, first, incidental = per_sentence[k]
            s0, e0 = ent.start - first, ent.end - first
            if not self._allowed(t, sentence.lower(), bool(groups), words[max(0, s0 - 3):s0], words[e0:e0 + 4]):
                continue
            cats = {m.category for m in ent._.modifiers}
            status: Status = next((s for c, s in _STATUS_ORDER if c in cats), "affirmed")
            fd = self.defs[ent.label_]
            present = (status == "affirmed" or (status == "uncertain" and fd.uncertainCounts)
                       or (status == "historical" and fd.historicalCounts))
            offset = starts[k]
            levels, inferred = self._levels_for(ent.start_char - offset, ent.end_char - offset, groups, clauses, items[k][1])
            acuity = self.acuity_near(words, s0, e0) if fd.id == "fracture" else None
            out.append(TextFinding(fd.id, fd.label, status, present, levels, inferred, acuity,
                                   incidental and fd.id == "fracture", sentence.strip(), ent.text))
        return out

    @staticmethod
    def _levels_for(start: int, end: int, groups: list[tuple[int, int, tuple[str, ...]]], clauses: list[int],
                    inherited: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
        if not groups:
            return inherited, bool(inherited)

        def clause(pos: int) -> int:
            return sum(1 for c in clauses if c < pos)

        same = [g for g in groups if clause(g[0]) == clause(start)] or groups

        def distance(g: tuple[int, int, tuple[str, ...]]) -> int:
            return start - g[1] if g[1] <= start else (g[0] - end if g[0] >= end else 0)

        return min(same, key=distance)[2], False

    # -- a whole text ---------------------------------------------------------------------

    def read_text(self, text: str) -> tuple[TextFinding, ...]:
        if not self.prefilter.search(text):
            return ()
        sentences = [s.text for block in _blocks(text) for s in self.sentencizer(block).sents]
        items: list[tuple[str, tuple[str, ...]]] = []
        last_levels: tuple[str, ...] = ()
        since_levels = 99
        for sentence in sentences:
            inherited = last_levels if since_levels <= 1 else ()
            if self.prefilter.search(sentence):
                items.append((sentence, inherited))
            groups = self.level_groups(sentence)
            if groups:
                last_levels = tuple(dict.fromkeys(lv for g in groups for lv in g[2]))
                since_levels = 0
            else:
                since_levels += 1
        return tuple(self.read_sentences(items))


# Report text is often hard-wrapped: a single newline is a space, but a blank line, a numbered
# or bulleted item, or an upper-case heading ("IMPRESSION:") starts a new block.
_BLOCK_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:\d{1,2}[.)]|[-*\u2022])\s)|\n(?=\s*[A-Z][A-Z /]{2,40}:)")


def _blocks(text: str) -> list[str]:
    return [b for b in (" ".join(part.split()) for part in _BLOCK_BREAK.split(text)) if b]


_ENGINE_LOCK = threading.Lock()
_ENGINES: dict[str, _Engine] = {}


def _engine(knowledge: ReadingKnowledge) -> _Engine:
    with _ENGINE_LOCK:
        eng = _ENGINES.get(knowledge.version)
        if eng is None:
            eng = _ENGINES[knowledge.version] = _Engine(knowledge)
        return eng


@lru_cache(maxsize=1)
def _default_knowledge() -> ReadingKnowledge:
    return load_reading_knowledge()


class _LRU:
    """A small thread-safe LRU: text hash -> findings."""

    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict[str, tuple[TextFinding, ...]] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> tuple[TextFinding, ...] | None:
        with self.lock:
            value = self.data.get(key)
            if value is None:
                self.misses += 1
                return None
            self.data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: tuple[TextFinding, ...]) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


_CACHE = _LRU(CACHE_SIZE)


def cache_info() -> dict[str, int]:
    """Cache figures of this process: ``{"size", "hits", "misses", "max"}``."""
    with _CACHE.lock:
        return {"size": len(_CACHE.data), "hits": _CACHE.hits, "misses": _CACHE.misses, "max": _CACHE.size}


def clear_cache() -> None:
    """Empty the per-process cache (tests and benchmarks measuring a cold read)."""
    with _CACHE.lock:
        _CACHE.data.clear()
        _CACHE.hits = _CACHE.misses = 0


def read_text(text: str, knowledge: ReadingKnowledge | None = None) -> tuple[TextFinding, ...]:
    """Findings in free report text (cached by content hash). ``knowledge`` defaults to the bundled one."""
    k = knowledge or _default_knowledge()
    key = hashlib.sha256(f"{k.version}\0{text}".encode()).hexdigest()
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    engine = _engine(k)
    with engine.lock:
        # spaCy does not promise that one pipeline may run in several threads at once; only
        # uncached texts take this lock.
        result = engine.read_text(text)
    _CACHE.put(key, result)
    return result


def vertebral_levels(text: str, knowledge: ReadingKnowledge | None = None) -> tuple[tuple[str, ...], ...]:
    """The vertebral level groups named in ``text``, in order, ranges expanded
    (``"T11 through L2"`` -> ``(("T11", "T12", "L1", "L2"),)``); MRI sequence names (T1-weighted,
    T2 hyperintense) are not levels."""
    return tuple(g[2] for g in _engine(knowledge or _default_knowledge()).level_groups(text))


# ---------------------------------------------------------------------------------------
# DiagnosticReport


def _report_text(report: Mapping[str, Any], rid: str | None) -> tuple[str, str | None, list[SkippedContent]]:
    conclusion = report.get("conclusion")
    if isinstance(conclusion, str) and conclusion.strip():
        return conclusion, "conclusion", []
    parts: list[str] = []
    skipped: list[SkippedContent] = []
    for att in report.get("presentedForm") or ():
        if not isinstance(att, Mapping):
            continue
        ctype = att.get("contentType") if isinstance(att.get("contentType"), str) else None
        mime = (ctype or "").split(";")[0].strip().lower()
        if mime != "text/plain":
            skipped.append(SkippedContent("DiagnosticReport", rid, ctype, "content type not read (only text/plain)"))
            continue
        data = att.get("data")
        if not isinstance(data, str) or not data:
            skipped.append(SkippedContent("DiagnosticReport", rid, ctype, "no inline data (a url is not fetched)"))
            continue
        charset = "utf-8"
        m = re.search(r"charset\s*=\s*([\w-]+)", ctype or "", re.IGNORECASE)
        if m:
            charset = m.group(1)
        try:
            raw = base64.b64decode(data, validate=True)
            parts.append(raw.decode(charset))
        except (binascii.Error, ValueError, LookupError, UnicodeDecodeError):
            skipped.append(SkippedContent("DiagnosticReport", rid, ctype, "data is not valid base64 text"))
    if parts:
        return "\n\n".join(parts), "presentedForm", skipped
    return "", None, skipped


def _classify(report: Mapping[str, Any], text: str, k: ReadingKnowledge) -> tuple[str | None, str, str | None, str | None]:
    """(LOINC code, code text, modality, region) from the report code, its text, then the report header."""
    rt = k.report_types
    code_concept = report.get("code")
    loinc = None
    for c in codings(code_concept):
        if c.get("system") == "http://loinc.org":
            loinc = str(c["code"])
            for rc in rt.reportCodes:
                if rc.code == loinc:
                    return loinc, rc.display, rc.modality, rc.region
    display = " ".join(filter(None, [concept_text(code_concept)] + [str(c.get("display") or "") for c in codings(code_concept)]))
    modality = region = None
    for source in (display, text[:rt.headerChars]):
        if modality is None:
            modality = next((m.modality for m in rt.modalities if re.search(m.pattern, source, re.IGNORECASE)), None)
        if region is None:
            region = next((r.region for r in rt.regions if re.search(r.pattern, source, re.IGNORECASE)), None)
    return loinc, concept_text(code_concept), modality, region


def _is_radiology(report: Mapping[str, Any], k: ReadingKnowledge) -> bool:
    wanted = {(c.system, c.code) for c in k.report_types.radiologyCategories}
    return any((c.get("system"), c.get("code")) in wanted for cat in report.get("category") or () for c in codings(cat))


def report_date(report: Mapping[str, Any]) -> datetime | None:
    """``effectiveDateTime``, else ``effectivePeriod.start``, else ``issued`` (UTC), else None."""
    period = mapping(report.get("effectivePeriod"))
    return (parse_fhir_datetime(report.get("effectiveDateTime")) or parse_fhir_datetime(period.get("start"))
            or parse_fhir_datetime(report.get("issued")))


def read_report(report: Mapping[str, Any], knowledge: ReadingKnowledge | None = None) -> ReportReading:
    """Read one DiagnosticReport JSON dict (FHIR R4).

    Returns a :class:`ReportReading` whatever the report holds (no text: no findings, with the
    attachments not read in ``skipped``). Raises ``ValueError`` when ``report`` is not a
    DiagnosticReport. ``knowledge`` defaults to the bundled reading knowledge.
    """
    if not isinstance(report, Mapping) or report.get("resourceType") != "DiagnosticReport":
        raise ValueError("not a DiagnosticReport")
    k = knowledge or _default_knowledge()
    rid = report.get("id") if isinstance(report.get("id"), str) else None
    text, source, skipped = _report_text(report, rid)
    loinc, code_display, modality, region = _classify(report, text, k)
    is_spine_mri = modality == "MR" and region in k.report_types.spineRegions
    when = report_date(report)
    found = read_text(text, k) if text else ()
    day = iso_date(when)
    # The cached findings of the text, each as read from this report (a copy: this runs for
    # every finding of every report of every call).
    findings = tuple(replaced(f, ReportFinding, report_id=rid, report_date=day, modality=modality, region=region,
                              is_spine_mri=is_spine_mri, unconfirmed=True) for f in found)
    status = report.get("status") if isinstance(report.get("status"), str) else None
    return ReportReading(rid, status, when, loinc, code_display, _is_radiology(report, k), modality, region,
                         is_spine_mri, source, findings, tuple(skipped))


@dataclass(frozen=True)
class ReportsRead:
    """Readings of the usable reports, and what was not read (for ``skippedResources``)."""

    readings: tuple[ReportReading, ...]
    skipped: tuple[SkippedContent, ...] = field(default=())


def read_reports(resources: Iterable[Any], *, now: datetime, lookback_days: int,
                 knowledge: ReadingKnowledge | None = None) -> ReportsRead:
    """Read the DiagnosticReports among ``resources`` dated within ``lookback_days`` before ``now``.

    ``now`` must be timezone-aware (the caller's clock: this function reads none). Reports
    whose status is not usable (``report-types.json`` ``usableStatuses``, e.g. entered-in-error,
    cancelled) or that have no date are skipped with a reason; so are attachments not read.
    Readings are returned newest first.
    """
    k = knowledge or _default_knowledge()
    usable = set(k.report_types.usableStatuses)
    since = now - timedelta(days=lookback_days)
    readings: list[ReportReading] = []
    skipped: list[SkippedContent] = []
    for r in resources:
        if not isinstance(r, Mapping) or r.get("resourceType") != "DiagnosticReport":
            continue
        rid = r.get("id") if isinstance(r.get("id"), str) else None
        if r.get("status") not in usable:
            skipped.append(SkippedContent("DiagnosticReport", rid, None, f"status '{r.get('status')}' not read"))
            continue
        when = report_date(r)
        if when is None:
            skipped.append(SkippedContent("DiagnosticReport", rid, None, "no date: look-back cannot be applied"))
            continue
        if not since <= when <= now + timedelta(days=1):
            continue
        reading = read_report(r, k)
        readings.append(reading)
        skipped.extend(reading.skipped)
    readings.sort(key=lambda x: x.date or since, reverse=True)
    return ReportsRead(tuple(readings), tuple(skipped))
