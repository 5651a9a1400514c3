"""The benchmark's request material (bench/run.py): the client JWTs it sends with auth on,
and the typical request grown in Conditions and orders. The load runs themselves need wrk
and are not part of the suite."""

from __future__ import annotations

import importlib.util
import json
import sys

import jwt
import pytest
from conftest import FIXTURES, ROOT, make_app

SERVICE = "/cds-services/vcf-order-select"
TYPICAL = FIXTURES / "bench" / "typical-request.json"


@pytest.fixture(scope="module")
def bench():
    """bench/run.py as a module (it imports its neighbours in bench/ by name)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_run"] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def test_minted_tokens_are_accepted_once_each(bench, tmp_path):
    """Every token the benchmark mints is a distinct jti the service accepts for the URL it
    names, and a token sent a second time is refused: why each request needs its own."""
    url = "http://localhost" + SERVICE
    bench.mint_tokens(url, 2, 2, tmp_path / "tokens")
    tokens = [line for n in (1, 2) for line in (tmp_path / f"tokens.{n}").read_text().splitlines()]
    assert len(tokens) == 4
    claims = [jwt.decode(t, options={"verify_signature": False}) for t in tokens]
    assert len({c["jti"] for c in claims}) == 4
    assert {c["aud"] for c in claims} == {url}
    issuers = bench.write_trusted_issuers(tmp_path / "issuers.json")
    client = make_app(AUTH="on", TRUSTED_ISSUERS=str(issuers)).test_client()
    body = TYPICAL.read_bytes()

    def post(token: str) -> int:
        return client.post(SERVICE, data=body, content_type="application/json",
                           headers={"Authorization": f"Bearer {token}"}).status_code

    assert [post(t) for t in tokens] == [200] * 4
    assert post(tokens[0]) == 401


@pytest.mark.parametrize(("conditions", "orders"), [(100, None), (2000, None), (None, 10), (None, 50)])
def test_grown_requests_are_answered(bench, conditions, orders):
    """The growth figures' requests are valid calls: the counts asked for, unique ids, every
    order selected, and a 200 answer with a card for each grown order the typical request
    warns about."""
    typical = json.loads(TYPICAL.read_text(encoding="utf-8"))
    body = bench.scaled(typical, conditions=conditions, orders=orders)
    entries = body["prefetch"]["conditions"]["entry"]
    drafts = [e["resource"] for e in body["context"]["draftOrders"]["entry"]]
    assert len(entries) == (conditions or len(typical["prefetch"]["conditions"]["entry"]))
    assert len({e["resource"]["id"] for e in entries}) == len(entries)
    assert len(drafts) == (orders or 2)
    assert body["context"]["selections"] == [f"ServiceRequest/{d['id']}" for d in drafts]
    answer = make_app().test_client().post(SERVICE, json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    baseline = make_app().test_client().post(SERVICE, json=typical).get_json()
    per_order = len(baseline["cards"]) / 2
    assert len(answer.get_json()["cards"]) == (per_order * len(drafts) if orders else len(baseline["cards"]))
