"""Authenticating CDS Clients: the bearer JWT of every call (CDS Hooks 2.0 §Trusting CDS Clients).

The CDS Client signs a JWT per call and sends it as ``Authorization: Bearer <JWT>``. Checked
here, in this order (each failure raises :class:`AuthError`):

1. the header is ``Bearer <compact JWS>`` of at most :data:`MAX_TOKEN_CHARS`;
2. JOSE header: ``alg`` is one of :data:`ACCEPTED_ALGORITHMS` (asymmetric only: the spec forbids
   ``none`` and HMAC), ``typ`` is ``JWT``, ``kid`` a string, ``jku`` (optional) a string;
3. ``iss`` is a trusted issuer (file named by ``VCF_CDS_TRUSTED_ISSUERS``, see
   :func:`load_trusted_issuers`);
4. the signing key: from the issuer's pinned ``jwks_file``, or fetched with
   :class:`jwt.PyJWKClient` from the ``jku`` URL, which must be on the issuer's allowlist
   (anything else is refused without being fetched); key sets are cached
   (:class:`IssuerKeySet`, on a clock of ours that tests can replace) for
   :data:`JWKS_CACHE_SECONDS` and refetched on an unknown ``kid`` at most once per
   :data:`JWKS_REFRESH_COOLDOWN_SECONDS`;
5. PyJWT verifies the signature and the claims: ``iss``, ``aud``, ``exp``, ``iat``, ``jti``
   required; ``aud`` equal to the exact URL called; ``exp``/``iat``/``nbf`` with a small
   leeway; ``tenant`` (optional) a string;
6. ``jti`` was not seen before from this issuer within the token's lifetime (:mod:`.replay`);
   a caller may take this step over (``record_replay=False``) to record the ``jti`` in the
   same database transaction as the call's audit record.

The token is decoded by PyJWT once, with the key: the JOSE header and ``iss`` that pick the
key are read beforehand by :func:`_peek` (base64url and JSON only; nothing read there is
trusted before PyJWT has verified the signature and ``iss``).

Nothing here knows about HTTP; ``security.py`` turns :class:`AuthError` into a 401.
"""

from __future__ import annotations

import binascii
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt.utils import base64url_decode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds_service.fhir.policy import is_loopback
from cds_service.security.replay import ReplayCache
from cds_service.settings import ENV_PREFIX, SettingsError

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "AuthError",
    "IssuerKeySet",
    "TokenVerifier",
    "TrustedIssuer",
    "VerifiedClient",
    "load_trusted_issuers",
]

# CDS Hooks 2.0 recommends ES384 and RS384; the other asymmetric JWA algorithms are accepted
# because EHRs pick their own. Fixed here, never taken from the token.
ACCEPTED_ALGORITHMS = ("ES384", "RS384", "ES256", "ES512", "RS256", "RS512", "PS256", "PS384", "PS512")
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
JWKS_REFRESH_COOLDOWN_SECONDS = 60
JWKS_CACHE_SECONDS = 300
JWKS_FETCH_TIMEOUT_SECONDS = 5
# A real CDS Hooks JWT is well under 2 KB; a cap keeps hostile headers away from the parser.
MAX_TOKEN_CHARS = 8192

_BEARER = re.compile(r"Bearer +([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*)", re.IGNORECASE)

# PyJWT exception -> reason logged server side, most specific first.
_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token iat or nbf is in the future"),
    (jwt.InvalidAudienceError, "aud is not the URL called"),
    (jwt.InvalidIssuerError, "iss does not match"),
    (jwt.MissingRequiredClaimError, "a required claim is missing"),
    (jwt.InvalidSignatureError, "signature does not verify"),
    (jwt.InvalidAlgorithmError, "algorithm does not fit the key"),
    (jwt.InvalidKeyError, "key does not fit the algorithm"),
)


class AuthError(Exception):
    """The request's bearer token is not accepted.

    Attributes:
        reason: short English reason for the server log (``"token expired"``, ``"jti replayed"``
            ...). Never contains the token or claim values; never sent to the client.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedClient:
    """The CDS Client behind an accepted token.

    Attributes:
        issuer: the ``iss`` claim (a trusted issuer).
        tenant: the optional ``tenant`` claim (the healthcare organization), or None.
        token_id: the ``jti`` claim.
        expires_at: the ``exp`` claim, POSIX seconds.
        replay_until: until when (POSIX seconds: ``exp`` plus the leeway) the ``jti`` must be
            remembered to refuse a replay.
    """

    issuer: str
    tenant: str | None
    token_id: str
    expires_at: float
    replay_until: float = 0.0

    @property
    def replay_key(self) -> str:
        """The replay cache key of this token: ``"<iss> <jti>"`` (jti values are unique per issuer)."""
        return f"{self.issuer} {self.token_id}"


# ------------------------------------------------------------------ trusted issuers


class _IssuerEntry(BaseModel):
    """One entry of the trusted-issuers file: ``{"iss", "jwks_file"}`` or ``{"iss", "jku": [...]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iss: str = Field(min_length=1)
    jwks_file: Path | None = None
    jku: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_key_source(self) -> _IssuerEntry:
        if (self.jwks_file is None) == (self.jku is None):
            raise ValueError("give exactly one of 'jwks_file' (a JWK Set file) or 'jku' (allowlisted JWK Set URLs)")
        for url in self.jku or ():
            _check_jku_url(url)
        return self


def _check_jku_url(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and is_loopback(host):
        return  # a JWK Set served on this machine, for tests and local sandboxes
    raise ValueError(f"jku '{url}' must be an https URL (http only for loopback hosts)")


Clock = Callable[[], float]
"""Seconds on a monotonic clock (:func:`time.monotonic` by default; tests pass a fake one)."""


class IssuerKeySet:
    """The signing keys published at one allowlisted JWK Set URL, cached.

    :class:`jwt.PyJWKClient` fetches and parses the set (no redirects, http(s) only, a
    timeout, signing keys only); the cache is ours, so that its times come from ``clock``:
    the set is kept :data:`JWKS_CACHE_SECONDS` after a fetch, and a ``kid`` it lacks makes
    it refetch at most once per :data:`JWKS_REFRESH_COOLDOWN_SECONDS` (a flood of tokens with
    made-up ``kid`` values never floods the issuer). A failed fetch keeps the keys fetched
    before. Thread-safe.
    """

    def __init__(self, url: str, *, clock: Clock = time.monotonic) -> None:
        self.url = url
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=JWKS_FETCH_TIMEOUT_SECONDS)
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None

    def signing_key(self, kid: str) -> jwt.PyJWK:
        """The signing key ``kid``, fetching the set when the cache is empty or stale, or
        (cool-down permitting) when it lacks ``kid``.

        Raises :class:`jwt.PyJWKClientConnectionError` (set not fetched),
        :class:`jwt.PyJWKClientError` (no such key, or no signing keys at all),
        other :class:`jwt.PyJWTError` or ``ValueError`` (a set that is not a JWK Set).
        """
        with self._lock:
            now, fetched_at = self._clock(), self._fetched_at
            if fetched_at is None or now - fetched_at >= JWKS_CACHE_SECONDS:
                self._fetch(now)
                fetched_at = now
            key = self._match(kid)
            if key is None and now - fetched_at >= JWKS_REFRESH_COOLDOWN_SECONDS:
                self._fetch(now)
                key = self._match(kid)
            if key is None:
                raise jwt.PyJWKClientError(f"no signing key with kid {kid!r}")
            return key

    def _fetch(self, now: float) -> None:
        self._keys = self._client.get_signing_keys()  # raises before anything is replaced
        self._fetched_at = now

    def _match(self, kid: str) -> jwt.PyJWK | None:
        return next((k for k in self._keys if k.key_id == kid), None)


class TrustedIssuer:
    """A trusted CDS Client issuer and where its signing keys come from.

    Either ``jwks`` (a pinned :class:`jwt.PyJWKSet` read from a file; a ``jku`` header on the
    token is then never fetched) or ``jku`` (allowlisted JWK Set URLs, one cached
    :class:`IssuerKeySet` each, on ``clock``).
    """

    def __init__(self, iss: str, *, jwks: jwt.PyJWKSet | None = None, jku: tuple[str, ...] = (),
                 clock: Clock = time.monotonic) -> None:
        self.iss = iss
        self._jwks = jwks
        # kid -> parsed key of the pinned set (the first of a kid wins, as in PyJWKSet): one
        # dict lookup per call instead of a scan.
        self._pinned = {k.key_id: k for k in reversed(jwks.keys) if k.key_id is not None} if jwks is not None else {}
        self._key_sets = {url: IssuerKeySet(url, clock=clock) for url in jku}

    def signing_key(self, kid: str, jku: str | None) -> jwt.PyJWK:
        """The public key ``kid`` of this issuer.

        ``jku`` is the token's header value: it must be on the allowlist (a token without one
        uses the allowlist's only URL). Raises :class:`AuthError` for an unknown ``kid``, a
        ``jku`` off the allowlist (not fetched) or an unreachable or unusable JWK Set.
        """
        if self._jwks is not None:
            key = self._pinned.get(kid)
            if key is None:
                raise AuthError("no key with this kid in the issuer's jwks_file")
            if key.public_key_use not in ("sig", None):
                raise AuthError("the kid names a key not meant for signatures")
            return key
        if jku is None and len(self._key_sets) == 1:
            jku = next(iter(self._key_sets))
        key_set = self._key_sets.get(jku) if jku is not None else None
        if key_set is None:
            raise AuthError("jku is not on the issuer's allowlist (not fetched)")
        try:
            return key_set.signing_key(kid)
        except jwt.PyJWKClientConnectionError:
            raise AuthError("the issuer's JWK Set could not be fetched") from None
        except jwt.PyJWKClientError:
            raise AuthError("no key with this kid in the issuer's JWK Set") from None
        except (jwt.PyJWTError, ValueError):  # ValueError: a body that is not JSON
            raise AuthError("the issuer's JWK Set is unusable") from None


def load_trusted_issuers(path: Path, *, clock: Clock = time.monotonic) -> dict[str, TrustedIssuer]:
    """Read the trusted-issuers file: a JSON list of ``{"iss": ..., "jwks_file": ...}`` or
    ``{"iss": ..., "jku": ["https://...", ...]}`` entries. A relative ``jwks_file`` is relative
    to the file's folder; pinned key sets are read now, ``jku`` sets on first use (cached on
    ``clock``, see :class:`IssuerKeySet`).

    Returns ``{iss: TrustedIssuer}``. Raises :class:`SettingsError` naming the file and entry.
    """
    name = f"setting {ENV_PREFIX}TRUSTED_ISSUERS"
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise SettingsError(f"{name}: {path} must hold a non-empty JSON list of issuer entries")
    issuers: dict[str, TrustedIssuer] = {}
    for index, item in enumerate(raw):
        where = f"{name}: {path} entry {index}"
        try:
            entry = _IssuerEntry.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "entry"
            raise SettingsError(f"{where}: {field}: {err['msg']}") from None
        if entry.iss in issuers:
            raise SettingsError(f"{where}: issuer {entry.iss} is listed twice")
        if entry.jwks_file is not None:
            issuers[entry.iss] = TrustedIssuer(entry.iss, jwks=_read_jwks(Path(path).parent / entry.jwks_file, where))
        else:
            issuers[entry.iss] = TrustedIssuer(entry.iss, jku=tuple(entry.jku or ()), clock=clock)
    return issuers


def _read_jwks(path: Path, where: str) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise SettingsError(f"{where}: jwks_file {path} is not a usable JWK Set: {exc}") from None


# --------------------------------------------------------------------- verifying


class TokenVerifier:
    """Verifies CDS Hooks client JWTs against the trusted issuers.

    Args:
        issuers: from :func:`load_trusted_issuers`.
        replay_cache: remembers accepted ``jti`` values (keyed ``"<iss> <jti>"``) until
            ``exp`` plus the leeway.
        leeway_seconds: clock skew tolerated on ``exp``, ``iat`` and ``nbf``.
        max_lifetime_seconds: the longest ``exp - iat`` accepted (``JWT_MAX_LIFETIME_SECONDS``):
            a token valid for days would be a long-lived credential, and its ``jti`` would
            have to be remembered as long.
    """

    def __init__(self, issuers: Mapping[str, TrustedIssuer], replay_cache: ReplayCache, *,
                 leeway_seconds: float = 30, max_lifetime_seconds: float = 3600) -> None:
        self._issuers = dict(issuers)
        self._replay = replay_cache
        self._leeway = leeway_seconds
        self._max_lifetime = max_lifetime_seconds
        # One PyJWT decoder with its options merged once, rather than per call.
        self._jwt = jwt.PyJWT({"require": list(REQUIRED_CLAIMS)})

    def verify_request_token(self, authorization: str | None, audience: str, *,
                             record_replay: bool = True) -> VerifiedClient:
        """Check the ``Authorization`` header value of a call to ``audience`` (the exact URL).

        ``record_replay=False`` leaves step 6 (the ``jti`` replay check) to the caller, which
        then records :attr:`VerifiedClient.replay_key` until :attr:`VerifiedClient.replay_until`
        itself (the hook call does, in its audit transaction).

        Returns the :class:`VerifiedClient`. Raises :class:`AuthError` with the reason.
        """
        token = _bearer_token(authorization)
        header, unverified = _peek(token)
        alg, kid, jku = header.get("alg"), header.get("kid"), header.get("jku")
        if alg not in ACCEPTED_ALGORITHMS:
            raise AuthError("alg is not an accepted asymmetric algorithm")
        if not isinstance(header.get("typ"), str) or header["typ"].upper() != "JWT":
            raise AuthError("typ header is not JWT")
        if not isinstance(kid, str) or (jku is not None and not isinstance(jku, str)):
            raise AuthError("kid missing, or kid or jku not a string")
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None or not isinstance(iss, str):
            raise AuthError("iss is not a trusted issuer")
        key = issuer.signing_key(kid, jku)
        try:
            # The key object, not the PyJWK: a JWK Set entry without "alg" would otherwise pin
            # RSA keys to RS256. The algorithm list is ours, so the token cannot pick HMAC.
            claims = self._jwt.decode(token, key.key, algorithms=[alg], audience=audience, issuer=iss,
                                      leeway=self._leeway)
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
            raise AuthError(_pyjwt_reason(exc)) from None
        jti, tenant = claims["jti"], claims.get("tenant")
        if not isinstance(jti, str) or not jti:
            raise AuthError("jti is not a non-empty string")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthError("tenant is not a string")
        # RFC 7519 §2 NumericDate is a JSON number: PyJWT also takes "1700000000" (a string).
        if any(name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], int | float))
               for name in ("exp", "iat", "nbf")):
            raise AuthError("exp, iat or nbf is not a JSON number")
        try:
            expires_at = float(claims["exp"])
            lifetime = expires_at - float(claims["iat"])
        except (OverflowError, ValueError, TypeError):
            raise AuthError("exp is out of range") from None
        if lifetime > self._max_lifetime:
            raise AuthError("token lifetime (exp - iat) is longer than JWT_MAX_LIFETIME_SECONDS")
        client = VerifiedClient(issuer=iss, tenant=tenant, token_id=jti, expires_at=expires_at,
                                replay_until=expires_at + self._leeway)
        if record_replay and not self._replay.remember(client.replay_key, client.replay_until):
            raise AuthError("jti replayed")
        return client


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JOSE header and the claims of a compact JWS (RFC 7515 §7.1), unverified: only to
    pick the issuer and key; PyJWT then decodes and verifies the token itself.

    Raises :class:`AuthError` when either part is not base64url of a JSON object.
    """
    try:
        header_b64, payload_b64, _ = token.split(".")
        header = json.loads(base64url_decode(header_b64))
        payload = json.loads(base64url_decode(payload_b64))
    except (ValueError, binascii.Error, RecursionError):  # UnicodeDecodeError is a ValueError
        raise AuthError("token is not a well-formed JWT") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise AuthError("token is not a well-formed JWT")
    return header, payload


def _pyjwt_reason(exc: Exception) -> str:
    return next((reason for cls, reason in _PYJWT_REASONS if isinstance(exc, cls)), "token rejected by the JWT library")


def _bearer_token(authorization: Any) -> str:
    if not authorization:
        raise AuthError("no Authorization header")
    if not isinstance(authorization, str) or len(authorization) > MAX_TOKEN_CHARS:
        raise AuthError("Authorization header too long")
    match = _BEARER.fullmatch(authorization.strip())
    if match is None:
        raise AuthError("Authorization is not 'Bearer <JWT>'")
    return match.group(1)
