"""HTTP-side protections: client authentication on every call, and CORS for browser clients.

- Authentication (CDS Hooks 2.0 §Trusting CDS Clients): a ``before_request`` hook on the whole
  app, so every route (discovery, each service, feedback, and any added later) is covered
  without naming view functions. Only CORS preflights (``OPTIONS``) and :data:`PUBLIC_PATHS`
  are open. A refused call gets 401 with one generic OperationOutcome whatever the cause; the
  cause is logged, without the token.
- The ``jti`` replay check: on a hook call (:data:`HOOK_CALL_ENDPOINT`) this process's cache
  is checked before the call is evaluated, and the shared record is left pending
  (:func:`take_pending_token`) for the view to write with the audit record, in one database
  transaction; a replay found there is answered with :func:`refuse_replay`. A pending record
  the view did not take (unknown service, body not JSON, 413, 500) is written alone after
  the response is made, which a replay then turns into a 401: every call with a good token
  consumes its ``jti``. Every other route records the ``jti`` before its view runs.
- CORS (CDS Hooks 2.0 §Cross-Origin Resource Sharing) through flask-cors, for the origins in
  ``CORS_ORIGINS``: preflight answered, the same headers on GET, POST and error responses,
  ``Authorization`` and ``Content-Type`` allowed.
"""

from __future__ import annotations

import json
import logging

from flask import Flask, Response, g, request
from flask_cors import CORS

from cds_service.protocol.errors import operation_outcome
from cds_service.security.auth import AuthError, TokenVerifier, load_trusted_issuers
from cds_service.security.replay import FallbackReplayCache, PendingToken
from cds_service.settings import ENV_PREFIX, Settings, SettingsError

log = logging.getLogger("cds_service.web.security")

# /explain is opened by the clinician's browser, which has no client JWT: the signed,
# short-lived token in its link is the credential (explain_links.py).
# Probes and the Prometheus scrape come from the platform, not from CDS Clients; they carry
# no patient data (keep /metrics on the internal network, or METRICS_ENABLED=false).
PUBLIC_PATHS = frozenset({"/openapi.json", "/explain", "/healthz", "/readyz", "/metrics"})
# The view that writes the jti replay entry itself, with the call's audit record (hooks.py).
HOOK_CALL_ENDPOINT = "cds.call_service"
_PENDING = "vcf_cds_pending_token"
CORS_MAX_AGE_SECONDS = 600


def install_security(app: Flask, settings: Settings, *, replay_cache: FallbackReplayCache) -> None:
    """Add authentication (unless ``settings.auth`` is off) and CORS (when origins are set).

    The accepted client is left in ``flask.g.cds_client`` (:class:`cds_service.security.auth.VerifiedClient`,
    or None with auth off) for views that record who called.

    Raises :class:`SettingsError` when auth is on without ``TRUSTED_ISSUERS`` or the issuers
    file is unusable.
    """
    if settings.auth:
        if settings.trusted_issuers is None:
            raise SettingsError(
                f"setting {ENV_PREFIX}TRUSTED_ISSUERS: required while {ENV_PREFIX}AUTH is on: name the JSON file of "
                f"trusted CDS Clients (see README, 'Client authentication'), or set {ENV_PREFIX}AUTH=off for local use only")
        issuers = load_trusted_issuers(settings.trusted_issuers)
        verifier = TokenVerifier(issuers, replay_cache, leeway_seconds=settings.jwt_leeway_seconds,
                                 max_lifetime_seconds=settings.jwt_max_lifetime_seconds)
        app.before_request(_authenticator(verifier, replay_cache, settings.public_base_url))
        log.info("client authentication on: %d trusted issuer(s)", len(issuers))
        if settings.public_base_url is None:
            log.warning("%sPUBLIC_BASE_URL is not set: the JWT aud is checked against the URL built from the "
                        "request's Host header; set it when the service runs behind a proxy", ENV_PREFIX)
    else:
        app.before_request(_no_client)
        log.warning("%sAUTH is off: calls are NOT authenticated; use only for local testing on 127.0.0.1",
                    ENV_PREFIX)
    if settings.cors_origin_list:
        CORS(app, origins=settings.cors_origin_list, methods=["GET", "POST", "OPTIONS"],
             allow_headers=["Authorization", "Content-Type"], max_age=CORS_MAX_AGE_SECONDS)
    if settings.auth:
        # Registered after flask-cors, so it runs before it (Flask runs them last first): a
        # response it turns into a 401 still gets the CORS headers.
        app.after_request(_record_untaken_token)


def _no_client() -> None:
    g.cds_client = None


def _authenticator(verifier: TokenVerifier, replay: FallbackReplayCache, public_base_url: str | None):
    def authenticate() -> Response | None:
        g.cds_client = None
        if request.method == "OPTIONS" or request.path in PUBLIC_PATHS:
            return None
        # aud is the exact URL the client called; behind a proxy only the configured base knows it.
        audience = public_base_url + request.path if public_base_url else request.base_url
        hook_call = request.endpoint == HOOK_CALL_ENDPOINT
        try:
            client = verifier.verify_request_token(request.headers.get("Authorization"), audience,
                                                   record_replay=not hook_call)
        except AuthError as exc:
            return _refuse(exc.reason)
        if hook_call:
            if not replay.remember_here(client.replay_key, client.replay_until):
                return _refuse("jti replayed")
            setattr(g, _PENDING, replay.pending(client.replay_key, client.replay_until))
        g.cds_client = client
        return None

    return authenticate


def take_pending_token() -> PendingToken | None:
    """The ``jti`` replay entry of this hook call, still to be written (None with auth off, or
    taken already): the caller writes it, in its own transaction, and answers
    :func:`refuse_replay` if it was a replay."""
    return g.pop(_PENDING, None)


def refuse_replay() -> Response:
    """The 401 of a call whose ``jti`` was found already used when its record was written."""
    return _refuse("jti replayed")


def _record_untaken_token(response: Response) -> Response:
    token = take_pending_token()
    if token is not None and not token.cache.remember_shared(token.key, token.expires_at):
        return refuse_replay()
    return response


def _refuse(reason: str) -> Response:
    log.warning("401 for %s %r: %s", request.method, request.path, reason)
    return _unauthorized()


def _unauthorized() -> Response:
    body = operation_outcome(401, "login", "the request is not authenticated")
    return Response(json.dumps(body), status=401, mimetype="application/json",
                    headers={"WWW-Authenticate": "Bearer"})
