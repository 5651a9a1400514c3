"""Replay the fixture requests through an app, as an EHR would send them, and read the database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conftest import FIXTURES, load_json
from sqlalchemy import select

from cds_service.store.tables import AuditCall, AuditCard, AuditOrder, Feedback

SERVICE_URL = "/cds-services/vcf-order-select"
FEEDBACK_URL = SERVICE_URL + "/feedback"
CASES = load_json(FIXTURES / "cases.json")


@dataclass(frozen=True)
class Replayed:
    """One fixture case: its manifest entry, the request body, the HTTP status and body."""

    case: dict[str, Any]
    request: dict[str, Any]
    status: int
    response: dict[str, Any]

    def selected_orders(self) -> list[dict[str, Any]]:
        """The draft orders named by ``context.selections``, in selection order."""
        drafts = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
                  for e in self.request["context"]["draftOrders"]["entry"]}
        return [drafts[ref] for ref in dict.fromkeys(self.request["context"]["selections"])]


def replay_fixtures(client, cases: list[dict[str, Any]] = CASES) -> list[Replayed]:
    """POST every case's request body to the service; return what came back."""
    out = []
    for case in cases:
        body = (FIXTURES / case["file"]).read_bytes()
        resp = client.post(SERVICE_URL, data=body, content_type="application/json")
        out.append(Replayed(case, load_json(FIXTURES / case["file"]), resp.status_code, resp.get_json()))
    return out


def table_rows(database, model) -> list[dict[str, Any]]:
    """Every row of ``model``'s table as a dict (column name -> value)."""
    with database.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(model.__table__))]


def dump_text(database) -> str:
    """Every value stored in the audit and feedback tables, as one string."""
    parts = []
    for model in (AuditCall, AuditOrder, AuditCard, Feedback):
        for row in table_rows(database, model):
            parts += [str(v) for v in row.values()]
    return "\n".join(parts)


def post_feedback(client, *entries: dict[str, Any], url: str = FEEDBACK_URL):
    return client.post(url, json={"feedback": list(entries)})


def accepted(card: dict[str, Any], when: str = "2026-11-20T09:30:00Z", all_suggestions: bool = False) -> dict[str, Any]:
    """Feedback accepting the card's first suggestion (or all of them)."""
    chosen = card["suggestions"] if all_suggestions else card["suggestions"][:1]
    return {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": s["uuid"]} for s in chosen],
            "outcomeTimestamp": when}


def overridden(card_uuid: str, reason: dict[str, Any] | None = None, when: str = "2026-11-20T09:31:00Z",
               comment: str | None = None) -> dict[str, Any]:
    """Feedback overriding a card, with a reason Coding and/or a comment when given."""
    entry: dict[str, Any] = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": when}
    if reason or comment:
        entry["overrideReason"] = {k: v for k, v in (("reason", reason), ("userComment", comment)) if v}
    return entry
