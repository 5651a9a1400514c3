"""A small FHIR R4 server standing in for an EHR's, for tests and the benchmark.

It serves a set of FHIR resources the way a FHIR server answers the service's prefetch
queries (FHIR R4 RESTful API §read, §search; Bundle paging with ``link[relation=next]``):

- ``GET {base}/Patient/{id}``: the Patient, or 404 with an OperationOutcome;
- ``GET {base}/{Type}?patient={id}&_count=N[&_offset=M]``: a ``searchset`` Bundle of the
  resources of that type whose ``subject`` is the patient, N per page, with a ``next`` link;
- when a bearer token is configured, any request without exactly that token gets 401 with an
  OperationOutcome, as a SMART-protected server does.

For a browser EHR such as the CDS Hooks sandbox (which reads ``/metadata``, lists patients
with ``GET Patient``, reads a Patient and its Conditions, and prefetches with
``POST {Type}/_search``, falling back to ``GET``), it also answers:

- ``GET {base}/metadata``: a CapabilityStatement (FHIR R4 4.0.1) listing what is served;
- ``GET {base}/Patient[?_id=&name=&family=&given=]``: a ``searchset`` Bundle of the Patients;
- ``POST {base}/{Type}/_search`` with form parameters: the same search as ``GET``;
- with ``cors_origin`` set, CORS headers on every answer and preflights (``OPTIONS``).

Every request is recorded (path, query, Authorization header) so tests can check what the
service sent. Use it from pytest-httpserver (``respond_with_handler(server.handle)``) or as a
WSGI application (``server.wsgi``) under any WSGI server; ``python fhir_fixtures/ehr_server.py``
(``make sandbox-ehr``) serves the fixture patients on loopback for a local CDS Hooks sandbox.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
HERE = Path(__file__).resolve().parent


@dataclass
class Seen:
    """One request the server received."""

    path: str
    args: dict[str, str]
    authorization: str | None


@dataclass
class EhrFhirServer:
    """FHIR resources served under ``base`` (a path such as ``/fhir``).

    Attributes:
        base: path prefix of the FHIR base URL.
        token: bearer token required on every request, or None for an open server.
        max_count: upper bound the server puts on ``_count`` (servers cap page sizes).
        cors_origin: browser origin allowed by CORS (``*`` for any), or None for no CORS headers.
        seen: the requests received, in order.
    """

    base: str = "/fhir"
    token: str | None = None
    max_count: int = 50
    cors_origin: str | None = None
    seen: list[Seen] = field(default_factory=list)
    _by_type: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, resources: Iterable[dict[str, Any]]) -> EhrFhirServer:
        """Serve these resources (each a FHIR resource dict with resourceType)."""
        for resource in resources:
            self._by_type[resource["resourceType"]].append(resource)
        return self

    def add_bundle(self, bundle: dict[str, Any]) -> EhrFhirServer:
        """Serve every resource of a Bundle (a Synthea transaction Bundle, a searchset ...)."""
        return self.add(e["resource"] for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict))

    # -- HTTP

    def handle(self, request: Request) -> Response:
        """Answer one request (a pytest-httpserver handler)."""
        response = self._answer(request)
        if self.cors_origin is not None:
            response.headers["Access-Control-Allow-Origin"] = self.cors_origin
            if self.cors_origin != "*":
                response.headers["Vary"] = "Origin"
        return response

    def _answer(self, request: Request) -> Response:
        if request.method == "OPTIONS" and self.cors_origin is not None:
            # A CORS preflight carries no credentials: answer it before the token check.
            return Response(status=204, headers={"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                                                 "Access-Control-Allow-Headers": "Authorization, Content-Type, Accept",
                                                 "Access-Control-Max-Age": "600"})
        params = dict(request.form) if request.method == "POST" else dict(request.args)
        self.seen.append(Seen(request.path, params, request.headers.get("Authorization")))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _outcome(401, "login", "missing or invalid bearer token")
        if not request.path.startswith(self.base + "/"):
            return _outcome(404, "not-found", "not a FHIR endpoint")
        parts = request.path[len(self.base) + 1:].strip("/").split("/")
        if request.method == "POST":
            if len(parts) == 2 and parts[1] == "_search":
                return self._search(request, parts[0], params)
            return _outcome(405, "not-supported", "this server is read-only: POST only to {Type}/_search")
        if parts == ["metadata"]:
            return _json(200, self.capability_statement())
        if len(parts) == 2:
            return self._read(*parts)
        if len(parts) == 1:
            return self._search(request, parts[0], params)
        return _outcome(400, "not-supported", "unsupported interaction")

    def capability_statement(self) -> dict[str, Any]:
        """What this server does, as FHIR R4 §CapabilityStatement (the answer to ``/metadata``)."""
        types = sorted(set(self._by_type) | {"Patient", "Condition", "Procedure"})
        resources = [{"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}],
                      "searchParam": ([{"name": "_id", "type": "token"}, {"name": "name", "type": "string"},
                                       {"name": "family", "type": "string"}, {"name": "given", "type": "string"}]
                                      if t == "Patient" else [{"name": "patient", "type": "reference"}])}
                     for t in types]
        return {"resourceType": "CapabilityStatement", "status": "active", "date": "2026-11-30",
                "kind": "instance", "software": {"name": "vcf-cds-hooks fixture FHIR server"},
                "implementation": {"description": "Test patients of vcf-cds-hooks (synthetic; not for clinical use)"},
                "fhirVersion": FHIR_VERSION, "format": ["application/fhir+json", "json"],
                "rest": [{"mode": "server", "resource": resources}]}

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """The server as a WSGI application."""
        return self.handle(Request(environ))(environ, start_response)

    def _read(self, resource_type: str, resource_id: str) -> Response:
        for resource in self._by_type.get(resource_type, ()):
            if resource.get("id") == resource_id:
                return _json(200, resource)
        return _outcome(404, "not-found", f"{resource_type}/{resource_id} is not known")

    def _search(self, request: Request, resource_type: str, params: Mapping[str, str]) -> Response:
        if resource_type == "Patient":
            matches = [r for r in self._by_type.get("Patient", ()) if _patient_matches(r, params)]
            kept = {k: v for k, v in params.items() if k in ("_id", "name", "family", "given")}
        else:
            patient = params.get("patient", "").removeprefix("Patient/")
            if not patient:
                return _outcome(400, "required", "this server requires the patient search parameter")
            matches = [r for r in self._by_type.get(resource_type, ()) if _subject_id(r) == patient]
            kept = {"patient": patient}
        try:
            count = min(int(params.get("_count", self.max_count)), self.max_count)
            offset = int(params.get("_offset", 0))
        except ValueError:
            return _outcome(400, "invalid", "_count and _offset are whole numbers")
        page = matches[offset:offset + count]
        # Links always name the GET form of the search, also when it came as POST _search.
        url = f"{request.host_url.rstrip('/')}{self.base}/{resource_type}"
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "link": [{"relation": "self", "url": f"{url}?{urlencode(params)}"}],
            "entry": [{"fullUrl": f"{request.host_url.rstrip('/')}{self.base}/{resource_type}/{r.get('id')}",
                       "resource": r, "search": {"mode": "match"}} for r in page],
        }
        if offset + count < len(matches):
            args = {**kept, "_count": count, "_offset": offset + count}
            bundle["link"].append({"relation": "next", "url": f"{url}?{urlencode(args)}"})
        return _json(200, bundle)


def _patient_matches(patient: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    """FHIR R4 Patient search, the parameters a patient picker uses: ``_id`` exact; ``name``,
    ``family``, ``given`` case-insensitive prefix of a name part."""
    if "_id" in params and patient.get("id") != params["_id"]:
        return False
    names = [n for n in patient.get("name") or () if isinstance(n, dict)]
    parts = {"family": [str(n.get("family", "")) for n in names],
             "given": [str(g) for n in names for g in n.get("given") or ()]}
    parts["name"] = parts["family"] + parts["given"] + [str(n.get("text", "")) for n in names]
    for key in ("name", "family", "given"):
        wanted = params.get(key, "").strip().lower()
        if wanted and not any(p.lower().startswith(wanted) for p in parts[key]):
            return False
    return True


def _subject_id(resource: dict[str, Any]) -> str | None:
    """Patient id of ``subject`` (``Patient/x``, an absolute URL, or Synthea's ``urn:uuid:x``)."""
    reference = (resource.get("subject") or {}).get("reference") or ""
    return reference.rsplit("/", 1)[-1].removeprefix("urn:uuid:") or None


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), status=status, content_type=FHIR_JSON)


def _outcome(status: int, code: str, text: str) -> Response:
    return _json(status, {"resourceType": "OperationOutcome",
                          "issue": [{"severity": "error", "code": code, "diagnostics": text}]})


def without_prefetch(body: dict[str, Any], *, fhir_server: str, token: str | None = None,
                     base: str = "/fhir") -> tuple[dict[str, Any], EhrFhirServer]:
    """Split a request with prefetch into what a CDS Client that prefetches nothing sends and
    the EHR FHIR server holding the left-out data.

    Returns (body without ``prefetch``, with ``fhirServer`` and, given a ``token``,
    ``fhirAuthorization``; an :class:`EhrFhirServer` under ``base`` serving the Patient and
    every resource of the prefetch Bundles, requiring ``token`` when given).
    """
    prefetch = body.get("prefetch") or {}
    out = {k: v for k, v in body.items() if k != "prefetch"}
    out["fhirServer"] = fhir_server
    if token is not None:
        out["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                    "scope": "patient/*.read", "subject": "vcf-cds-hooks",
                                    "patient": body["context"]["patientId"]}
    server = EhrFhirServer(base=base, token=token)
    for value in prefetch.values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            server.add_bundle(value)
        elif isinstance(value, dict):
            server.add([value])
    return out, server


def fixture_server(*, base: str = "/fhir", cors_origin: str | None = "*", manifest: Path = HERE / "cases.json",
                   max_count: int = 1000) -> EhrFhirServer:
    """An open server with the Patient, Conditions and Procedures of every fixture case that has
    a prefetched Patient (``cases.json``), for a local CDS Hooks sandbox. Pages are large
    (``max_count``) because the sandbox reads only the first page of a prefetch search."""
    server = EhrFhirServer(base=base, cors_origin=cors_origin, max_count=max_count)
    seen: set[tuple[str, str]] = set()
    for case in json.loads(manifest.read_text(encoding="utf-8")):
        body = json.loads((manifest.parent / case["file"]).read_text(encoding="utf-8"))
        prefetch = body.get("prefetch") or {}
        if not isinstance(prefetch.get("patient"), dict):
            continue
        resources = [prefetch["patient"]]
        for value in prefetch.values():
            if isinstance(value, dict) and value.get("resourceType") == "Bundle":
                resources += [e["resource"] for e in value.get("entry") or () if isinstance(e.get("resource"), dict)]
        for resource in resources:
            key = (resource.get("resourceType", ""), resource.get("id", ""))
            if key not in seen:  # cases telling one story share nothing, but be safe
                seen.add(key)
                server.add([resource])
    return server


def main(argv: list[str] | None = None) -> None:
    """Serve the fixture patients over HTTP on loopback (``make sandbox-ehr``)."""
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description="Serve the fixture patients as an open FHIR R4 server (for a local "
                                                 "CDS Hooks sandbox). Test data only; synthetic patients.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8081, help="TCP port (default: %(default)s)")
    parser.add_argument("--cors-origin", default="*",
                        help="browser origin allowed by CORS, e.g. http://127.0.0.1:8000 (default: %(default)s, any)")
    args = parser.parse_args(argv)
    server = fixture_server(cors_origin=args.cors_origin)
    server.seen = _Discard()
    patients = server._by_type["Patient"]
    print(f"FHIR base http://{args.host}:{args.port}{server.base}: {len(patients)} patients, e.g. "
          f"{', '.join(p['id'] for p in patients[:3])}", flush=True)
    run_simple(args.host, args.port, server.wsgi, threaded=True)


class _Discard(list):
    """A long-running server keeps no record of requests (tests read ``seen``)."""

    def append(self, item: object) -> None:
        pass


if __name__ == "__main__":
    main()
