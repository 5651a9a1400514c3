"""Fetch what prefetch lacks from the CDS Client's FHIR server (CDS Hooks 2.0 §Prefetch Template,
§FHIR Resource Access).

The spec makes the CDS Service responsible for data the client did not prefetch: it runs the
prefetch template's query against ``fhirServer`` with ``Authorization: Bearer
{fhirAuthorization.access_token}``. Fetching from a URL named in the request body is a
server-side request forgery risk, so every URL contacted (the base, each Bundle ``next`` link,
each redirect) must match a configured allowlist of base URLs.

Every failure raises :class:`cds_service.protocol.errors.RequestError` with status 412 and a diagnostic
naming the prefetch key, its template (never the filled-in query, which carries the patient
id) and the reason; the access token is never put in a message or a log line.

The time budget (``FHIR_BUDGET_SECONDS``) is a hard deadline for the whole fetch, whatever
the server does: ``requests`` timeouts count per socket operation, so a server trickling its
headers or its body a byte at a time would otherwise hold the call as long as it likes.
Every query runs on a thread of the process's fetch pool; the calling thread stops waiting
at the deadline and shuts down the sockets of the queries still running, so that their
threads end at once too (a query still waiting for the resolver ends when the resolver
answers; the caller does not wait for it). The call's answer comes at the deadline plus
the time to build a 412 (milliseconds).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import suppress
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from cds_service.fhir.policy import FetchPolicy, split_url
from cds_service.observability import observe_fhir_fetch
from cds_service.protocol.errors import RequestError

__all__ = ["FhirClient", "fill_template"]

log = logging.getLogger("cds_service.fhir.client")

# CDS Hooks 2.0 §Prefetch tokens: {{context.<field>}} and the four user tokens derived from
# context.userId ("Practitioner/123" -> userPractitionerId = 123).
_TOKEN_RE = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_.]*)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
_FHIR_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
_RETRY_STATUSES = frozenset({502, 503, 504})
_MAX_REDIRECTS = 3
_CHUNK_BYTES = 64 * 1024
# Threads of the process's fetch pool: a call uses one per prefetch key (three at most for
# this service); the spare ones serve the next call while a query cut at the deadline
# still waits for a slow resolver.
_POOL_THREADS = 8


# ------------------------------------------------------------------------ templates


def fill_template(template: str, context: Mapping[str, Any], user_id: str | None) -> str | None:
    """Fill a prefetch template's tokens (CDS Hooks 2.0 §Prefetch tokens).

    ``{{context.X}}`` takes the string value of context field X; ``{{userPractitionerId}}`` and
    its siblings take the id part of ``context.userId`` when its resource type matches.
    Values are percent-encoded so they cannot add query parameters or path segments.

    Returns:
        The relative FHIR query (``Condition?patient=123``), or None when a token cannot be
        filled (absent or non-string context field, user of another type, unknown token):
        per the spec such a prefetch cannot be run.
    """
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        found: Any = None
        if name.startswith("context."):
            found = context.get(name[len("context."):])
        elif name in _USER_TOKENS and isinstance(user_id, str):
            rtype, _, rid = user_id.partition("/")
            found = rid if rtype == _USER_TOKENS[name] else None
        if not isinstance(found, str) or not found:
            missing = True
            return ""
        return quote(found, safe="")

    filled = _TOKEN_RE.sub(value, template)
    return None if missing else filled


# ------------------------------------------------------------------------ the client


class _Failure(Exception):
    """Why one query failed, in words safe for a client and a log (no URL, no token)."""


class FhirClient:
    """Runs prefetch templates against the CDS Client's FHIR server.

    One ``requests.Session`` (with connection pooling) per process and thread: the app is
    built before gunicorn forks its workers, and a pool shared across a fork would share
    sockets. The prefetch keys of one call are fetched concurrently, within one time budget.
    """

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self._local = threading.local()

    def _session(self) -> requests.Session:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            session = requests.Session()
            session.trust_env = False  # no proxy or .netrc credentials from the environment
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
            # Connection pools that hand each connection to the running query's _Cut, so the
            # deadline can shut its socket down (urllib3's documented pool-class mapping).
            adapter.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            local.session, local.pid = session, os.getpid()
        return local.session

    def fetch(
        self,
        *,
        fhir_server: str,
        access_token: str | None,
        templates: Mapping[str, str],
        keys: Sequence[str],
        context: Mapping[str, Any],
        user_id: str | None,
        optional: Collection[str] = (),
    ) -> dict[str, Any]:
        """Fetch prefetch ``keys`` whose templates are in ``templates``.

        Args:
            fhir_server: the request's ``fhirServer`` base URL.
            access_token: ``fhirAuthorization.access_token``, or None to call without one.
            templates: prefetch key -> template, from the service definition.
            keys: the keys to fetch (absent from prefetch, or an OperationOutcome there).
            context: the hook ``context`` (for ``{{context.*}}`` tokens).
            user_id: ``context.userId`` (for the ``{{user*Id}}`` tokens).
            optional: keys the answer can do without (the record reading's): when one of
                them cannot be fetched (or its template filled, or the server is not
                allowlisted) it is left out of the result and logged, never raised.

        Returns:
            key -> a FHIR resource: the resource read, or one ``searchset`` Bundle holding the
            entries of every page read; an ``optional`` key that failed is absent.

        Raises:
            RequestError: 412 ``not-found`` when ``fhir_server`` is not on the allowlist or a
            template cannot be filled; 412 ``exception`` / ``timeout`` when the server answers
            an error status, is unreachable, too slow, redirects elsewhere, answers too much
            or answers something that is not FHIR JSON.
        """
        deadline = time.monotonic() + self.policy.budget_seconds
        if not self.policy.allowed(fhir_server):
            for key in keys:
                observe_fhir_fetch(key, "not-allowed")
            if all(key in optional for key in keys):
                return {}
            raise RequestError(
                412, "not-found",
                "fhirServer is not on this service's allowlist of FHIR servers (VCF_CDS_FHIR_ALLOWLIST), "
                f"so prefetch {_names(keys)} cannot be fetched",
                ["fhirServer"],
            )
        headers = {"Accept": "application/fhir+json"}
        if access_token:
            headers["Authorization"] = f"Bearer {access_token}"
        base = fhir_server.rstrip("/") + "/"
        queries = {}
        for key in keys:
            query = fill_template(templates[key], context, user_id)
            if query is None:
                observe_fhir_fetch(key, "unfillable")
                if key in optional:
                    continue
                raise RequestError(412, "not-found", f"prefetch '{key}' ({templates[key]}): a token of the "
                                   "template cannot be filled from this request's context", [f"prefetch.{key}"])
            queries[key] = query
        # The queries are independent: running them side by side makes the wait the slowest
        # query, not the sum, against EHR servers that take 100 ms or more per search. Even
        # a single query runs on a pool thread, so this thread can stop waiting at the
        # deadline whatever the server does. Each thread runs in a copy of this request's
        # context, so its log lines keep the request's hook_instance.
        started = time.monotonic()
        cuts = {key: _Cut() for key in queries}
        futures: dict[str, Future[dict[str, Any]]] = {
            key: _pool().submit(contextvars.copy_context().run, self._fetch_one, key, templates[key], base,
                                query, headers, deadline, cuts[key])
            for key, query in queries.items()}
        wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
        late = [key for key, future in futures.items() if not future.done()]
        for key in late:
            # Nothing runs on after the answer: a queued query never starts, a running one
            # has its sockets shut down (its thread then ends with an error nobody reads).
            futures[key].cancel()
            cuts[key].cut()
            observe_fhir_fetch(key, "timeout", time.monotonic() - started)
            log.warning("fetch of prefetch %s cut at the deadline of %g s", key, self.policy.budget_seconds)
        # The first failing required key in template order, whichever failed first in time;
        # an optional key that failed is left out (already logged and counted).
        out: dict[str, Any] = {}
        for key, future in futures.items():
            if key in late:
                if key in optional:
                    continue
                raise RequestError(412, "timeout", f"prefetch '{key}' ({templates[key]}) could not be fetched from "
                                   f"fhirServer: no complete answer within the time budget of "
                                   f"{self.policy.budget_seconds:g} s", [f"prefetch.{key}"])
            try:
                out[key] = future.result()
            except RequestError:
                if key not in optional:
                    raise
        return out

    def _fetch_one(self, key: str, template: str, base: str, query: str, headers: dict[str, str],
                   deadline: float, cut: _Cut) -> dict[str, Any]:
        started = time.monotonic()
        url = urljoin(base, _with_count(query, self.policy.page_size))
        _running.cut = cut
        try:
            if not self.policy.allowed(url):  # a template that climbs out of the base path
                raise _Failure("the query leaves the allowlisted FHIR base URL")
            resource, pages = self._run(url, _expected_type(query), headers, deadline)
        except _Failure as exc:
            if cut.done:  # cut at the deadline: the caller has answered, logged and counted it
                raise RequestError(412, "timeout", "cut at the deadline") from None
            log.warning("fetch of prefetch %s failed after %.0f ms: %s", key,
                        (time.monotonic() - started) * 1000, exc)
            code = "timeout" if isinstance(exc, _Timeout) else "exception"
            observe_fhir_fetch(key, "timeout" if code == "timeout" else "error", time.monotonic() - started)
            raise RequestError(412, code, f"prefetch '{key}' ({template}) could not be fetched from fhirServer: "
                               f"{exc}", [f"prefetch.{key}"]) from None
        finally:
            _running.cut = None
        observe_fhir_fetch(key, "ok", time.monotonic() - started)
        log.info("fetched prefetch %s: %d page(s) in %.1f ms", key, pages, (time.monotonic() - started) * 1000)
        return resource

    # -- one query, all its pages

    def _run(self, url: str, expected: str | None, headers: dict[str, str],
             deadline: float) -> tuple[dict[str, Any], int]:
        resource = self._get(url, headers, deadline)
        if expected is not None:  # a read: Patient/123
            if resource.get("resourceType") != expected:
                raise _Failure(f"the answer is a {_rtype(resource)}, not a {expected}")
            return resource, 1
        if resource.get("resourceType") != "Bundle":
            raise _Failure(f"the answer is a {_rtype(resource)}, not a search Bundle")
        entries: list[Any] = []
        pages = 0
        while True:
            pages += 1
            page_entries = resource.get("entry", [])
            if not isinstance(page_entries, list):
                raise _Failure("Bundle.entry is not an array")
            entries.extend(page_entries)
            if len(entries) > self.policy.max_resources:
                raise _Failure(f"more than {self.policy.max_resources} resources (VCF_CDS_FHIR_MAX_RESOURCES)")
            next_url = _next_link(resource)
            if next_url is None:
                break
            if pages >= self.policy.max_pages:
                raise _Failure(f"more than {self.policy.max_pages} pages (VCF_CDS_FHIR_MAX_PAGES)")
            if not self.policy.allowed(next_url):
                raise _Failure("a Bundle next link points outside the allowlisted FHIR server")
            resource = self._get(next_url, headers, deadline)
            if resource.get("resourceType") != "Bundle":
                raise _Failure(f"page {pages + 1} is a {_rtype(resource)}, not a Bundle")
        return {"resourceType": "Bundle", "type": "searchset", "entry": entries}, pages

    # -- one HTTP GET, with redirects, one retry and the size cap

    def _get(self, url: str, headers: dict[str, str], deadline: float) -> dict[str, Any]:
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._send(url, headers, deadline)
            if response.is_redirect:
                target = urljoin(url, response.headers.get("Location", ""))
                response.close()
                # Only within the allowlisted server: a redirect elsewhere would carry the
                # bearer token (or our network position) to a host nobody vetted.
                same_server = (split_url(target) or ())[:3] == (split_url(url) or ())[:3]
                if not (same_server and self.policy.allowed(target)):
                    raise _Failure(f"the server redirected ({response.status_code}) to another host or path")
                url = target
                continue
            return self._read(response, deadline)
        raise _Failure(f"more than {_MAX_REDIRECTS} redirects")

    def _send(self, url: str, headers: dict[str, str], deadline: float) -> requests.Response:
        for attempt in (1, 2):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout(f"the time budget of {self.policy.budget_seconds:g} s ran out")
            if _cut_now():
                raise _Timeout(f"the time budget of {self.policy.budget_seconds:g} s ran out")
            try:
                response = self._session().get(
                    url, headers=headers, stream=True, allow_redirects=False,
                    timeout=(min(self.policy.connect_timeout_seconds, remaining), remaining),
                )
            except requests.exceptions.ConnectionError as exc:
                if _cut_now():
                    raise _Timeout(f"the time budget of {self.policy.budget_seconds:g} s ran out") from None
                # ConnectTimeout is both a ConnectionError and a Timeout: retry it once too.
                if attempt == 1:
                    continue
                raise (_Timeout if isinstance(exc, requests.exceptions.Timeout) else _Failure)(
                    f"the server could not be reached ({type(exc).__name__})") from None
            except requests.exceptions.Timeout:
                raise _Timeout(f"no answer within the time budget of {self.policy.budget_seconds:g} s") from None
            except requests.exceptions.RequestException as exc:
                raise _Failure(f"the request failed ({type(exc).__name__})") from None
            if response.status_code in _RETRY_STATUSES and attempt == 1:
                response.close()
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _read(self, response: requests.Response, deadline: float) -> dict[str, Any]:
        with response:
            status = response.status_code
            if status != 200:
                raise _Failure(f"the server answered HTTP {status}")
            ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype not in _FHIR_JSON_TYPES:
                raise _Failure(f"the answer is '{ctype[:60] or 'without a Content-Type'}', not FHIR JSON")
            cap = self.policy.max_response_bytes
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise _Failure(f"the answer is larger than {cap} bytes (VCF_CDS_FHIR_MAX_RESPONSE_BYTES)")
            body = bytearray()
            try:
                for chunk in response.iter_content(_CHUNK_BYTES):
                    body += chunk
                    if len(body) > cap:
                        raise _Failure(f"the answer is larger than {cap} bytes (VCF_CDS_FHIR_MAX_RESPONSE_BYTES)")
                    if time.monotonic() > deadline:
                        raise _Timeout(f"the answer took longer than the time budget of "
                                       f"{self.policy.budget_seconds:g} s")
            except requests.exceptions.RequestException as exc:
                raise _Failure(f"the answer could not be read ({type(exc).__name__})") from None
        try:
            resource = json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise _Failure("the answer is not valid JSON") from None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise _Failure("the answer is not a FHIR resource (no resourceType)")
        if resource["resourceType"] == "OperationOutcome":
            raise _Failure(f"the server answered an OperationOutcome{_outcome_summary(resource)}")
        return resource


class _Timeout(_Failure):
    """The time budget ran out."""


# ------------------------------------------------------------------------ the deadline

_running = threading.local()  # .cut: the _Cut of the query running on this thread, or None


class _Cut:
    """The connections one query uses, so the caller can shut their sockets down at the
    deadline (which ends any read in progress on them, in the query's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self.done = False

    def track(self, connection: Any) -> None:
        """Remember ``connection``; shut it down at once if the query was already cut."""
        with self._lock:
            self._connections.append(connection)
            done = self.done
        if done:
            _shut(connection)

    def cut(self) -> None:
        """Shut down every socket the query opened or reused, and any it connects later."""
        with self._lock:
            self.done = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)


def _cut_now() -> bool:
    cut = getattr(_running, "cut", None)
    return cut is not None and cut.done


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        # The plain socket's shutdown, also under TLS: SSLSocket.shutdown would tear down
        # the TLS state the reading thread is still using.
        with suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _track(connection: Any) -> None:
    cut = getattr(_running, "cut", None)
    if cut is not None:
        cut.track(connection)


class _TrackedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _track(self)  # again, now that it has a socket: a cut during connect shuts it down


class _TrackedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _track(self)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        _track(connection)
        return connection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        _track(connection)
        return connection


# ------------------------------------------------------------------------ helpers

_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """The process's fetch threads. Threads do not survive gunicorn's fork: one pool per
    process, made on first use."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=_POOL_THREADS, thread_name_prefix="fhir-fetch"))
    return _POOL[1]



def _names(keys: Sequence[str]) -> str:
    return ", ".join(f"'{k}'" for k in keys)


def _rtype(resource: Mapping[str, Any]) -> str:
    value = resource.get("resourceType")
    return value[:40] if isinstance(value, str) else "resource of unknown type"


def _expected_type(query: str) -> str | None:
    """``Patient`` for a read ``Patient/123``; None for a search ``Condition?patient=123``."""
    path = query.split("?", 1)[0].strip("/")
    parts = path.split("/")
    return parts[0] if "?" not in query and len(parts) == 2 else None


def _with_count(query: str, page_size: int) -> str:
    if _expected_type(query) is not None:
        return query
    path, _, params = query.partition("?")
    pairs = parse_qsl(params, keep_blank_values=True)
    if not any(name == "_count" for name, _ in pairs):
        pairs.append(("_count", str(page_size)))
    return f"{path}?{urlencode(pairs, safe='/:')}"


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, Mapping) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _outcome_summary(outcome: Mapping[str, Any]) -> str:
    # Only the coded part: the server's free text may echo patient data or the query.
    issues = outcome.get("issue")
    if isinstance(issues, list) and issues and isinstance(issues[0], Mapping):
        code = issues[0].get("code")
        if isinstance(code, str) and re.fullmatch(r"[a-z-]{1,40}", code):
            return f" (issue code '{code}')"
    return ""

