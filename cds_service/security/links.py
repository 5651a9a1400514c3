"""Signed, short-lived "Why this advice?" links (CDS Hooks 2.0 §Link, type ``absolute``).

A link is ``{base}/explain?token=<token>``: the token is an itsdangerous
URL-safe timed signature (HMAC-SHA256) over the card's uuid, nothing else, so the URL
carries no patient id and cannot be altered to show another card. It expires after
``EXPLAIN_LINK_TTL_SECONDS``. The token travels in the query string, not the path, so
access logs that record only the path (``vcf-cds serve``) never hold it.

Every worker and host must verify what any of them signed: the secret is
``EXPLAIN_LINK_SECRET`` when set, else derived from the audit HMAC key, which is already
the same on every host (required with ``DATABASE_URL``; generated once into ``DATA_DIR``
and shared by the workers of the embedded setup). No Flask here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer

from cds_service.settings import Settings

# Separates these signatures from any other use of the same secret (itsdangerous "salt").
SALT = "vcf-cds-hooks.explain-link.v1"
PATH = "/explain"
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class InvalidLink(Exception):
    """A token that is expired, forged, altered or malformed. Deliberately without detail:
    the page tells the reader no more than that the link is not valid."""


def link_secret(settings: Settings, audit_key: bytes) -> bytes:
    """``EXPLAIN_LINK_SECRET`` when set, else HMAC-SHA256(audit key, purpose): a distinct key
    (a link token never reveals anything about the audit key) that is the same wherever the
    audit key is."""
    if settings.explain_link_secret:
        return settings.explain_link_secret.get_secret_value().encode("utf-8")
    return hmac.new(audit_key, SALT.encode("ascii"), hashlib.sha256).hexdigest().encode("ascii")


class ExplainLinks:
    """Signs card uuids into link tokens and verifies them.

    ``ttl_seconds``: how long a token stays valid (whole seconds, as itsdangerous counts).
    ``clock``: POSIX seconds now; the same clock signs and verifies (tests move it).
    Hosts must keep time (NTP): a token signed on a host whose clock runs ahead is refused
    elsewhere until the other clocks catch up.
    """

    def __init__(self, secret: bytes, ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        links = self

        class _Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(links.clock())

        self._serializer = URLSafeTimedSerializer(
            secret, salt=SALT, signer=_Signer,
            signer_kwargs={"digest_method": hashlib.sha256, "key_derivation": "hmac"})

    def token(self, card_uuid: str) -> str:
        """The token for ``card_uuid`` (URL-safe base64 and dots, about 100 characters)."""
        return self._serializer.dumps(card_uuid)

    def card_uuid(self, token: str) -> str:
        """The card uuid ``token`` was signed for. Raises :class:`InvalidLink` when the token
        is expired, its signature does not match, or it does not hold a uuid."""
        try:
            value = self._serializer.loads(token, max_age=self.ttl_seconds)
        except BadData:
            raise InvalidLink() from None
        if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
            raise InvalidLink()
        return value

    def url_builder(self, base_url: str) -> Callable[[str], str]:
        """card uuid -> absolute link URL under ``base_url`` (the public base of this service,
        e.g. ``https://cds.example.org/vcf``; a trailing slash is ignored)."""
        root = base_url.rstrip("/") + PATH + "?token="
        return lambda card_uuid: root + self.token(card_uuid)
