"""Client JWTs for local testing: what a CDS Client signs and sends with every call.

CDS Hooks 2.0 §Trusting CDS Clients: a JWT signed with the client's private key, header
``alg``/``typ: JWT``/``kid`` (and optionally ``jku``), claims ``iss``, ``aud`` (the exact URL
called), ``exp``, ``iat`` and ``jti``. :func:`mint_client_token` builds one with PyJWT the
way the CDS Hooks sandbox does (ES384, five minutes, a fresh uuid4 ``jti``), so the service
can be called with curl while authentication is on. Tests and local use only: a real
client's key never leaves the client.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["TokenError", "mint_client_token"]

# Curve -> JWA algorithm (RFC 7518 §3.4); RSA keys sign RS384, which CDS Hooks recommends.
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGORITHM = "RS384"


class TokenError(Exception):
    """The token cannot be minted (unreadable key, no matching key id, bad URL); the message says why."""


def mint_client_token(url: str, *, key_file: str | Path, issuer: str, kid: str | None = None,
                      jwks_file: str | Path | None = None, lifetime_seconds: int = 300, jku: str | None = None,
                      tenant: str | None = None, now: float | None = None) -> str:
    """A signed client JWT for one call to ``url``.

    Args:
        url: the exact URL the token is sent to (the ``aud`` claim), ``http(s)://host/path``.
        key_file: PEM private key (EC P-256/P-384/P-521 or RSA); the algorithm follows the key.
        issuer: the ``iss`` claim.
        kid: key id for the header; or ``jwks_file``: a JWK Set holding the key's public half,
            whose ``kid`` is used.
        lifetime_seconds: ``exp`` - ``iat``.
        jku: optional ``jku`` header (the issuer's JWK Set URL).
        tenant: optional ``tenant`` claim.
        now: POSIX time of ``iat`` (default: the clock).

    Raises :class:`TokenError`.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TokenError(f"not an http(s) URL: {url!r} (give the exact URL the token is sent to)")
    key = _private_key(Path(key_file))
    algorithm = _algorithm(key)
    if kid is None:
        if jwks_file is None:
            raise TokenError("give --kid, or --jwks to take it from a JWK Set")
        kid = _kid_from_jwks(key, Path(jwks_file))
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"iss": issuer, "aud": url, "iat": issued, "exp": issued + lifetime_seconds,
                                 "jti": str(uuid.uuid4())}
    if tenant is not None:
        claims["tenant"] = tenant
    headers = {"typ": "JWT", "kid": kid, **({"jku": jku} if jku else {})}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _private_key(path: Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenError(f"cannot read the key file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TokenError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TokenError(f"{path}: only EC and RSA keys are supported")
    return key


def _algorithm(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return _RSA_ALGORITHM
    try:
        return _EC_ALGORITHMS[key.curve.name]
    except KeyError:
        raise TokenError(f"unsupported EC curve {key.curve.name} (P-256, P-384 or P-521)") from None


def _public_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _kid_from_jwks(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> str:
    try:
        key_set = jwt.PyJWKSet.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, jwt.PyJWKSetError) as exc:
        raise TokenError(f"cannot read the JWK Set {path}: {exc}") from None
    mine = _public_der(key.public_key())
    for jwk in key_set.keys:
        if jwk.key_id and hasattr(jwk.key, "public_bytes") and _public_der(jwk.key) == mine:
            return jwk.key_id
    raise TokenError(f"no key in {path} has a kid and matches the private key")
