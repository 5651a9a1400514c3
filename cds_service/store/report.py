"""Appropriateness report from the audit trail and feedback (``vcf-cds report``).

Sections, for calls on or after ``since`` (UTC date; default: everything kept):

- calls by HTTP status;
- orders by ACR variant and order code: how many were rated appropriate, not-appropriate,
  no-criteria-apply (Argonaut PAMA rating codes) or not rated, and their shares;
- cards by kind: issued, accepted and overridden (distinct cards with such feedback), and
  the acceptance / override rates (CDS Hooks 2.0 §Feedback; a card without feedback was
  ignored);
- top override reasons (override feedback entries by reason code);
- trend per ISO week (weeks start on Monday, UTC);
- feedback for cards this service never issued (stored, flagged, counted apart).

Formats: ``table`` (text), ``csv`` (one block per section, blank line between, the first
column names the section) and ``html`` (tables plus charts drawn by matplotlib, the ``report`` extra, embedded
as inline SVG: one self-contained file).
"""

from __future__ import annotations

import csv
import html
import io
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, select

from cds_service.decision.terminology import CPT, LOINC, SNOMED
from cds_service.extras import MissingExtraError
from cds_service.store.db import Database
from cds_service.store.feedback import FLAG_UNKNOWN_CARD
from cds_service.store.tables import AuditCall, AuditCard, AuditOrder, Feedback

PAMA_RATINGS = ("appropriate", "not-appropriate", "no-criteria-apply")
UNRATED = "not rated"
NO_VARIANT = "none"
NO_REASON = "(no coded reason)"
TOP_REASONS = 10
_SYSTEM_NAMES = {CPT: "CPT", LOINC: "LOINC", SNOMED: "SNOMED CT"}


@dataclass(frozen=True)
class RatingRow:
    """Orders of one ACR variant and order code, by PAMA rating (``counts`` keys: the three
    PAMA codes and ``not rated``)."""

    variant: str
    code: str
    counts: Mapping[str, int]

    @property
    def orders(self) -> int:
        return sum(self.counts.values())

    def share(self, rating: str) -> float:
        """Fraction (0..1) of this row's orders with ``rating``."""
        return self.counts.get(rating, 0) / self.orders if self.orders else 0.0


@dataclass(frozen=True)
class CardRow:
    """Cards of one kind: issued, accepted and overridden (distinct cards)."""

    kind: str
    indicator: str
    issued: int
    accepted: int
    overridden: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.issued if self.issued else 0.0

    @property
    def override_rate(self) -> float:
        return self.overridden / self.issued if self.issued else 0.0


@dataclass(frozen=True)
class ReasonRow:
    """One override reason (CDS Hooks Coding) and how many override entries gave it."""

    system: str | None
    code: str | None
    display: str
    count: int


@dataclass(frozen=True)
class WeekRow:
    """One ISO week (``start``: its Monday): calls answered, orders by PAMA rating, cards
    issued, accepted and overridden."""

    start: date
    calls: int
    ratings: Mapping[str, int]
    cards: int
    accepted: int
    overridden: int

    @property
    def orders(self) -> int:
        return sum(self.ratings.values())


@dataclass(frozen=True)
class Report:
    """Everything ``vcf-cds report`` prints; built by :func:`build_report`."""

    since: date | None
    generated_at: datetime
    calls_by_status: Mapping[int, int]
    ratings: Sequence[RatingRow]
    cards: Sequence[CardRow]
    override_reasons: Sequence[ReasonRow]
    weeks: Sequence[WeekRow]
    unknown_card_feedback: int
    feedback_entries: int

    def rating_totals(self) -> Counter:
        """Orders by PAMA rating (and ``not rated``) over all variants and codes."""
        total: Counter = Counter()
        for row in self.ratings:
            total.update(row.counts)
        return total


def code_label(system: str | None, code: str | None) -> str:
    """``CPT 72148``-style label of an order code; ``(no code)`` when the order had none."""
    if not code:
        return "(no code)"
    return f"{_SYSTEM_NAMES.get(system or '', system or '?')} {code}"


def build_report(db: Database, since: date | None = None,
                 reason_labels: Mapping[tuple[str, str], str] | None = None,
                 now: datetime | None = None) -> Report:
    """Aggregate the audit trail and feedback of calls on or after ``since`` (UTC).

    ``reason_labels`` maps (system, code) of override reasons to a display, used when
    the client sent none (the service's reasons are in ``data/cards.json``).
    Raises ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot be read.
    """
    start = datetime.combine(since, time.min, tzinfo=UTC) if since else None
    labels = reason_labels or {}

    def recent(stmt: Select) -> Select:
        return stmt.where(AuditCall.called_at >= start) if start else stmt

    day = func.date(AuditCall.called_at)
    card_call = AuditCard.call_id == AuditCall.id
    fb_join = and_(Feedback.card_uuid == AuditCard.uuid, Feedback.service_id == AuditCall.service_id)
    with db.engine.connect() as conn:
        status_rows = conn.execute(recent(select(AuditCall.status, func.count()).group_by(AuditCall.status))).all()
        order_rows = conn.execute(recent(
            select(day, AuditOrder.variant, AuditOrder.code_system, AuditOrder.code, AuditOrder.pama_rating, func.count())
            .join(AuditCall, AuditCall.id == AuditOrder.call_id)
            .group_by(day, AuditOrder.variant, AuditOrder.code_system, AuditOrder.code, AuditOrder.pama_rating))).all()
        card_rows = conn.execute(recent(
            select(day, AuditCard.kind, AuditCard.indicator, func.count())
            .join(AuditCall, card_call).group_by(day, AuditCard.kind, AuditCard.indicator))).all()
        outcome_rows = conn.execute(recent(
            select(day, AuditCard.kind, Feedback.outcome, func.count(func.distinct(Feedback.card_uuid)))
            .select_from(Feedback).join(AuditCard, Feedback.card_uuid == AuditCard.uuid).join(AuditCall, card_call)
            .where(fb_join).group_by(day, AuditCard.kind, Feedback.outcome))).all()
        reason_rows = conn.execute(recent(
            select(Feedback.override_system, Feedback.override_code, func.max(Feedback.override_display), func.count())
            .select_from(Feedback).join(AuditCard, Feedback.card_uuid == AuditCard.uuid).join(AuditCall, card_call)
            .where(fb_join, Feedback.outcome == "overridden")
            .group_by(Feedback.override_system, Feedback.override_code))).all()
        entries = conn.execute(recent(
            select(func.count()).select_from(Feedback).join(AuditCard, Feedback.card_uuid == AuditCard.uuid)
            .join(AuditCall, card_call).where(fb_join))).scalar_one()
        unknown = select(func.count()).select_from(Feedback).where(Feedback.flag == FLAG_UNKNOWN_CARD)
        if start:
            unknown = unknown.where(Feedback.received_at >= start)
        unknown_count = conn.execute(unknown).scalar_one()
        daily_calls = conn.execute(recent(
            select(day, func.count()).where(AuditCall.status == 200).group_by(day))).all()

    ratings: dict[tuple[str, str], Counter] = defaultdict(Counter)
    week_ratings: dict[date, Counter] = defaultdict(Counter)
    for d, variant, system, code, pama, n in order_rows:
        rating = pama or UNRATED
        ratings[(variant or NO_VARIANT, code_label(system, code))][rating] += n
        week_ratings[_week(d)][rating] += n
    cards: dict[tuple[str, str], int] = Counter()
    week_cards: Counter = Counter()
    for d, kind, indicator, n in card_rows:
        cards[(kind, indicator)] += n
        week_cards[_week(d)] += n
    outcomes: dict[str, Counter] = defaultdict(Counter)
    week_outcomes: dict[date, Counter] = defaultdict(Counter)
    for d, kind, outcome, n in outcome_rows:
        outcomes[kind][outcome] += n
        week_outcomes[_week(d)][outcome] += n
    week_calls: Counter = Counter()
    for d, n in daily_calls:
        week_calls[_week(d)] += n

    reasons = sorted((ReasonRow(system, code, display or labels.get((system, code)) or code or NO_REASON, n)
                      for system, code, display, n in reason_rows), key=lambda r: (-r.count, r.display))
    weeks = sorted(set(week_calls) | set(week_ratings) | set(week_cards))
    return Report(
        since=since,
        generated_at=now or datetime.now(UTC),
        calls_by_status=dict(sorted(status_rows)),
        ratings=[RatingRow(v, c, dict(counts)) for (v, c), counts in sorted(ratings.items())],
        cards=[CardRow(kind, indicator, n, outcomes[kind]["accepted"], outcomes[kind]["overridden"])
               for (kind, indicator), n in sorted(cards.items())],
        override_reasons=reasons[:TOP_REASONS],
        weeks=[WeekRow(w, week_calls[w], dict(week_ratings[w]), week_cards[w], week_outcomes[w]["accepted"],
                       week_outcomes[w]["overridden"]) for w in weeks],
        unknown_card_feedback=unknown_count,
        feedback_entries=entries,
    )


def _week(day: Any) -> date:
    d = day if isinstance(day, date) else date.fromisoformat(str(day)[:10])
    return d - timedelta(days=d.weekday())


# ------------------------------------------------------------------------ sections

Section = tuple[str, list[str], list[list[Any]]]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def sections(report: Report) -> list[Section]:
    """The report as (title, header, rows) tables, shared by every format."""
    rating_cols = [*PAMA_RATINGS, UNRATED]
    out: list[Section] = [
        ("Calls by HTTP status", ["status", "calls"], [[s, n] for s, n in report.calls_by_status.items()]),
        ("Orders by ACR variant and order code",
         ["variant", "order code", "orders", *rating_cols, *[f"% {r}" for r in PAMA_RATINGS]],
         [[r.variant, r.code, r.orders, *[r.counts.get(c, 0) for c in rating_cols],
           *[_pct(r.share(c)) for c in PAMA_RATINGS]] for r in report.ratings]),
        ("Cards by kind: acceptance and override",
         ["card kind", "indicator", "issued", "accepted", "overridden", "acceptance rate", "override rate"],
         [[c.kind, c.indicator, c.issued, c.accepted, c.overridden, _pct(c.acceptance_rate), _pct(c.override_rate)]
          for c in report.cards]),
        (f"Top override reasons (up to {TOP_REASONS})",
         ["reason", "code", "system", "overrides"],
         [[r.display, r.code or "", r.system or "", r.count] for r in report.override_reasons]),
        ("Trend per week (weeks start on Monday, UTC)",
         ["week of", "calls", "orders", *PAMA_RATINGS, "cards", "accepted", "overridden"],
         [[w.start.isoformat(), w.calls, w.orders, *[w.ratings.get(c, 0) for c in PAMA_RATINGS], w.cards,
           w.accepted, w.overridden] for w in report.weeks]),
        ("Feedback", ["measure", "count"],
         [["feedback entries on issued cards", report.feedback_entries],
          ["feedback for cards never issued (flagged)", report.unknown_card_feedback]]),
    ]
    return out


def _title(report: Report) -> str:
    scope = f"calls since {report.since.isoformat()}" if report.since else "all calls kept"
    return f"VCF appropriateness report ({scope}; generated {report.generated_at:%Y-%m-%d %H:%M} UTC)"


def render_table(report: Report) -> str:
    """Plain-text tables, one per section."""
    lines = [_title(report), ""]
    for title, header, rows in sections(report):
        lines.append(title)
        if not rows:
            lines += ["  (none)", ""]
            continue
        cells = [[str(c) for c in row] for row in [header, *rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
        for n, row in enumerate(cells):
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
            if n == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        lines.append("")
    return "\n".join(lines)


def render_csv(report: Report) -> str:
    """CSV: per section a header row and its rows, the section title in the first column;
    sections separated by an empty line."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for n, (title, header, rows) in enumerate(sections(report)):
        if n:
            buf.write("\n")
        writer.writerow(["section", *header])
        for row in rows:
            writer.writerow([title, *row])
    return buf.getvalue()


# ---------------------------------------------------------------------------- html


def _chart(title: str, has_data: bool, draw: Callable[[Any], None], height: float = 3.6) -> str:
    """A matplotlib figure with one Axes (``draw(ax)`` fills it; "no data" when there is
    none) as an inline ``<svg>`` element."""
    try:
        from matplotlib import rc_context
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("report", "the HTML report (vcf-cds report --format html)") from None

    # Text stays text (searchable, scales) and ids are stable, so the same data gives the same page.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "vcf-cds-report", "font.size": 9}):
        fig = Figure(figsize=(7.5, height), layout="constrained")
        ax = fig.subplots()
        ax.set_title(title)
        if has_data:
            draw(ax)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _bars_height(bars: int) -> float:
    return 1.4 + 0.3 * max(bars, 2)


def _legend_outside(ax: Any) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)


def _ratings_chart(report: Report) -> str:
    by_variant: dict[str, Counter] = defaultdict(Counter)
    for row in report.ratings:
        by_variant[row.variant].update(row.counts)
    variants = sorted(by_variant)

    def draw(ax: Any) -> None:
        left = [0] * len(variants)
        for rating, color in zip([*PAMA_RATINGS, UNRATED], ["#2e7d32", "#c62828", "#f9a825", "#9e9e9e"], strict=False):
            values = [by_variant[v].get(rating, 0) for v in variants]
            ax.barh(variants, values, left=left, label=rating, color=color)
            left = [a + b for a, b in zip(left, values, strict=False)]
        ax.set_xlabel("orders")
        ax.invert_yaxis()
        _legend_outside(ax)
    return _chart("Orders by ACR variant and PAMA rating", bool(variants), draw, _bars_height(len(variants)))


def _cards_chart(report: Report) -> str:
    def draw(ax: Any) -> None:
        y = range(len(report.cards))
        ax.barh([i - 0.2 for i in y], [100 * c.acceptance_rate for c in report.cards], height=0.4,
                label="accepted", color="#2e7d32")
        ax.barh([i + 0.2 for i in y], [100 * c.override_rate for c in report.cards], height=0.4,
                label="overridden", color="#c62828")
        ax.set_yticks(list(y), [c.kind for c in report.cards])
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of cards issued")
        ax.invert_yaxis()
        _legend_outside(ax)
    return _chart("Acceptance and override rate by card kind", bool(report.cards), draw,
                  _bars_height(len(report.cards)))


def _reasons_chart(report: Report) -> str:
    reasons = report.override_reasons

    def draw(ax: Any) -> None:
        ax.barh([r.display for r in reasons], [r.count for r in reasons], color="#6a1b9a")
        ax.set_xlabel("overrides")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.invert_yaxis()
    return _chart("Top override reasons", bool(reasons), draw, _bars_height(len(reasons)))


def _trend_chart(report: Report) -> str:
    weeks = report.weeks

    def draw(ax: Any) -> None:
        x = [w.start for w in weeks]
        rated = [sum(w.ratings.get(r, 0) for r in PAMA_RATINGS) for w in weeks]
        ax.plot(x, [100 * w.ratings.get("not-appropriate", 0) / n if n else 0 for w, n in zip(weeks, rated, strict=False)],
                marker="o", label="% of rated orders not appropriate", color="#c62828")
        ax.plot(x, [100 * w.accepted / w.cards if w.cards else 0 for w in weeks], marker="s",
                label="% of cards accepted", color="#2e7d32")
        ax.plot(x, [100 * w.overridden / w.cards if w.cards else 0 for w in weeks], marker="^",
                label="% of cards overridden", color="#6a1b9a")
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.set_xticks(x, [d.isoformat() for d in x], rotation=30, ha="right")
        _legend_outside(ax)
    return _chart("Trend per week", bool(weeks), draw)


def _html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report) -> str:
    """One self-contained HTML page: a chart per section (matplotlib, inline SVG) above its table."""
    charts = {1: _ratings_chart(report), 2: _cards_chart(report), 3: _reasons_chart(report), 4: _trend_chart(report)}
    parts = []
    for n, (title, header, rows) in enumerate(sections(report)):
        parts.append(f"<section><h2>{html.escape(title)}</h2>")
        if n in charts:
            parts.append(f'<figure>{charts[n]}</figure>')
        parts.append(_html_table(header, rows) if rows else "<p>(none)</p>")
        parts.append("</section>")
    title = html.escape(_title(report))
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0 2em}"
             "th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#f4f4f4}"
             "figure{margin:0}svg{max-width:100%;height:auto}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{style}</style></head><body><h1>{title}</h1>{''.join(parts)}</body></html>\n")


RENDERERS: Mapping[str, Callable[[Report], str]] = {"table": render_table, "csv": render_csv, "html": render_html}
