"""CDS Hooks 2.0 response-side wire models and conformance checks.

Implements CDS Hooks 2.0 "CDS Service Response" (Card, Source, Suggestion,
Action, Link, Coding, systemActions) and "Discovery" (service descriptors).
The models reject what the spec forbids, so a renderer cannot build a
non-conforming card; :func:`check_response` applies the same rules to a raw
JSON dict and lists every problem, for tests and for checking third-party
responses. :func:`to_wire` serialises a model the way the spec wants it sent
(no nulls, no empty strings, arrays or objects; ``cards`` always present).

No HTTP here: this module must stay importable without Flask.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

__all__ = [
    "Action",
    "Card",
    "CdsDiscovery",
    "CdsResponse",
    "CdsServiceDescriptor",
    "Coding",
    "INDICATORS",
    "Link",
    "SELECTION_BEHAVIORS",
    "SUMMARY_MAX_CHARS",
    "Source",
    "Suggestion",
    "check_response",
    "to_wire",
    "wire_json_schemas",
]

INDICATORS = ("info", "warning", "critical")
SELECTION_BEHAVIORS = ("at-most-one", "any")
ACTION_TYPES = ("create", "update", "delete")
LINK_TYPES = ("absolute", "smart")
# The spec says "<140-character summary": 139 is the longest allowed.
SUMMARY_MAX_CHARS = 139

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RELATIVE_REFERENCE_RE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")
# Discovery: the service id becomes a URL path segment ({baseUrl}/cds-services/{id}).
_SERVICE_ID_RE = re.compile(r"[A-Za-z0-9\-._~]+")


# ------------------------------------------------------------- shared rule checks
# Each returns a problem description or None; the models and check_response both
# use them so the two can never disagree.


def _uuid_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        return "must be a UUID string (8-4-4-4-12 hex digits)"
    return None


def _absolute_url_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty URL string"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an absolute http(s) URL"
    return None


def _summary_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "is required and must be a non-empty string"
    if len(value) > SUMMARY_MAX_CHARS:
        return f"must be under 140 characters (has {len(value)})"
    return None


def _resource_id_problem(value: Any) -> str | None:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and _RELATIVE_REFERENCE_RE.fullmatch(v) for v in values):
        return "must be a relative reference 'Type/id' (or a non-empty list of them)"
    return None


def _action_problems(action_type: Any, resource: Any, resource_id: Any) -> list[str]:
    problems: list[str] = []
    if action_type == "delete":
        if resource_id is None:
            problems.append("delete action requires resourceId")
        elif (p := _resource_id_problem(resource_id)) is not None:
            problems.append(f"resourceId {p}")
        if resource is not None:
            problems.append("delete action must not carry resource (use resourceId)")
    elif action_type in ("create", "update"):
        if not isinstance(resource, Mapping) or not resource:
            problems.append(f"{action_type} action requires resource (a FHIR resource object)")
        elif not isinstance(resource.get("resourceType"), str) or not resource["resourceType"]:
            problems.append(f"{action_type} action resource has no resourceType")
        if resource_id is not None and (p := _resource_id_problem(resource_id)) is not None:
            problems.append(f"resourceId {p}")
    return problems


def _selection_problem(suggestion_count: int, selection_behavior: Any) -> str | None:
    if suggestion_count and selection_behavior is None:
        return "selectionBehavior is required when suggestions are present"
    if selection_behavior is not None and selection_behavior not in SELECTION_BEHAVIORS:
        return f"selectionBehavior must be one of {', '.join(SELECTION_BEHAVIORS)}"
    if not suggestion_count and selection_behavior is not None:
        return "selectionBehavior is only meaningful with suggestions"
    return None


def _recommended_problem(recommended_flags: list[Any]) -> str | None:
    # The spec allows several recommended suggestions under "any"; this service
    # holds itself to one so the clinician is never shown competing defaults.
    if sum(1 for flag in recommended_flags if flag is True) > 1:
        return "more than one suggestion has isRecommended=true (at most one allowed)"
    return None


def _duplicates(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    repeated: list[Any] = []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    return repeated


def _raise_if(problem: str | None, prefix: str = "") -> None:
    if problem is not None:
        raise ValueError(f"{prefix}{problem}")


# --------------------------------------------------------------------------- models


class _WireModel(BaseModel):
    # Unknown fields are typos in our own output; spec extensions go in `extension`.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The rules below are checked by the validators of each model (with this module's messages);
# these only state them in the models' JSON Schema (the OpenAPI document), from the same constants.
_NON_EMPTY: Any = Field(json_schema_extra={"minLength": 1})
_UUID: Any = Field(default=None, json_schema_extra={"pattern": f"^{_UUID_RE.pattern}$"})
_URL: Any = Field(json_schema_extra={"format": "uri", "pattern": "^https?://"})
_OPTIONAL_URL: Any = Field(default=None, json_schema_extra={"format": "uri", "pattern": "^https?://"})


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


class Coding(_WireModel):
    """CDS Hooks 2.0 Coding: ``system`` and ``code`` required, ``display`` optional
    (required by :class:`Card` for override reasons)."""

    system: str = _NON_EMPTY
    code: str = _NON_EMPTY
    display: str | None = None

    _check_required = field_validator("system", "code")(_non_empty)


class Source(_WireModel):
    """CDS Hooks 2.0 Card.source: ``label`` required; ``url`` and ``icon`` absolute URLs."""

    label: str = _NON_EMPTY
    url: str | None = _OPTIONAL_URL
    icon: str | None = _OPTIONAL_URL
    topic: Coding | None = None
    extension: dict[str, Any] | None = None

    _check_label = field_validator("label")(_non_empty)

    @field_validator("url", "icon")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None:
            _raise_if(_absolute_url_problem(value))
        return value


class Link(_WireModel):
    """CDS Hooks 2.0 Link: ``type`` ``absolute`` or ``smart``; absolute http(s) ``url``;
    ``appContext`` only on ``smart`` links."""

    label: str = _NON_EMPTY
    url: str = _URL
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    extension: dict[str, Any] | None = None

    _check_label = field_validator("label")(_non_empty)

    @field_validator("url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        _raise_if(_absolute_url_problem(value))
        return value

    @model_validator(mode="after")
    def _app_context_only_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only valid on smart links")
        return self


class Action(_WireModel):
    """CDS Hooks 2.0 Action (also used as a systemAction).

    ``delete`` needs ``resourceId`` ("Type/id") and no ``resource``;
    ``create``/``update`` need ``resource`` (the whole FHIR resource).
    """

    type: Literal["create", "update", "delete"]
    description: str = _NON_EMPTY
    resource: dict[str, Any] | None = None
    resourceId: str | list[str] | None = None
    extension: dict[str, Any] | None = None

    _check_description = field_validator("description")(_non_empty)

    @model_validator(mode="after")
    def _type_rules(self) -> Action:
        problems = _action_problems(self.type, self.resource, self.resourceId)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Suggestion(_WireModel):
    """CDS Hooks 2.0 Suggestion: ``label`` required; ``uuid`` a UUID if present."""

    label: str = _NON_EMPTY
    uuid: str | None = _UUID
    isRecommended: bool | None = None
    actions: list[Action] = Field(default_factory=list)
    extension: dict[str, Any] | None = None

    _check_label = field_validator("label")(_non_empty)

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        if value is not None:
            _raise_if(_uuid_problem(value))
        return value


class Card(_WireModel):
    """CDS Hooks 2.0 Card.

    Rules enforced: ``summary`` non-empty and under 140 characters; ``indicator``
    info|warning|critical; ``selectionBehavior`` (at-most-one|any) present exactly
    when there are suggestions; override reasons carry ``display``; at most one
    recommended suggestion; suggestion uuids unique; ``uuid`` a UUID if present.
    """

    uuid: str | None = _UUID
    summary: str = Field(json_schema_extra={"minLength": 1, "maxLength": SUMMARY_MAX_CHARS})
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] = Field(default_factory=list)
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)
    extension: dict[str, Any] | None = None

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        if value is not None:
            _raise_if(_uuid_problem(value))
        return value

    @field_validator("summary")
    @classmethod
    def _summary(cls, value: str) -> str:
        _raise_if(_summary_problem(value))
        return value

    @model_validator(mode="after")
    def _card_rules(self) -> Card:
        _raise_if(_selection_problem(len(self.suggestions), self.selectionBehavior))
        _raise_if(_recommended_problem([s.isRecommended for s in self.suggestions]))
        for index, reason in enumerate(self.overrideReasons):
            if not reason.display:
                raise ValueError(f"overrideReasons[{index}] needs a display")
        repeated = _duplicates([s.uuid for s in self.suggestions if s.uuid])
        if repeated:
            raise ValueError(f"suggestion uuids repeated within the card: {', '.join(repeated)}")
        return self


class CdsResponse(_WireModel):
    """CDS Hooks 2.0 HTTP response body: ``cards`` (always sent, may be empty) and
    optional ``systemActions``. Card uuids must be unique within the response."""

    cards: list[Card] = Field(default_factory=list)
    systemActions: list[Action] = Field(default_factory=list)
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _unique_card_uuids(self) -> CdsResponse:
        repeated = _duplicates([card.uuid for card in self.cards if card.uuid])
        if repeated:
            raise ValueError(f"card uuids repeated within the response: {', '.join(repeated)}")
        return self


class CdsServiceDescriptor(_WireModel):
    """CDS Hooks 2.0 Discovery service entry: ``hook``, ``description`` and ``id``
    required; ``title`` recommended; ``prefetch`` maps keys to FHIR query templates."""

    hook: str = _NON_EMPTY
    title: str | None = None
    description: str = _NON_EMPTY
    id: str = Field(json_schema_extra={"pattern": f"^{_SERVICE_ID_RE.pattern}$"})
    prefetch: dict[str, str] = Field(default_factory=dict)
    usageRequirements: str | None = None
    extension: dict[str, Any] | None = None

    _check_required = field_validator("hook", "description")(_non_empty)

    @field_validator("id")
    @classmethod
    def _id_is_path_segment(cls, value: str) -> str:
        if not _SERVICE_ID_RE.fullmatch(value):
            raise ValueError("id must be usable as a URL path segment ([A-Za-z0-9-._~]+)")
        return value


class CdsDiscovery(_WireModel):
    """CDS Hooks 2.0 Discovery response: ``{"services": [...]}``."""

    services: list[CdsServiceDescriptor] = Field(default_factory=list)


# ---------------------------------------------------------------------- serialising

# Members the spec requires even when empty.
_ALWAYS_SENT: Mapping[type[BaseModel], tuple[str, ...]] = MappingProxyType(
    {CdsResponse: ("cards",), CdsDiscovery: ("services",)}
)


def to_wire(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict of ``model`` as the spec wants it on the wire.

    ``model_dump(mode="json", exclude_none=True)`` with empty strings, arrays
    and objects removed at every depth (including inside FHIR resources, where
    they are equally invalid), except the members the spec requires even when
    empty (``CdsResponse.cards``, ``CdsDiscovery.services``).
    """
    dumped = model.model_dump(mode="json", exclude_none=True)
    pruned = _prune(dumped)
    wire = pruned if isinstance(pruned, dict) else {}
    for name in _ALWAYS_SENT.get(type(model), ()):
        wire.setdefault(name, [])
    return wire


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and len(value) == 0)


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _prune(item)
            if not _is_empty(item):
                out[key] = item
        return out
    if isinstance(value, list):
        return [item for item in (_prune(v) for v in value) if not _is_empty(item)]
    return value


class _WireJsonSchema(GenerateJsonSchema):
    """JSON Schema of the models as :func:`to_wire` sends them: an optional member is left
    out, never sent as null, so "or null" and "default: null" are not part of the wire."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if json_schema.get("default", ...) is None:
            del json_schema["default"]
        return json_schema

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # the member names are the titles


def wire_json_schemas(*models: type[BaseModel], ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """JSON Schemas (draft 2020-12, as OpenAPI 3.1 uses) of ``models`` as sent on the wire.

    Generated from the models themselves (``model_json_schema`` with nulls left out), so the
    published schema and the checks cannot disagree; members the spec requires even when
    empty (``cards``, ``services``) are required. Returns model name -> schema for each of
    ``models`` and every model they use, with references built from ``ref_template``
    (``{model}`` is replaced by the model name).
    """
    _, top = models_json_schema([(m, "serialization") for m in models], ref_template=ref_template,
                                schema_generator=_WireJsonSchema)
    schemas: dict[str, Any] = top.get("$defs", {})
    for model, names in _ALWAYS_SENT.items():
        if model.__name__ in schemas:
            required = schemas[model.__name__].setdefault("required", [])
            required.extend(name for name in names if name not in required)
    return schemas


# ----------------------------------------------------------------------- checking


def check_response(payload: Any) -> list[str]:
    """Human-readable CDS Hooks 2.0 conformance problems of a raw response dict.

    Checks everything the models enforce (required fields, summary length,
    indicator, selectionBehavior with suggestions, action type rules, link types
    and URLs, UUIDs, override reason display) plus: no empty string, array or
    object anywhere in the cards or systemActions, at most one ``isRecommended``
    suggestion per card, and card uuids unique within the response.

    Returns:
        One message per problem, prefixed with its location (``cards[0].summary``);
        an empty list means the payload conforms.
    """
    problems: list[str] = []
    if not isinstance(payload, Mapping):
        return ["response: must be a JSON object"]

    cards = payload.get("cards")
    if "cards" not in payload:
        problems.append("cards: required (send [] when there is no decision support)")
    elif not isinstance(cards, list):
        problems.append("cards: must be an array")
    else:
        for index, card in enumerate(cards):
            _check_card(f"cards[{index}]", card, problems)
        repeated = _duplicates([c.get("uuid") for c in cards if isinstance(c, Mapping) and isinstance(c.get("uuid"), str)])
        for uuid in repeated:
            problems.append(f"cards: uuid {uuid} is used by more than one card")
        _check_no_empties("cards", cards, problems, allow_empty_root=True)

    if "systemActions" in payload:
        actions = payload["systemActions"]
        if not isinstance(actions, list):
            problems.append("systemActions: must be an array")
        else:
            for index, action in enumerate(actions):
                _check_action(f"systemActions[{index}]", action, problems)
            _check_no_empties("systemActions", actions, problems, allow_empty_root=False)
    return problems


def _check_card(where: str, card: Any, problems: list[str]) -> None:
    if not isinstance(card, Mapping):
        problems.append(f"{where}: must be an object")
        return
    if "uuid" in card and (p := _uuid_problem(card["uuid"])):
        problems.append(f"{where}.uuid: {p}")
    if p := _summary_problem(card.get("summary")):
        problems.append(f"{where}.summary: {p}")
    if "detail" in card and not isinstance(card["detail"], str):
        problems.append(f"{where}.detail: must be a string")
    if card.get("indicator") not in INDICATORS:
        problems.append(f"{where}.indicator: required, one of {', '.join(INDICATORS)}")
    _check_source(f"{where}.source", card.get("source"), problems)

    suggestions = card.get("suggestions", [])
    if not isinstance(suggestions, list):
        problems.append(f"{where}.suggestions: must be an array")
        suggestions = []
    for index, suggestion in enumerate(suggestions):
        _check_suggestion(f"{where}.suggestions[{index}]", suggestion, problems)
    if p := _selection_problem(len(suggestions), card.get("selectionBehavior")):
        problems.append(f"{where}: {p}")
    flags = [s.get("isRecommended") for s in suggestions if isinstance(s, Mapping)]
    if p := _recommended_problem(flags):
        problems.append(f"{where}.suggestions: {p}")
    uuids = [s.get("uuid") for s in suggestions if isinstance(s, Mapping) and isinstance(s.get("uuid"), str)]
    for uuid in _duplicates(uuids):
        problems.append(f"{where}.suggestions: uuid {uuid} is used by more than one suggestion")

    reasons = card.get("overrideReasons", [])
    if not isinstance(reasons, list):
        problems.append(f"{where}.overrideReasons: must be an array")
        reasons = []
    for index, reason in enumerate(reasons):
        _check_coding(f"{where}.overrideReasons[{index}]", reason, problems, display_required=True)

    links = card.get("links", [])
    if not isinstance(links, list):
        problems.append(f"{where}.links: must be an array")
        links = []
    for index, link in enumerate(links):
        _check_link(f"{where}.links[{index}]", link, problems)


def _check_source(where: str, source: Any, problems: list[str]) -> None:
    if not isinstance(source, Mapping):
        problems.append(f"{where}: required object")
        return
    _require_text(where, source, "label", problems)
    for name in ("url", "icon"):
        if name in source and (p := _absolute_url_problem(source[name])):
            problems.append(f"{where}.{name}: {p}")
    if "topic" in source:
        _check_coding(f"{where}.topic", source["topic"], problems, display_required=False)


def _require_text(where: str, obj: Mapping, name: str, problems: list[str]) -> None:
    if not isinstance(obj.get(name), str) or not obj[name].strip():
        problems.append(f"{where}.{name}: required non-empty string")


def _check_coding(where: str, coding: Any, problems: list[str], *, display_required: bool) -> None:
    if not isinstance(coding, Mapping):
        problems.append(f"{where}: must be a Coding object")
        return
    for name in ("system", "code"):
        _require_text(where, coding, name, problems)
    if display_required and (not isinstance(coding.get("display"), str) or not coding["display"].strip()):
        problems.append(f"{where}.display: required for override reasons")


def _check_suggestion(where: str, suggestion: Any, problems: list[str]) -> None:
    if not isinstance(suggestion, Mapping):
        problems.append(f"{where}: must be an object")
        return
    _require_text(where, suggestion, "label", problems)
    if "uuid" in suggestion and (p := _uuid_problem(suggestion["uuid"])):
        problems.append(f"{where}.uuid: {p}")
    if "isRecommended" in suggestion and not isinstance(suggestion["isRecommended"], bool):
        problems.append(f"{where}.isRecommended: must be a boolean")
    actions = suggestion.get("actions", [])
    if not isinstance(actions, list):
        problems.append(f"{where}.actions: must be an array")
        return
    for index, action in enumerate(actions):
        _check_action(f"{where}.actions[{index}]", action, problems)


def _check_action(where: str, action: Any, problems: list[str]) -> None:
    if not isinstance(action, Mapping):
        problems.append(f"{where}: must be an object")
        return
    if action.get("type") not in ACTION_TYPES:
        problems.append(f"{where}.type: required, one of {', '.join(ACTION_TYPES)}")
    _require_text(where, action, "description", problems)
    for p in _action_problems(action.get("type"), action.get("resource"), action.get("resourceId")):
        problems.append(f"{where}: {p}")


def _check_link(where: str, link: Any, problems: list[str]) -> None:
    if not isinstance(link, Mapping):
        problems.append(f"{where}: must be an object")
        return
    _require_text(where, link, "label", problems)
    if p := _absolute_url_problem(link.get("url")):
        problems.append(f"{where}.url: {p}")
    if link.get("type") not in LINK_TYPES:
        problems.append(f"{where}.type: required, one of {', '.join(LINK_TYPES)}")
    if "appContext" in link:
        if link.get("type") != "smart":
            problems.append(f"{where}.appContext: only valid on smart links")
        elif not isinstance(link["appContext"], str):
            problems.append(f"{where}.appContext: must be a string")


def _check_no_empties(where: str, value: Any, problems: list[str], *, allow_empty_root: bool) -> None:
    # Iterative: payloads may echo EHR resources, whose depth we do not control.
    stack: list[tuple[str, Any, bool]] = [(where, value, allow_empty_root)]
    while stack:
        path, node, allowed = stack.pop()
        if node is None:
            problems.append(f"{path}: null is not sent; omit the member")
            continue
        if not allowed and isinstance(node, (str, list, dict)) and len(node) == 0:
            kind = "string" if isinstance(node, str) else "array" if isinstance(node, list) else "object"
            problems.append(f"{path}: empty {kind} is not sent; omit the member")
            continue
        if isinstance(node, Mapping):
            stack.extend((f"{path}.{key}", item, False) for key, item in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", item, False) for i, item in reversed(list(enumerate(node))))
