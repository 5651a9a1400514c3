"""CDS Hooks request body -> a checked envelope, and prefetch -> the checked FHIR resources the decision reads.

Two steps, each on its own (the pipeline calls them in turn, fetching what prefetch lacks in
between, see :mod:`cds_service.pipeline`):

- :func:`parse_envelope` checks the request as sent: CDS Hooks 2.0 "Calling a CDS Service /
  HTTP Request" (the envelope, ``schemas/cds-hooks-request.schema.json``); the
  ``order-select`` hook context (``userId``, ``patientId``, ``encounterId``, ``selections``,
  ``draftOrders``, ``schemas/order-select-context.schema.json``); the ``order-sign`` hook
  context (CDS Hooks library; the same without ``selections``: every draft order is being
  signed); the draft orders and the selections. No network I/O, no clinical code.
- :func:`parse_record` reads the prefetch (as sent, or completed from the FHIR server) per
  CDS Hooks 2.0 "Prefetch Template" / "Prefetch tokens": a prefetch value may be ``null``, a
  Bundle, a single resource or an OperationOutcome; required keys that are unavailable are
  a 412.

Nothing here knows about HTTP: problems are raised as
:class:`cds_service.protocol.errors.RequestError` carrying the status the API layer sends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, TypeGuard

import jsonschema_rs
import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaValidationError
from jsonschema.exceptions import best_match

from cds_service.protocol.errors import RequestError

__all__ = [
    "Envelope",
    "InputIssue",
    "InputResource",
    "MAX_DRAFT_ORDERS",
    "MAX_JSON_DEPTH",
    "MAX_PREFETCH_ENTRIES",
    "MAX_RECORD_READ",
    "PREFETCH_CONDITIONS",
    "PREFETCH_PROCEDURES",
    "PatientRecord",
    "RECORD_KEYS",
    "ReadsResource",
    "RequestSchemas",
    "load_request_schemas",
    "nested_deeper_than",
    "parse_envelope",
    "parse_record",
    "prefetch_unavailable",
]

# A real order-select body nests about 15 levels (Bundle > entry > resource >
# extension > value > coding ...). Anything far deeper is hostile or broken, and
# recursive validators would otherwise hit RecursionError deep inside libraries.
MAX_JSON_DEPTH = 100
# An order-select call carries a handful of draft orders; a long record a few hundred prefetched
# resources. Counted before any schema or model runs, since those are what large input costs.
MAX_DRAFT_ORDERS = 50
MAX_PREFETCH_ENTRIES = 5000
# The decision's work grows with the resources it reads, and so does checking and copying
# them: this bounds both, per prefetch key. A record rarely
# holds more than a few dozen resources with a code the decision reads.
MAX_RECORD_READ = 200

_DIAGNOSTIC_MAX = 300

# Everything a model validator has been seen to raise on hostile input; pydantic's
# ValidationError is a ValueError but is listed for the reader.
_MODEL_ERRORS: tuple[type[BaseException], ...] = (
    pydantic.ValidationError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    RecursionError,
)

# Resource base classes are valid model names but not resources anyone can send.
_ABSTRACT_RESOURCES = frozenset({"Resource", "DomainResource"})
_RESOURCE_TYPE_RE = re.compile(r"[A-Z][A-Za-z]{1,63}")

# The prefetch keys :func:`parse_record` reads (declared in discovery, data/services.json),
# and the resource type each holds.
PREFETCH_CONDITIONS = "conditions"
PREFETCH_PROCEDURES = "procedures"
RECORD_KEYS: Mapping[str, str] = MappingProxyType({PREFETCH_CONDITIONS: "Condition", PREFETCH_PROCEDURES: "Procedure"})
# What the record reading reads (radiology reports, medications, labs), never required: a
# request without them is answered. Each key -> the resource types it may hold (a medication
# search may _include the Medication resources its orders reference).
PREFETCH_REPORTS = "radiologyReports"
PREFETCH_MEDICATION_REQUESTS = "medicationRequests"
PREFETCH_MEDICATION_STATEMENTS = "medicationStatements"
PREFETCH_LABS = "coagulationLabs"
READING_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    PREFETCH_REPORTS: ("DiagnosticReport",),
    PREFETCH_MEDICATION_REQUESTS: ("MedicationRequest", "Medication"),
    PREFETCH_MEDICATION_STATEMENTS: ("MedicationStatement", "Medication"),
    PREFETCH_LABS: ("Observation",),
})

ReadsResource = Callable[[str, Mapping[str, Any]], bool]
"""Called with a prefetched resource's type and JSON (not yet validated); False when the
decision never reads it (see :func:`cds_service.decision.scenario.yields_facts`)."""

ORDER_SELECT = "order-select"
ORDER_SIGN = "order-sign"

_REQUEST_SCHEMA = "cds-hooks-request.schema.json"
_ORDER_SELECT_CONTEXT_SCHEMA = "order-select-context.schema.json"
_RECORD_RESOURCES_SCHEMA = "record-resources.schema.json"


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class RequestSchemas:
    """Compiled JSON Schema validators for request bodies (built by :func:`load_request_schemas`).

    Attributes:
        request: the CDS Hooks 2.0 request envelope validator.
        order_select_context: the order-select ``context`` validator.
        order_sign_context: the order-sign ``context`` validator (the order-select one
            without ``selections``: CDS Hooks library, order-sign hook, Context).
    """

    request: Draft202012Validator
    order_select_context: Draft202012Validator
    order_sign_context: Draft202012Validator
    # The same schemas compiled by jsonschema_rs, several times faster: asked first, and
    # python-jsonschema only for a body they refuse, for its best_match error message.
    _compiled: dict[int, jsonschema_rs.Validator] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _assert_envelope_view_applies(self.request.schema)
        validators = (self.request, self.order_select_context, self.order_sign_context)
        object.__setattr__(self, "_compiled", {id(v): _compile(v.schema) for v in validators})

    def is_valid(self, validator: Draft202012Validator, instance: Any) -> bool:
        """Whether ``instance`` is valid against ``validator`` (one of this object's), by its
        compiled twin. A False is final only from ``validator`` itself: the two regex engines
        differ on corner cases (``$`` before a final newline), and a value the compiled one
        cannot read (a lone surrogate, which a request may send escaped) counts as a False."""
        try:
            return bool(self._compiled[id(validator)].is_valid(instance))
        except ValueError:  # UnicodeEncodeError: jsonschema_rs reads strings as UTF-8
            return False

    def context_for(self, hook: str) -> Draft202012Validator:
        """The context validator of ``hook`` (``order-select`` or ``order-sign``)."""
        return self.order_sign_context if hook == ORDER_SIGN else self.order_select_context


@dataclass(frozen=True)
class InputResource:
    """One FHIR resource taken from the request.

    Attributes:
        resource_type: ``resourceType`` as sent.
        id: ``id`` as sent, or None.
        model: the validated ``fhir.resources.R4B`` model of a draft order; None for a
            prefetched resource, which is only read, and checked only as far as it is read
            (see :func:`parse_record`).
        raw: a private deep copy of the JSON dict as sent, so renderers can echo
            it (plus their extensions) without losing anything the EHR sent and
            without aliasing the caller's request body.
    """

    resource_type: str
    id: str | None
    model: Resource | None
    raw: dict[str, Any]

    @property
    def reference(self) -> str | None:
        """``"Type/id"`` relative reference, or None without an id."""
        return f"{self.resource_type}/{self.id}" if self.id else None


@dataclass(frozen=True)
class InputIssue:
    """A resource of the request that was skipped, and why: a prefetched resource, or a draft
    order of a type the service does not rate.

    Attributes:
        location: where in the request, e.g. ``prefetch.conditions.entry[3]`` or
            ``context.draftOrders.entry[1].resource``.
        resource_type: the resource's ``resourceType`` when it was a string, else None.
        resource_id: the resource's ``id`` when it was a string, else None.
        diagnostic: short reason; names field paths only, never echoes values.
    """

    location: str
    resource_type: str | None
    resource_id: str | None
    diagnostic: str

    def to_json(self) -> dict[str, str]:
        """The issue as sent in the response's ``skippedResources``: the set fields only."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class Envelope:
    """A checked order-select or order-sign request, before its prefetch is read.

    Attributes:
        hook, hook_instance, fhir_server: from the envelope (``fhir_server`` may be None).
        access_token: ``fhirAuthorization.access_token``, or None (never shown by ``repr``).
        patient_id, user_id, encounter_id: from ``context`` (``encounter_id`` may be None).
        context: the checked ``context`` object, for prefetch tokens (``{{context.*}}``).
        draft_orders: every ``context.draftOrders`` entry in scope (see
            :func:`parse_envelope` ``order_types``), in order, each validated with R4B.
        selections: the draft orders to rate: for order-select those in scope named by
            ``context.selections``, in that order (a selection repeated in the request
            appears once); for order-sign every draft order in scope.
        prefetch: the ``prefetch`` object as sent (empty when absent); values not checked
            beyond the envelope schema (object or null).
        skipped_orders: the draft orders out of scope: not validated, not rated, listed
            in the response's ``skippedResources``.
    """

    hook: str
    hook_instance: str
    fhir_server: str | None
    access_token: str | None = field(repr=False)
    patient_id: str = field(repr=False)
    user_id: str
    encounter_id: str | None
    context: Mapping[str, Any] = field(repr=False)
    draft_orders: tuple[InputResource, ...] = field(repr=False)
    selections: tuple[InputResource, ...] = field(repr=False)
    prefetch: Mapping[str, Any] = field(repr=False)
    skipped_orders: tuple[InputIssue, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class PatientRecord:
    """The patient's record as read from prefetch: what the decision reads.

    Attributes:
        conditions: prefetched Conditions of this patient that validated (with ``reads``:
            only those the decision reads).
        procedures: prefetched Procedures of this patient that validated (likewise).
        procedures_available: False when prefetch ``procedures`` was absent, an
            OperationOutcome or unusable, so "no procedures" can be told from "not known".
        issues: prefetched resources that were skipped, with the reason.
        not_read: resource type -> how many resources the decision would read were not
            read, past ``max_read`` (also named in ``issues``); empty when none.
        reports: prefetched DiagnosticReports (``radiologyReports``) that validated.
        medications: MedicationRequests, MedicationStatements and the Medications they may
            reference (``medicationRequests``, ``medicationStatements``) that validated.
        observations: prefetched Observations (``coagulationLabs``) that validated.
        unavailable: the :data:`READING_KEYS` that were absent, an OperationOutcome or
            unusable (not fetched either), so a card can say what it could not read.
    """

    conditions: tuple[InputResource, ...]
    procedures: tuple[InputResource, ...]
    procedures_available: bool
    issues: tuple[InputIssue, ...]
    not_read: Mapping[str, int] = field(default_factory=dict)
    reports: tuple[InputResource, ...] = ()
    medications: tuple[InputResource, ...] = ()
    observations: tuple[InputResource, ...] = ()
    unavailable: tuple[str, ...] = ()


# ------------------------------------------------------------------------- loading


def load_request_schemas() -> RequestSchemas:
    """Load and compile the request JSON Schemas shipped in ``cds_service/protocol/schemas``.

    Call once at application start and pass the result to :func:`parse_envelope`.

    Raises:
        RuntimeError: naming the file, if a schema file is missing, is not JSON,
            or is not a valid draft 2020-12 schema.
    """
    order_select = _load_schema(_ORDER_SELECT_CONTEXT_SCHEMA)
    # order-sign's context is order-select's without selections: every draft order is rated.
    order_sign = _copy_json(order_select)
    order_sign["$id"] = order_sign["$id"].replace("order-select", "order-sign")
    order_sign["title"] = "order-sign hook context"
    order_sign["required"] = [name for name in order_sign["required"] if name != "selections"]
    del order_sign["properties"]["selections"]
    return RequestSchemas(
        request=Draft202012Validator(_load_schema(_REQUEST_SCHEMA)),
        order_select_context=Draft202012Validator(order_select),
        order_sign_context=Draft202012Validator(order_sign),
    )


def _compile(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    # Formats are annotations in draft 2020-12, as python-jsonschema reads them without a
    # format checker: not asserted by either.
    return jsonschema_rs.validator_for(schema, validate_formats=False)


@cache
def _record_validators() -> Mapping[str, jsonschema_rs.Validator]:
    """Resource type -> the compiled check of ``schemas/record-resources.schema.json`` for it."""
    schema = _nullable_members(_load_schema(_RECORD_RESOURCES_SCHEMA))
    types = (*RECORD_KEYS.values(), *(t for ts in READING_KEYS.values() for t in ts))
    return MappingProxyType({t: _compile({**schema, "$ref": f"#/$defs/{t}"}) for t in dict.fromkeys(types)})


def _nullable_members(schema: Any) -> Any:
    """``schema`` with every object member also allowed to be ``null``: FHIR JSON has no null
    members, but the R4B models read one as absent (a required one included), and the record
    check keeps their verdict. A ``null`` inside an array stays an error, as for the models."""
    if isinstance(schema, list):
        return [_nullable_members(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _nullable_members(v) for k, v in schema.items()}
    if isinstance(schema.get("properties"), dict) and schema.get("type") == "object":
        out["properties"] = {k: {"anyOf": [{"type": "null"}, v]} for k, v in out["properties"].items()}
    return out


def _load_schema(name: str) -> dict[str, Any]:
    path = resources.files("cds_service.protocol").joinpath("schemas").joinpath(name)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"schemas/{name}: cannot load: {exc}") from exc
    except Exception as exc:  # jsonschema.SchemaError and friends
        raise RuntimeError(f"schemas/{name}: not a valid JSON Schema: {exc}") from exc
    return schema


# ------------------------------------------------------------------------- parsing


def parse_envelope(
    body: Any,
    *,
    hook: str = ORDER_SELECT,
    schemas: RequestSchemas,
    max_depth: int = MAX_JSON_DEPTH,
    max_draft_orders: int = MAX_DRAFT_ORDERS,
    max_prefetch_entries: int = MAX_PREFETCH_ENTRIES,
    order_types: Collection[str] | None = None,
) -> Envelope:
    """Check an order-select or order-sign request body and return its typed envelope.

    Steps, each failing fast: body is a JSON object; nesting is at most
    ``max_depth``; at most ``max_draft_orders`` draftOrders entries and
    ``max_prefetch_entries`` Bundle entries in all of prefetch; envelope
    schema (CDS Hooks 2.0 "HTTP Request"); ``hook`` matches; the hook's context
    schema; ``fhirAuthorization.patient``, when given, is ``context.patientId``; every
    ``draftOrders`` entry names a FHIR R4B resource type, and every one in scope validates on
    its own as an R4B resource (the Bundle itself is not model-validated, since the spec's
    examples omit ``Bundle.type``); order-select: every selection resolves to a draft order
    of this patient (a selection of an order out of scope is no error: it is not rated);
    order-sign: every draft order in scope is "selected" and must be this patient's. Prefetch
    is kept as sent, for :func:`parse_record`.

    Draft orders out of scope (a type not in ``order_types``, e.g. the MedicationRequest the
    CDS Hooks sandbox's Rx View sends beside an imaging order) are not validated, not rated
    and not returned; they are listed in ``Envelope.skipped_orders``. A client may send any
    order type the hook allows (order-select: DeviceRequest, MedicationRequest,
    NutritionOrder, ServiceRequest, VisionPrescription), and a draft this service cannot rate
    must not make it refuse the orders it can.

    Args:
        body: the decoded JSON request body.
        hook: the hook this service answers: ``order-select`` or ``order-sign``.
        schemas: from :func:`load_request_schemas`.
        max_depth: maximum JSON nesting depth accepted.
        max_draft_orders: maximum ``context.draftOrders.entry`` items.
        max_prefetch_entries: maximum ``entry`` items summed over the prefetch Bundles.
        order_types: the draft order resource types in scope; None: every type.

    Raises:
        RequestError: 400 ``structure`` body not an object; 400 ``too-long``
            absurd nesting; 413 ``too-long`` too many draft orders or prefetch
            entries; 400 ``required``/``invalid`` schema violation (the
            diagnostic names the path); 400 ``not-supported`` wrong hook or unknown
            draft order resourceType; 400 ``invalid`` draft order in scope that is not
            valid R4B or duplicated; 400 ``not-found`` selection not in draftOrders;
            400 ``invalid`` fhirAuthorization.patient or an order's subject is another patient.
    """
    if not isinstance(body, Mapping):
        raise RequestError(400, "structure", "request body must be a JSON object")
    body = dict(body)
    if nested_deeper_than(body, max_depth):
        raise RequestError(
            400, "too-long", f"request body is nested deeper than {max_depth} levels"
        )
    _check_counts(body, max_draft_orders, max_prefetch_entries)

    _check_schema(schemas, schemas.request, body, prefix="", compiled_view=_envelope_view(body))
    if body["hook"] != hook:
        raise RequestError(
            400,
            "not-supported",
            f"wrong hook: this service answers '{hook}', "
            f"the request is for '{_clip(body['hook'], 64)}'",
            ["hook"],
        )
    context = body["context"]
    _check_schema(schemas, schemas.context_for(hook), context, prefix="context")

    patient_id: str = context["patientId"]
    authorization = body.get("fhirAuthorization")
    if authorization is not None and authorization.get("patient") not in (None, patient_id):
        # A token scoped to another patient would fetch someone else's record.
        raise RequestError(
            400,
            "invalid",
            "fhirAuthorization.patient is not context.patientId",
            ["fhirAuthorization.patient"],
        )
    draft_orders, skipped = _parse_draft_orders(context["draftOrders"]["entry"], order_types)
    if hook == ORDER_SIGN:
        selections = _every_order(draft_orders, patient_id)
    else:
        skipped_refs = {f"{i.resource_type}/{i.resource_id}" for i in skipped if i.resource_id}
        selections = _resolve_selections(context["selections"], draft_orders, patient_id, skipped_refs)

    return Envelope(
        hook=body["hook"],
        hook_instance=body["hookInstance"],
        fhir_server=body.get("fhirServer"),
        access_token=(authorization or {}).get("access_token"),
        patient_id=patient_id,
        user_id=context["userId"],
        encounter_id=context.get("encounterId"),
        context=context,
        draft_orders=draft_orders,
        selections=selections,
        prefetch=dict(body.get("prefetch") or {}),
        skipped_orders=skipped,
    )


def parse_record(
    prefetch: Mapping[str, Any],
    *,
    patient_id: str,
    required: Sequence[str] = (),
    reads: ReadsResource | None = None,
    max_read: int = MAX_RECORD_READ,
) -> PatientRecord:
    """Read the patient's Conditions and Procedures from ``prefetch`` (CDS Hooks 2.0 "Prefetch
    Template": each value ``null``, a Bundle, a single resource or an OperationOutcome), and
    the radiology reports, medications and labs of :data:`READING_KEYS` when present.

    Reads the keys of :data:`RECORD_KEYS`. Each resource of the expected type is checked
    against FHIR R4 where the decision reads it (``schemas/record-resources.schema.json``;
    the decision only reads these, so the full R4B model is not built) and kept unless it
    belongs to another patient; malformed or foreign resources are skipped and listed in
    ``issues`` (with the R4B model's reason), they never fail the request.

    Args:
        prefetch: key -> value, as sent or completed from the FHIR server.
        patient_id: ``context.patientId``; resources whose subject names another patient
            are skipped.
        required: the service's ``requiredPrefetch`` keys (data/services.json).
        reads: tells which prefetched resources the decision reads; the others are passed
            over: not validated, not returned, not listed in ``issues`` unless they belong
            to another patient. None: every resource is validated and returned.
        max_read: resources validated per key, at most (those ``reads`` passes over do not
            count); the resources of that key past them are not read, and one issue
            names how many, from which entry on (setting ``MAX_RECORD_READ``).

    Raises:
        RequestError: 412 ``required`` when a ``required`` key is absent, an
            OperationOutcome or unusable (not the expected resource type nor a Bundle).
    """
    issues: list[InputIssue] = []
    not_read: dict[str, int] = {}
    found: dict[str, tuple[InputResource, ...] | None] = {
        key: _prefetched(prefetch, key, resource_type, patient_id, issues, reads, max_read, not_read)
        for key, resource_type in RECORD_KEYS.items()
    }
    for key in required:
        unusable = found[key] is None if key in found else prefetch_unavailable(prefetch, key)
        if unusable:
            # Never read a required key as "no relevant history": without conditions the
            # service cannot tell which ACR variant applies, and a guess would rate wrongly.
            raise RequestError(
                412,
                "required",
                f"prefetch '{key}' is missing (or an OperationOutcome, or unusable) and was not "
                "fetched: the request names no fhirServer, or fetching is not configured",
                [f"prefetch.{key}"],
            )
    conditions, procedures = found[PREFETCH_CONDITIONS], found[PREFETCH_PROCEDURES]
    reading = {key: _prefetched(prefetch, key, types, patient_id, issues, reads) for key, types in READING_KEYS.items()}
    return PatientRecord(
        conditions=conditions or (),
        procedures=procedures or (),
        procedures_available=procedures is not None,
        issues=tuple(issues),
        not_read=not_read,
        reports=reading[PREFETCH_REPORTS] or (),
        medications=(*(reading[PREFETCH_MEDICATION_REQUESTS] or ()), *(reading[PREFETCH_MEDICATION_STATEMENTS] or ())),
        observations=reading[PREFETCH_LABS] or (),
        unavailable=tuple(key for key, value in reading.items() if value is None),
    )


# ----------------------------------------------------------------- request checks


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether a JSON value (dicts, lists, scalars) nests more than ``limit`` levels; a
    scalar is level 0, ``{}`` and ``[]`` level 1. Never raises RecursionError."""
    if type(value) is not dict or limit < 0:
        return _walk_deeper_than(value, limit)
    try:
        # Compiled, it visits the body about 4 times faster than the walk below, and never
        # below ``limit`` + 1 levels.
        return not _depth_validator(limit).is_valid(value)
    except ValueError:  # a value that is not JSON's (a Mapping that is not a dict ...)
        return _walk_deeper_than(value, limit)


@lru_cache(maxsize=8)
def _depth_validator(limit: int) -> jsonschema_rs.Validator:
    """A compiled JSON Schema that accepts a value nested at most ``limit`` levels: ``dN``
    accepts a scalar, or an object or array whose members ``d(N-1)`` accepts."""
    scalar = {"not": {"type": ["object", "array"]}}
    defs: dict[str, Any] = {"d0": scalar}
    for n in range(1, limit + 1):
        below = {"$ref": f"#/$defs/d{n - 1}"}
        defs[f"d{n}"] = {"anyOf": [scalar, {"type": "object", "additionalProperties": below},
                                   {"type": "array", "items": below}]}
    return _compile({"$defs": defs, "$ref": f"#/$defs/d{limit}"})


def _walk_deeper_than(value: Any, limit: int) -> bool:
    # Level by level, not recursive: a recursive walk would itself overflow on the input
    # it is meant to reject. It visits every value of the body, so JSON's own types are
    # told apart by exact type first: an isinstance check against the Mapping ABC costs
    # as much as the rest of the visit.
    if not isinstance(value, (Mapping, list)):
        return False
    level, depth = [value], 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        push = below.append
        for node in level:
            for child in node.values() if type(node) is dict or isinstance(node, Mapping) else node:
                kind = type(child)
                if kind is dict or kind is list or (kind not in _JSON_SCALARS and isinstance(child, (Mapping, list))):
                    push(child)
        level, depth = below, depth + 1
    return False


def _check_counts(body: Mapping[str, Any], max_draft_orders: int, max_prefetch_entries: int) -> None:
    # Before the schemas on purpose: the shapes may still be wrong, so look without trusting them.
    context = body.get("context")
    draft_orders = context.get("draftOrders") if isinstance(context, Mapping) else None
    entries = draft_orders.get("entry") if isinstance(draft_orders, Mapping) else None
    if isinstance(entries, list) and len(entries) > max_draft_orders:
        raise RequestError(
            413, "too-long",
            f"context.draftOrders has {len(entries)} entries; this service accepts at most {max_draft_orders}",
            ["context.draftOrders.entry"],
        )
    prefetch = body.get("prefetch")
    if isinstance(prefetch, Mapping):
        total = sum(len(v["entry"]) for v in prefetch.values()
                    if isinstance(v, Mapping) and isinstance(v.get("entry"), list))
        if total > max_prefetch_entries:
            raise RequestError(
                413, "too-long",
                f"prefetch holds {total} Bundle entries; this service accepts at most {max_prefetch_entries}",
                ["prefetch"],
            )


# The members the request schema reads beyond their JSON type. Of the others (context, which
# has a schema of its own, extension, unknown members) and of each prefetch value, it checks
# the type only (asserted at start-up: _assert_envelope_view_applies).
_ENVELOPE_READ = frozenset({"hook", "hookInstance", "fhirServer", "fhirAuthorization"})


def _envelope_view(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as the request schema sees it: every object or array it checks by type only
    replaced by an empty one. jsonschema_rs converts its whole input before checking it, so
    the 3 MB prefetch of a large record cost its conversion (about 1.5 us a Condition) for a
    check that reads none of it."""
    view: dict[str, Any] = {}
    for key, value in body.items():
        if key in _ENVELOPE_READ:
            view[key] = value
        elif key == "prefetch" and type(value) is dict:
            view[key] = {name: _stand_in(member) for name, member in value.items()}
        else:
            view[key] = _stand_in(value)
    return view


def _stand_in(value: Any) -> Any:
    kind = type(value)
    return {} if kind is dict else [] if kind is list else value


def _assert_envelope_view_applies(schema: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless the request schema checks, of what :func:`_envelope_view`
    empties, the JSON type only (so the view is valid exactly when the body is)."""
    shallow = {"type", "description"}
    properties = schema.get("properties", {})
    prefetch = properties.get("prefetch", {})
    problems = [
        set(schema) & {"additionalProperties", "patternProperties", "unevaluatedProperties", "propertyNames",
                       "minProperties", "maxProperties", "allOf", "anyOf", "oneOf", "not", "if", "$ref"},
        {key for key, sub in properties.items()
         if key not in _ENVELOPE_READ and key != "prefetch" and not set(sub) <= shallow},
        set(prefetch) - {*shallow, "additionalProperties"},
        set(prefetch.get("additionalProperties", {})) - shallow,
    ]
    if any(problems):
        raise ValueError(f"the request schema reads deeper than _envelope_view keeps: {problems}")


def _check_schema(schemas: RequestSchemas, validator: Draft202012Validator, instance: Any, *, prefix: str,
                  compiled_view: Any = None) -> None:
    # ``compiled_view``: what the compiled check is given instead of ``instance`` (see
    # _envelope_view); python-jsonschema, which names the error, always reads ``instance``.
    if schemas.is_valid(validator, instance if compiled_view is None else compiled_view):
        return
    try:
        error = best_match(validator.iter_errors(instance))
    except RecursionError:
        raise RequestError(400, "too-long", "request body is nested too deeply") from None
    if error is None:
        return
    where = _json_path(prefix, error.absolute_path) or "request body"
    code = "required" if error.validator in ("required", "dependentRequired") else "invalid"
    raise RequestError(
        400, code, _clip(f"{where}: {_describe_schema_error(error)}", _DIAGNOSTIC_MAX), [where]
    )


def _describe_schema_error(error: SchemaValidationError) -> str:
    # jsonschema's own messages quote the offending value, which may be a patient
    # id or a token; rebuild them from the schema side for everything that can
    # carry a value, keeping jsonschema's text only where it names properties.
    kind, expected = error.validator, error.validator_value
    if kind in ("required", "dependentRequired"):
        return error.message
    if kind == "type":
        return f"must be of type {' or '.join(expected) if isinstance(expected, list) else expected}"
    if kind == "const":
        return f"must be {json.dumps(expected)}"
    if kind == "enum":
        return f"must be one of {json.dumps(expected)}"
    if kind == "pattern":
        return f"must match the pattern {expected}"
    if kind == "minLength":
        return "must not be empty" if expected == 1 else f"must be at least {expected} characters"
    if kind == "minItems":
        return "must not be empty" if expected == 1 else f"must have at least {expected} items"
    return f"violates the '{kind}' rule of the schema"


def _parse_draft_orders(
    entries: list[dict[str, Any]], order_types: Collection[str] | None
) -> tuple[tuple[InputResource, ...], tuple[InputIssue, ...]]:
    parsed: list[InputResource] = []
    skipped: list[InputIssue] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        raw = entry["resource"]
        where = f"context.draftOrders.entry[{index}].resource"
        resource_type = raw["resourceType"]
        resource_id = _str_or_none(raw.get("id"))
        label = f"{resource_type}/{_clip(resource_id, 64)}" if resource_id else resource_type
        model_class = _resource_class(resource_type)
        if model_class is None:
            raise RequestError(
                400,
                "not-supported",
                f"{where}: resourceType '{resource_type}' is not a FHIR R4B resource type",
                [where],
            )
        if order_types is not None and resource_type not in order_types:
            # Not read at all: the sandbox's Rx View sends a MedicationRequest that is not
            # valid R4 (no intent), and it must not cost the imaging order beside it its answer.
            skipped.append(InputIssue(
                where, resource_type, resource_id,
                f"{resource_type} draft orders are not rated by this service "
                f"(it rates {', '.join(sorted(order_types))}): not read"))
            continue
        try:
            model = model_class.model_validate(raw)
        except _MODEL_ERRORS as exc:
            # A broken draft order is fatal: it is the very thing being ordered,
            # and rating a partially understood order would be unsafe.
            raise RequestError(
                400,
                "invalid",
                _clip(
                    f"{where} ({label}) is not a valid FHIR R4B {resource_type}: "
                    f"{_model_error_summary(exc, with_messages=True)}",
                    _DIAGNOSTIC_MAX,
                ),
                [where],
            ) from None
        item = InputResource(resource_type, resource_id, model, _copy_resource(raw))
        if item.reference is not None:
            if item.reference in seen:
                # Two orders with one reference make `selections` ambiguous.
                raise RequestError(
                    400, "invalid", f"{where}: {label} appears more than once in draftOrders", [where]
                )
            seen.add(item.reference)
        parsed.append(item)
    return tuple(parsed), tuple(skipped)


def _resolve_selections(
    selections: list[str], draft_orders: tuple[InputResource, ...], patient_id: str,
    skipped_refs: Collection[str] = (),
) -> tuple[InputResource, ...]:
    by_reference = {order.reference: order for order in draft_orders if order.reference}
    resolved: list[InputResource] = []
    for index, selection in enumerate(selections):
        order = by_reference.get(selection)
        where = f"context.selections[{index}]"
        if order is None and selection in skipped_refs:
            continue  # an order out of scope: listed as skipped, not rated
        if order is None:
            raise RequestError(
                400,
                "not-found",
                f"{where} '{_clip(selection, 80)}' does not match any "
                "context.draftOrders entry (expected 'Type/id' of a draft order)",
                [where],
            )
        _check_subject(order, patient_id, where, "the selected order's")
        if order not in resolved:
            resolved.append(order)
    return tuple(resolved)


def _every_order(draft_orders: tuple[InputResource, ...], patient_id: str) -> tuple[InputResource, ...]:
    """order-sign: every draft order is about to be signed, so every one is rated."""
    for index, order in enumerate(draft_orders):
        _check_subject(order, patient_id, f"context.draftOrders.entry[{index}].resource", "the order's")
    return draft_orders


def _check_subject(order: InputResource, patient_id: str, where: str, whose: str) -> None:
    subject = order.raw.get("subject")
    if isinstance(subject, dict) and _refers_to_other_patient(subject.get("reference"), patient_id):
        # Rating one patient's order against another patient's record would be unsafe.
        raise RequestError(400, "invalid", f"{where}: {whose} subject is not context.patientId", [where])


# ------------------------------------------------------------------------ prefetch


def prefetch_unavailable(prefetch: Mapping[str, Any], key: str) -> bool:
    """Whether prefetch ``key`` is absent or an OperationOutcome: the client could not run
    the query (CDS Hooks 2.0 §Prefetch Template), so the service may fetch it. ``null`` is
    not unavailable: it means the query found nothing."""
    if key not in prefetch:
        return True
    value = prefetch[key]
    return isinstance(value, Mapping) and value.get("resourceType") == "OperationOutcome"


def _prefetched(
    prefetch: Mapping[str, Any],
    key: str,
    expected_type: str | tuple[str, ...],
    patient_id: str,
    issues: list[InputIssue],
    reads: ReadsResource | None = None,
    max_read: int = MAX_RECORD_READ,
    not_read_counts: dict[str, int] | None = None,
) -> tuple[InputResource, ...] | None:
    """Resources of ``expected_type`` under prefetch ``key``; None when unavailable.

    "Unavailable" (absent key, OperationOutcome, unusable value) is kept apart
    from "known to be empty" (``null``, empty Bundle): the spec lets the client
    send null when the query has no results, and an OperationOutcome when it
    could not run it. ``expected_type``: one resource type, or the types the key may hold.
    """
    if prefetch_unavailable(prefetch, key):
        return None
    value = prefetch[key]
    where = f"prefetch.{key}"
    if value is None:
        return ()
    types = (expected_type,) if isinstance(expected_type, str) else expected_type
    resource_type = value.get("resourceType")

    candidates: list[tuple[str, Any]] = []
    if resource_type == "Bundle":
        entries = value.get("entry", [])
        if not isinstance(entries, list):
            issues.append(InputIssue(f"{where}.entry", "Bundle", None, "Bundle.entry is not an array; prefetch ignored"))
            return None
        for index, entry in enumerate(entries):
            entry_where = f"{where}.entry[{index}]"
            if not _is_object(entry):
                issues.append(InputIssue(entry_where, None, None, "Bundle entry is not an object; skipped"))
                continue
            if "resource" not in entry:
                continue  # e.g. a deleted-resource or link-only entry: nothing to read
            search = entry.get("search")
            if (
                _is_object(entry["resource"])
                and entry["resource"].get("resourceType") == "OperationOutcome"
                and _is_object(search)
                and search.get("mode") == "outcome"
            ):
                continue  # server warnings about the search, not patient data
            candidates.append((entry_where, entry["resource"]))
    elif resource_type in types:
        candidates.append((where, value))
    else:
        issues.append(
            InputIssue(
                where,
                _str_or_none(resource_type),
                _str_or_none(value.get("id")),
                f"expected a {' or '.join(types)}, a Bundle, an OperationOutcome or null; prefetch ignored",
            )
        )
        return None

    found: list[InputResource] = []
    tried = 0
    not_read: list[str] = []
    for candidate_where, raw in candidates:
        read = _would_validate(raw, types, reads)
        if read and tried >= max_read:
            not_read.append(candidate_where)
            continue
        tried += read
        # ``reads`` has answered for this one already: not asked twice.
        item = _prefetched_resource(candidate_where, raw, types, patient_id, issues, read)
        if item is not None:
            found.append(item)
    label = " or ".join(types)
    if not_read and not_read_counts is not None:
        not_read_counts[label] = not_read_counts.get(label, 0) + len(not_read)
    if not_read:
        # One issue for the lot: thousands of entries would make the response as large as the request.
        issues.append(InputIssue(
            not_read[0], label, None,
            f"{len(not_read)} {label} resources from here on not read ({not_read[0]} to {not_read[-1]}): "
            f"this service reads at most {max_read} per request (setting MAX_RECORD_READ)"))
    return tuple(found)


def _would_validate(raw: Any, types: tuple[str, ...], reads: ReadsResource | None) -> bool:
    """Whether ``raw`` is a resource of ``types`` the decision reads: what :func:`_prefetched_resource`
    checks and keeps, and what ``max_read`` counts."""
    return (_is_object(raw) and raw.get("resourceType") in types
            and (reads is None or reads(raw["resourceType"], raw)))


def _prefetched_resource(
    where: str, raw: Any, types: tuple[str, ...], patient_id: str, issues: list[InputIssue], read: bool,
) -> InputResource | None:
    """``raw`` checked and copied when ``read`` (:func:`_would_validate`), else None; what is
    wrong with it, or that it is another patient's, noted in ``issues``."""
    if not _is_object(raw):
        issues.append(InputIssue(where, None, None, "resource is not an object; skipped"))
        return None
    resource_type = _str_or_none(raw.get("resourceType"))
    resource_id = _str_or_none(raw.get("id"))
    if resource_type not in types:
        issues.append(
            InputIssue(where, resource_type, resource_id, f"not a {' or '.join(types)}; skipped")
        )
        return None
    expected_type = str(resource_type)
    if not read:
        # A record holds dozens of resources the decision never reads; only a record of
        # another patient is still worth reporting.
        foreign = _foreign_issue(where, raw, expected_type, resource_id, patient_id)
        if foreign is not None:
            issues.append(foreign)
        return None
    problem = _record_problem(expected_type, raw)
    copy: dict[str, Any] = {}
    if problem is None:
        try:
            copy = _copy_resource(raw)
        except RecursionError:  # deep in elements the check does not read
            problem = "nested too deeply"
    if problem is not None:
        issues.append(InputIssue(
            where, resource_type, resource_id,
            _clip(f"not a valid FHIR R4B {expected_type} ({problem}); skipped", _DIAGNOSTIC_MAX)))
        return None

    foreign = _foreign_issue(where, raw, expected_type, resource_id, patient_id)
    if foreign is not None:
        issues.append(foreign)
        return None
    return InputResource(expected_type, resource_id, None, copy)


def _record_problem(resource_type: str, resource: Mapping[str, Any]) -> str | None:
    """Why a prefetched resource breaks FHIR R4 where the decision reads it, or None.

    The decision only reads a prefetched resource, and only some of its elements: those are
    checked (``schemas/record-resources.schema.json``: data types, primitive patterns,
    cardinality), in a few microseconds, where building the full R4B model costs about 0.1 ms.
    A resource that fails is then given to the R4B model, for the reason it has always been
    reported with; the check's own reason where the model lets it pass (a number given as a
    date). Reasons name field paths and rules only, never values (which may identify the patient).
    """
    validator = _record_validators()[resource_type]
    try:
        if validator.is_valid(resource):
            return None
        errors = list(validator.iter_errors(resource))
    except ValueError:  # what jsonschema_rs raises for a value it cannot read
        errors = []
    model_class = _resource_class(resource_type)
    assert model_class is not None  # resource_type is one of ours
    try:
        model_class.model_validate(resource)
    except _MODEL_ERRORS as exc:
        return _model_error_summary(exc, with_messages=False)
    shown = []
    for error in errors[:3]:
        path, kind = list(error.instance_path), type(error.kind).__name__
        if kind == "Required":
            path, kind = [*path, getattr(error.kind, "property", "")], "missing"
        elif kind == "AnyOf":  # a member is null, or else breaks its rule (see _nullable_members)
            kind = "invalid"
        shown.append(f"{_json_path('', path) or '(resource)'} ({kind.lower()})")
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "") or "could not be validated"


def _foreign_issue(
    where: str, raw: Mapping[str, Any], expected_type: str, resource_id: str | None, patient_id: str
) -> InputIssue | None:
    """The issue for a prefetched resource of another patient, or None."""
    # Prefetch is a convenience of the EHR; a record of another patient slipping
    # in would put someone else's history into this patient's rating.
    subject = raw.get("subject")
    reference = subject.get("reference") if _is_object(subject) else None
    if _refers_to_other_patient(reference, patient_id):
        return InputIssue(
            where,
            expected_type,
            resource_id,
            f"{expected_type}.subject does not reference context.patientId; skipped",
        )
    return None


def _refers_to_other_patient(reference: Any, patient_id: str) -> bool:
    """True only when ``reference`` demonstrably names someone other than ``patient_id``.

    Accepts ``Patient/id``, absolute ``.../Patient/id[/_history/v]`` and
    ``urn:uuid:id`` (Bundle-internal, as Synthea writes). References we cannot
    interpret (absent, contained ``#x``, identifier-only) are kept: the prefetch
    query was already scoped to the patient by the EHR.
    """
    if not isinstance(reference, str) or not reference or reference.startswith("#"):
        return False
    if reference.startswith("urn:uuid:"):
        return reference[len("urn:uuid:") :] != patient_id
    parts = reference.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2:
        return False
    resource_type, resource_id = parts[-2], parts[-1]
    return resource_type != "Patient" or resource_id != patient_id


# ------------------------------------------------------------------------- helpers


def _resource_class(resource_type: Any) -> type[Resource] | None:
    if (
        not isinstance(resource_type, str)
        or not _RESOURCE_TYPE_RE.fullmatch(resource_type)
        or resource_type in _ABSTRACT_RESOURCES
    ):
        return None
    try:
        model_class = get_fhir_model_class(resource_type)
    except ValueError:
        return None
    # get_fhir_model_class also knows data types (Coding, Element ...).
    if not (isinstance(model_class, type) and issubclass(model_class, Resource)):
        return None
    return model_class


def _model_error_summary(exc: BaseException, *, with_messages: bool) -> str:
    if isinstance(exc, pydantic.ValidationError):
        details = exc.errors(include_url=False, include_input=False, include_context=False)
        shown = []
        for detail in details[:3]:
            path = _json_path("", [p for p in detail["loc"] if p != "root"]) or "(resource)"
            shown.append(f"{path}: {detail['msg']}" if with_messages else f"{path} ({detail['type']})")
        more = len(details) - len(shown)
        return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"could not be validated ({type(exc).__name__})"


def _json_path(prefix: str, parts: Iterable[Any]) -> str:
    path = prefix
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _copy_json(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists, scalars); several times faster than
    ``copy.deepcopy``, which handles every Python object."""
    if type(value) is dict:
        return {k: _copy_json(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy_json(v) for v in value]
    return value


def _copy_resource(value: Any) -> Any:
    """:func:`_copy_json` of a resource without members whose value is ``null``.

    FHIR JSON has no null members (R4 §JSON representation: "null values are not allowed"),
    but the R4B models accept them as absent; echoed back to the EHR in an update action they
    would make the response invalid FHIR. Nulls inside arrays are kept: they align primitive
    extensions (``"_given": [null, {...}]``)."""
    if type(value) is dict:
        return {k: _copy_resource(v) for k, v in value.items() if v is not None}
    if type(value) is list:
        return [_copy_resource(v) for v in value]
    return value


def _is_object(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """Whether ``value`` is a JSON object; runs per prefetched resource, so a decoded body's
    own dict is told by exact type, before the slower check against the Mapping ABC."""
    return type(value) is dict or isinstance(value, Mapping)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _clip(text: Any, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
