"""Which FHIR servers the service may contact, and the limits of fetching from them.

Pure standard library, so settings can validate ``VCF_CDS_FHIR_ALLOWLIST`` at start-up without
loading the HTTP client. Every URL the client contacts (base, filled-in query, ``next`` link,
redirect) must match an allowlisted base: fetching from a URL named in a request body is a
server-side request forgery risk (CDS Hooks 2.0 §Security and Safety).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["AllowedBase", "FetchPolicy", "is_loopback", "parse_allowlist", "split_url"]


@dataclass(frozen=True)
class AllowedBase:
    """One allowlisted FHIR base URL, normalised: lower-case scheme and host, explicit port,
    path without trailing slash. A URL is allowed when scheme, host and port are equal and its
    path is the base path or below it (segment boundary: ``/fhir`` does not allow ``/fhirx``)."""

    scheme: str
    host: str
    port: int
    path: str

    def allows(self, url: str) -> bool:
        parts = split_url(url)
        if parts is None:
            return False
        scheme, host, port, path = parts
        return (scheme, host, port) == (self.scheme, self.host, self.port) and (
            path == self.path or path.startswith(self.path + "/")
        )

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


def split_url(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path) of an absolute http(s) URL without user info, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), parts.path.rstrip("/")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_allowlist(text: str, *, allow_http_loopback: bool) -> tuple[AllowedBase, ...]:
    """Parse ``VCF_CDS_FHIR_ALLOWLIST`` (comma-separated absolute base URLs).

    Raises:
        ValueError: naming the entry, for a URL that is not absolute http(s), carries user
            info, a query or a fragment, or uses http on a host other than loopback (or on
            loopback without ``allow_http_loopback``).
    """
    bases = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        parts = split_url(entry)
        if parts is None or urlsplit(entry).query or urlsplit(entry).fragment:
            raise ValueError(f"'{entry}' is not an absolute http(s) base URL without user info, query or fragment")
        scheme, host, port, path = parts
        if scheme == "http" and not (allow_http_loopback and is_loopback(host)):
            raise ValueError(f"'{entry}': https is required (http only for loopback with ALLOW_HTTP_LOOPBACK=1)")
        bases.append(AllowedBase(scheme, host, port, path))
    return tuple(bases)


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for fetching from an EHR's FHIR server (settings ``VCF_CDS_FHIR_*``).

    Attributes:
        allowlist: base URLs that may be contacted; empty = never fetch.
        budget_seconds: total wall-clock time for all fetches of one hook call.
        connect_timeout_seconds: TCP connect timeout of one HTTP request (capped by the budget).
        page_size: ``_count`` added to search queries that do not set it.
        max_pages: Bundle pages (first page and ``next`` links) read per prefetch key.
        max_resources: resources read per prefetch key.
        max_response_bytes: size cap of one HTTP response body.
    """

    allowlist: tuple[AllowedBase, ...] = ()
    budget_seconds: float = 2.0
    connect_timeout_seconds: float = 1.0
    page_size: int = 100
    max_pages: int = 10
    max_resources: int = 1000
    max_response_bytes: int = 16 * 1024 * 1024

    def allowed(self, url: str) -> bool:
        return any(base.allows(url) for base in self.allowlist)
