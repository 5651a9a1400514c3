"""A small FHIR R4 server standing in for an EHR's, for tests and the benchmark.

It serves a set of FHIR resources the way a FHIR server answers the service's prefetch
queries (FHIR R4 RESTful API §read, §search; Bundle paging with ``link[relation=next]``):

- ``GET {base}/Patient/{id}``: the Patient, or 404 with an OperationOutcome;
- ``GET {base}/{Type}?patient={id}&_count=N[&_offset=M]``: a ``searchset`` Bundle of the
  resources of that type whose ``subject`` is the patient, N per page, with a ``next`` link;
- when a bearer token is configured, any request without exactly that token gets 401 with an
  OperationOutcome, as a SMART-protected server does.

Every request is recorded (path, query, Authorization header) so tests can check what the
service sent. Use it from pytest-httpserver (``respond_with_handler(server.handle)``) or as a
WSGI application (``server.wsgi``) under any WSGI server.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

FHIR_JSON = "application/fhir+json"


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
        seen: the requests received, in order.
    """

    base: str = "/fhir"
    token: str | None = None
    max_count: int = 50
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
        self.seen.append(Seen(request.path, dict(request.args), request.headers.get("Authorization")))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _outcome(401, "login", "missing or invalid bearer token")
        if not request.path.startswith(self.base + "/"):
            return _outcome(404, "not-found", "not a FHIR endpoint")
        parts = request.path[len(self.base) + 1:].strip("/").split("/")
        if len(parts) == 2:
            return self._read(*parts)
        if len(parts) == 1:
            return self._search(request, parts[0])
        return _outcome(400, "not-supported", "unsupported interaction")

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """The server as a WSGI application."""
        return self.handle(Request(environ))(environ, start_response)

    def _read(self, resource_type: str, resource_id: str) -> Response:
        for resource in self._by_type.get(resource_type, ()):
            if resource.get("id") == resource_id:
                return _json(200, resource)
        return _outcome(404, "not-found", f"{resource_type}/{resource_id} is not known")

    def _search(self, request: Request, resource_type: str) -> Response:
        patient = request.args.get("patient", "").removeprefix("Patient/")
        if not patient:
            return _outcome(400, "required", "this server requires the patient search parameter")
        count = min(int(request.args.get("_count", self.max_count)), self.max_count)
        offset = int(request.args.get("_offset", 0))
        matches = [r for r in self._by_type.get(resource_type, ()) if _subject_id(r) == patient]
        page = matches[offset:offset + count]
        url = request.base_url
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "link": [{"relation": "self", "url": f"{url}?{urlencode(request.args)}"}],
            "entry": [{"fullUrl": f"{request.host_url.rstrip('/')}{self.base}/{resource_type}/{r.get('id')}",
                       "resource": r, "search": {"mode": "match"}} for r in page],
        }
        if offset + count < len(matches):
            args = {"patient": patient, "_count": count, "_offset": offset + count}
            bundle["link"].append({"relation": "next", "url": f"{url}?{urlencode(args)}"})
        return _json(200, bundle)


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
