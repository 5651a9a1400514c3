"""CDS Client JWTs for tests, made the way real clients make them.

- The CDS Hooks sandbox (../shared/interop/cds-hooks-sandbox/, origin github.com/cds-hooks/sandbox,
  see ../shared/interop/README.md) signs every call with its published P-384 key: header
  {alg ES384, typ JWT, kid, jku}, claims {iss https://sandbox.cds-hooks.org, aud = the exact URL
  called, exp = iat + 300, iat, jti uuid4}.
- The CDS Hooks 2.0 specification's example (https://cds-hooks.hl7.org/2.0/, §Trusting CDS
  Clients, "Example"; source text github.com/cds-hooks/docs docs/specification): its token, JWK
  Set and private JWK are test vectors published in the spec, so they are copied exactly.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from conftest import INTEROP, make_app

SANDBOX_DIR = INTEROP / "cds-hooks-sandbox"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_JWKS_PATH = "/.well-known/jwks.json"
# Trusts the sandbox with a jwks_file entry naming ../shared's copy of its JWK Set.
SANDBOX_ISSUERS_FILE = Path(__file__).parent / "data" / "sandbox-issuers.json"

# Test client requests go to http://localhost/ unless a test says otherwise.
BASE = "http://localhost"

SPEC_ISS = "https://fhir-ehr.example.com/"
SPEC_TOKEN = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGlyLWVoci5leGFtcGxlLmNvbS9qd2tfdXJpIn0"
    ".eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIsInN1YiI6ImNsaWVudF9pZCIsImF1ZCI6Imh0dHBzOi8vY2RzLmV4YW1wbGUub3JnL2Nkcy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0MjI1Njg4NjAsImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUyMmIwMjEtZTFiNy00NjExLWJhNWItOGVlYzZhMzNhYzFlIiwidGVuYW50IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFhZDMwMmEyIn0"
    ".CUFPkplnWd6YGIvzoHolWCQBDsCL8QtTWKGg_QFpS169WrqDGzktRi-_we6-6rVzbjerU27ZKww_SW0-b9RTz-dPJNcqsueMio8r6EqXUXhbLm_ch3XFSbDlGHDl_tqo"
)
SPEC_JWKS = {"keys": [{
    "kty": "EC", "use": "sig", "crv": "P-384", "kid": "example-kid",
    "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
    "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
    "alg": "ES384",
}]}
SPEC_PRIVATE_JWK = {**SPEC_JWKS["keys"][0], "d": "SeFXUXda8UomZ8GFUl7HH_Oi15rIbfMcsWj9ecIsDR8kLbqsEz2CGNgwy_IcILxy"}


def sandbox_private_key() -> bytes:
    return (SANDBOX_DIR / "ecprivkey.pem").read_bytes()


def sandbox_jwks() -> dict[str, Any]:
    return json.loads((SANDBOX_DIR / "jwks.json").read_text(encoding="utf-8"))


def sandbox_claims(aud: Any, now: float | None = None) -> dict[str, Any]:
    iat = round(time.time() if now is None else now)
    return {"iss": SANDBOX_ISS, "aud": aud, "exp": iat + 300, "iat": iat, "jti": str(uuid.uuid4())}


def sandbox_token(aud: Any, *, jku: str | None = SANDBOX_JKU, kid: str = SANDBOX_KID,
                  key: Any = None, **claims: Any) -> str:
    """A token as the sandbox signs it, for ``aud``; ``claims`` override or (value None) drop claims."""
    payload = {**sandbox_claims(aud), **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    headers = {"typ": "JWT", "kid": kid, **({"jku": jku} if jku else {})}
    return jwt.encode(payload, sandbox_private_key() if key is None else key, algorithm="ES384", headers=headers)


def hand_made_token(header: dict[str, Any], claims: dict[str, Any],
                    sign: Callable[[bytes], bytes] | None = None) -> str:
    """A compact JWS assembled by hand, for tokens no library would sign (alg none, HMAC keyed
    with a public key). ``sign`` gets the signing input; without it the signature is empty."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()) if sign else b'')}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_issuers(folder: Path, entries: list[dict[str, Any]], jwks_files: dict[str, Any] | None = None) -> Path:
    """Write a trusted-issuers file (and the JWK Set files it names) into ``folder``."""
    for name, content in (jwks_files or {}).items():
        (folder / name).write_text(json.dumps(content), encoding="utf-8")
    path = folder / "trusted-issuers.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def sandbox_file_app(**overrides: Any):
    """An app with auth on that trusts the sandbox through its JWK Set file, pinned (no fetching)."""
    return make_app(AUTH="on", TRUSTED_ISSUERS=str(SANDBOX_ISSUERS_FILE), **overrides)
