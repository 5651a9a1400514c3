"""protocol: CDS Hooks 2.0 response models, to_wire and check_response."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cds_service.protocol.models import (
    Action,
    Card,
    CdsResponse,
    CdsServiceDescriptor,
    Coding,
    Link,
    Source,
    Suggestion,
    check_response,
    to_wire,
)

ARGONAUT_SUGGESTION_RESPONSE = Path(__file__).resolve().parents[2] / "shared/interop/argonaut-pama/scenario-02-suggestion-response.json"

CARD_UUID = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
SUGGESTION_UUID = "e56e1945-20b3-4393-8503-a1a20fd73152"
ORDER = {
    "resourceType": "ServiceRequest",
    "id": "example-MRI-59879846",
    "status": "draft",
    "intent": "plan",
    "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72148"}]},
    "subject": {"reference": "Patient/MRI-59879846"},
}


def valid_card() -> dict[str, Any]:
    """A card using every field the spec defines."""
    return {
        "uuid": CARD_UUID,
        "summary": "MRI lumbar spine without contrast: usually appropriate",
        "detail": "Rated against the **ACR** Appropriateness Criteria.",
        "indicator": "info",
        "source": {
            "label": "ACR Appropriateness Criteria",
            "url": "https://acsearch.acr.org/list",
            "icon": "https://example.org/icon-100px.png",
            "topic": {"system": "urn:vcf-cds-hooks:topics", "code": "vcf", "display": "Vertebral compression fracture"},
        },
        "suggestions": [
            {
                "label": "Record the appropriateness rating",
                "uuid": SUGGESTION_UUID,
                "isRecommended": True,
                "actions": [{"type": "update", "description": "Add the rating to the order", "resource": ORDER}],
            },
            {
                "label": "Cancel the order",
                "uuid": "0b6a4a1d-0f3c-4f43-9d55-3d1a8e4f2c11",
                "actions": [
                    {
                        "type": "delete",
                        "description": "Remove the order",
                        "resourceId": "ServiceRequest/example-MRI-59879846",
                    }
                ],
            },
        ],
        "selectionBehavior": "at-most-one",
        "overrideReasons": [
            {"system": "urn:vcf-cds-hooks:override", "code": "patient-refused", "display": "Patient refused"}
        ],
        "links": [
            {"label": "ACR criteria", "url": "https://acsearch.acr.org/docs/70545/Narrative/", "type": "absolute"},
            {
                "label": "Imaging app",
                "url": "https://smart.example.org/launch",
                "type": "smart",
                "appContext": '{"order":"example-MRI-59879846"}',
            },
        ],
    }


def valid_response() -> dict[str, Any]:
    return {"cards": [valid_card()]}


# ------------------------------------------------------------------- happy path


def test_valid_card_round_trips():
    payload = valid_response()
    model = CdsResponse.model_validate(payload)
    wire = to_wire(model)
    assert wire == payload
    assert check_response(wire) == []
    assert to_wire(CdsResponse.model_validate(json.loads(json.dumps(wire)))) == wire


def test_empty_response_keeps_cards_and_drops_system_actions():
    wire = to_wire(CdsResponse())
    assert wire == {"cards": []}
    assert check_response(wire) == []


def test_to_wire_drops_nulls_and_empty_values():
    card = Card(
        summary="Rated",
        indicator="warning",
        source=Source(label="ACR", url=None),
        detail="",
        suggestions=[],
        links=[],
    )
    wire = to_wire(CdsResponse(cards=[card]))
    assert wire == {"cards": [{"summary": "Rated", "indicator": "warning", "source": {"label": "ACR"}}]}
    assert check_response(wire) == []


def test_system_actions_and_discovery_models():
    response = CdsResponse(
        systemActions=[Action(type="update", description="Record rating", resource=ORDER)]
    )
    wire = to_wire(response)
    assert wire["cards"] == [] and wire["systemActions"][0]["resource"] == ORDER
    assert check_response(wire) == []

    service = CdsServiceDescriptor(
        hook="order-select",
        title="Spine imaging appropriateness",
        description="Rates spine imaging orders",
        id="vcf-imaging",
        prefetch={"conditions": "Condition?patient={{context.patientId}}"},
    )
    assert to_wire(service)["prefetch"] == {"conditions": "Condition?patient={{context.patientId}}"}
    with pytest.raises(ValidationError):
        CdsServiceDescriptor(hook="order-select", description="x", id="has space")


def test_protocol_does_not_import_flask():
    code = "import sys, cds_service.protocol.models; sys.exit('flask' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, check=False)
    assert result.returncode == 0


# --------------------------------------------------------------- rule violations
# Each case breaks one rule of a valid response; check_response must report it
# at the expected location and the models must refuse to build it.

Mutation = Callable[[dict[str, Any]], None]


def _card(response: dict[str, Any]) -> dict[str, Any]:
    return response["cards"][0]


VIOLATIONS: list[tuple[str, Mutation, str]] = [
    ("summary-missing", lambda r: _card(r).pop("summary"), "cards[0].summary"),
    ("summary-empty", lambda r: _card(r).update(summary=""), "cards[0].summary"),
    ("summary-140", lambda r: _card(r).update(summary="x" * 140), "cards[0].summary: must be under 140"),
    ("indicator-bad", lambda r: _card(r).update(indicator="hard-stop"), "cards[0].indicator"),
    ("indicator-missing", lambda r: _card(r).pop("indicator"), "cards[0].indicator"),
    ("source-missing", lambda r: _card(r).pop("source"), "cards[0].source"),
    ("source-label-missing", lambda r: _card(r)["source"].pop("label"), "cards[0].source.label"),
    ("source-url-relative", lambda r: _card(r)["source"].update(url="/acr"), "cards[0].source.url"),
    ("topic-no-code", lambda r: _card(r)["source"]["topic"].pop("code"), "cards[0].source.topic.code"),
    ("card-uuid-bad", lambda r: _card(r).update(uuid="card-1"), "cards[0].uuid"),
    ("selection-behavior-missing", lambda r: _card(r).pop("selectionBehavior"), "selectionBehavior is required"),
    ("selection-behavior-bad", lambda r: _card(r).update(selectionBehavior="all"), "selectionBehavior must be one of"),
    (
        "selection-behavior-without-suggestions",
        lambda r: _card(r).pop("suggestions"),
        "selectionBehavior is only meaningful",
    ),
    ("suggestion-label-missing", lambda r: _card(r)["suggestions"][0].pop("label"), "suggestions[0].label"),
    ("suggestion-uuid-bad", lambda r: _card(r)["suggestions"][0].update(uuid="s1"), "suggestions[0].uuid"),
    (
        "suggestion-uuid-repeated",
        lambda r: _card(r)["suggestions"][1].update(uuid=SUGGESTION_UUID),
        "used by more than one suggestion",
    ),
    (
        "two-recommended",
        lambda r: _card(r)["suggestions"][1].update(isRecommended=True),
        "more than one suggestion has isRecommended",
    ),
    (
        "action-type-bad",
        lambda r: _card(r)["suggestions"][0]["actions"][0].update(type="replace"),
        "actions[0].type",
    ),
    (
        "action-description-missing",
        lambda r: _card(r)["suggestions"][0]["actions"][0].pop("description"),
        "actions[0].description",
    ),
    (
        "update-without-resource",
        lambda r: _card(r)["suggestions"][0]["actions"][0].pop("resource"),
        "update action requires resource",
    ),
    (
        "delete-without-resource-id",
        lambda r: _card(r)["suggestions"][1]["actions"][0].pop("resourceId"),
        "delete action requires resourceId",
    ),
    (
        "delete-with-resource",
        lambda r: _card(r)["suggestions"][1]["actions"][0].update(resource=ORDER),
        "delete action must not carry resource",
    ),
    (
        "delete-with-bare-id",
        lambda r: _card(r)["suggestions"][1]["actions"][0].update(resourceId="example-MRI-59879846"),
        "resourceId must be a relative reference",
    ),
    (
        "override-reason-no-display",
        lambda r: _card(r)["overrideReasons"][0].pop("display"),
        "cards[0].overrideReasons[0].display",
    ),
    ("link-type-bad", lambda r: _card(r)["links"][0].update(type="relative"), "cards[0].links[0].type"),
    ("link-url-relative", lambda r: _card(r)["links"][0].update(url="docs/70545"), "cards[0].links[0].url"),
    ("smart-link-not-http", lambda r: _card(r)["links"][1].update(url="smart-app:launch"), "cards[0].links[1].url"),
    (
        "app-context-on-absolute",
        lambda r: _card(r)["links"][0].update(appContext="x"),
        "cards[0].links[0].appContext",
    ),
    ("link-label-missing", lambda r: _card(r)["links"][0].pop("label"), "cards[0].links[0].label"),
    (
        "card-uuid-repeated",
        lambda r: r["cards"].append(copy.deepcopy(_card(r))),
        f"uuid {CARD_UUID} is used by more than one card",
    ),
    (
        "system-action-delete-without-id",
        lambda r: r.update(systemActions=[{"type": "delete", "description": "Remove"}]),
        "systemActions[0]: delete action requires resourceId",
    ),
]


@pytest.mark.parametrize("mutate, expected", [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_violation_is_reported_and_rejected(mutate, expected):
    response = valid_response()
    mutate(response)

    problems = check_response(response)
    assert any(expected in problem for problem in problems), problems
    with pytest.raises(ValidationError):
        CdsResponse.model_validate(response)


# Nulls, empty values and a missing `cards` are harmless inside a model (cards
# defaults to []); the rule is about the wire, so check_response flags them and
# to_wire never produces them.
WIRE_ONLY: list[tuple[str, Mutation, str]] = [
    ("missing-cards", lambda r: r.pop("cards"), "cards: required"),
    ("empty-detail", lambda r: _card(r).update(detail=""), "cards[0].detail: empty string"),
    ("empty-links", lambda r: _card(r).update(links=[]), "cards[0].links: empty array"),
    ("empty-extension", lambda r: _card(r).update(extension={}), "cards[0].extension: empty object"),
    (
        "empty-inside-resource",
        lambda r: _card(r)["suggestions"][0]["actions"][0]["resource"].update(note=[]),
        "resource.note: empty array",
    ),
    ("null-member", lambda r: _card(r).update(detail=None), "cards[0].detail: null"),
    ("empty-system-actions", lambda r: r.update(systemActions=[]), "systemActions: empty array"),
]


@pytest.mark.parametrize("mutate, expected", [v[1:] for v in WIRE_ONLY], ids=[v[0] for v in WIRE_ONLY])
def test_wire_rules_are_reported_and_never_sent(mutate, expected):
    response = valid_response()
    mutate(response)

    problems = check_response(response)
    assert any(expected in problem for problem in problems), problems
    wire = to_wire(CdsResponse.model_validate(response))
    assert check_response(wire) == []


def test_check_response_reports_a_non_object():
    assert check_response([]) == ["response: must be a JSON object"]


def test_model_rules_directly():
    with pytest.raises(ValidationError, match="under 140"):
        Card(summary="x" * 140, indicator="info", source=Source(label="s"))
    Card(summary="x" * 139, indicator="info", source=Source(label="s"))
    with pytest.raises(ValidationError, match="selectionBehavior is required"):
        Card(summary="s", indicator="info", source=Source(label="s"), suggestions=[Suggestion(label="go")])
    with pytest.raises(ValidationError, match="delete action requires resourceId"):
        Action(type="delete", description="Remove")
    Action(type="delete", description="Remove", resourceId=["ServiceRequest/a", "ServiceRequest/b"])
    with pytest.raises(ValidationError, match="appContext is only valid on smart links"):
        Link(label="l", url="https://example.org", type="absolute", appContext="{}")
    with pytest.raises(ValidationError, match="absolute http"):
        Link(label="l", url="ftp://example.org/x", type="smart")
    with pytest.raises(ValidationError):
        Coding(system="", code="x")
    with pytest.raises(ValidationError, match="display"):
        Card(summary="s", indicator="info", source=Source(label="s"), overrideReasons=[Coding(system="a", code="b")])
    with pytest.raises(ValidationError):
        Card(summary="s", indicator="info", source=Source(label="s"), unknownField=1)


# ----------------------------------------------------------- third-party sample


def test_argonaut_suggestion_response_lacks_selection_behavior():
    payload = json.loads(ARGONAUT_SUGGESTION_RESPONSE.read_text(encoding="utf-8"))
    problems = check_response(payload)
    assert problems == ["cards[0]: selectionBehavior is required when suggestions are present"]
    with pytest.raises(ValidationError, match="selectionBehavior is required"):
        CdsResponse.model_validate(payload)
