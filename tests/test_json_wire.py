"""The JSON on the wire, as an EHR sees it: response bytes exactly as the standard library
writes them (compact, UTF-8, keys in order), whichever encoder ran; request bodies read as
before (a BOM, UTF-16, deep nesting refused with 400 too-long); envelope schema verdicts
unchanged where the two regex engines differ."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import request_body
from test_api import assert_operation_outcome, normalise_uuids, post, post_raw

from cds_service.web.hooks import encode_json

BASE = request_body("v1-new-vcf-mri-with-contrast")


def _draft(body):
    return body["context"]["draftOrders"]["entry"][0]["resource"]


def _assert_stdlib_bytes(resp) -> dict:
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    payload = json.loads(resp.data)
    assert resp.data == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return payload


def test_response_is_byte_for_byte_what_json_dumps_writes(client):
    body = copy.deepcopy(BASE)
    draft = _draft(body)
    # Echoed back in systemActions: a float orjson would write as 0.00001 (json.dumps: 1e-05)
    # and text with every escape and non-ASCII.
    draft["quantityQuantity"] = {"value": 0.00001, "unit": "µg"}
    draft["note"] = [{"text": "Rückenschmerz \u2028 \t \"quoted\" \\ \x01 ✓ 😀"}]
    payload = _assert_stdlib_bytes(post(client, body))
    echoed = json.dumps(payload["systemActions"], ensure_ascii=False)
    assert "1e-05" in echoed and "Rückenschmerz" in echoed


def _nested(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("payload", [
    {"deep": _nested(300)},  # past orjson's 254 levels
    {"small": [-2.5e-7, 1e-05, 0.0001, 1e16]},
    {"big": 2**70},
    {1: "int key", "text": "é\u2028\x1f"},
    {"rows": [{"b": 1, "a": [True, None, 1.5]}]},
], ids=["deep", "small-floats", "big-int", "int-key", "plain"])
def test_encoder_writes_json_dumps_bytes(payload):
    assert encode_json(payload) == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def test_bom_and_utf16_bodies_are_read_as_before(client):
    reference = normalise_uuids(post(client, BASE).get_json())
    text = json.dumps(BASE)
    for data in (b"\xef\xbb\xbf" + text.encode("utf-8"), text.encode("utf-16")):
        resp = post_raw(client, data)
        assert resp.status_code == 200
        assert normalise_uuids(resp.get_json()) == reference


def test_json_nested_past_the_decoders_limit_is_400_too_long(client):
    body = copy.deepcopy(BASE)
    body["junk"] = "DEEP"
    text = json.dumps(body).replace('"DEEP"', "[" * 2000 + "]" * 2000)
    outcome = assert_operation_outcome(post_raw(client, text), 400)
    assert outcome["issue"][0]["code"] == "too-long"


def test_selection_with_a_final_newline_is_still_not_found(client):
    # Python's regex lets "$" match before a final newline, the compiled validator's does not:
    # the envelope's verdict, and so the answer, is python-jsonschema's, as before.
    body = copy.deepcopy(BASE)
    body["context"]["selections"] = [body["context"]["selections"][0] + "\n"]
    outcome = assert_operation_outcome(post(client, body), 400)
    assert outcome["issue"][0]["code"] == "not-found"


def test_a_request_schema_reading_inside_prefetch_refuses_to_load(schemas):
    # The compiled envelope check sees prefetch values emptied (a large record is not
    # converted for a check that reads none of it): a schema that read inside them would
    # be fooled, so it is refused at start-up instead.
    from jsonschema import Draft202012Validator

    from cds_service.protocol.request import RequestSchemas

    deeper = copy.deepcopy(schemas.request.schema)
    deeper["properties"]["prefetch"]["additionalProperties"]["required"] = ["resourceType"]
    with pytest.raises(ValueError, match="reads deeper"):
        RequestSchemas(Draft202012Validator(deeper), schemas.order_select_context, schemas.order_sign_context)


@pytest.mark.parametrize("prefetch", [{"conditions": []}, {"conditions": "x"}, {"conditions": 3}])
def test_a_prefetch_value_that_is_not_an_object_or_null_is_still_a_400(client, prefetch):
    resp = post(client, {**copy.deepcopy(BASE), "prefetch": prefetch})
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["issue"][0]["expression"] == ["prefetch.conditions"]
