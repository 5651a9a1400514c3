"""``GET /explain?token=...``: the "Why this advice?" page a card links to (server-rendered HTML).

The card's link (CDS Hooks 2.0 §Link, ``type: absolute``) is built per request by
:func:`render_options`: under ``PUBLIC_BASE_URL`` when set (a deployment behind a proxy),
else under the host URL the request came in on. The page reads the card's audit record, so
any worker or host answers it. Answers: 200 the page; 403 a plain page for an expired,
forged or missing token (no detail of why); 404 a plain page when no such card was
recorded; 503 when the database cannot be read. No JavaScript; no request to anything
else; the token is never logged and never sent on as a Referer.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, render_template, request
from sqlalchemy.exc import SQLAlchemyError

from cds_service.decision.render import RenderOptions
from cds_service.security.links import PATH, InvalidLink
from cds_service.store.explanation import load_explanation
from cds_service.web.state import AppState, current_state

log = logging.getLogger("cds_service.explain")
bp = Blueprint("explain", __name__, template_folder="templates")

RETRY_AFTER_S = 30
# No script at all; styles only from the page itself; nothing may be framed in, posted to
# or loaded from elsewhere. The page never sends a Referer, which would carry the token.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_ERRORS = {
    403: ("This link is not valid",
          "The link has expired or is not valid. Open the advice again from the patient's chart to get a new link."),
    404: ("Advice not found",
          "This service has no record of that advice. Records are kept for a limited time."),
    503: ("Explanation not available right now",
          "The explanation cannot be shown at the moment. Please try again in a minute."),
}


def render_options(state: AppState) -> RenderOptions:
    """The app's render options plus this request's "Why this advice?" link builder."""
    base = state.settings.public_base_url or request.url_root
    return replace(state.render_options, explain_url=state.explain_links.url_builder(base))


def _html(template: str, status: int, **context: Any) -> Response:
    resp = Response(render_template(template, **context), status=status, mimetype="text/html")
    resp.headers.update(SECURITY_HEADERS)
    return resp


def _error(status: int) -> Response:
    title, message = _ERRORS[status]
    resp = _html("explain/error.html", status, title=title, message=message)
    if status == 503:
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
    return resp


@bp.get(PATH)
def explain() -> Response:
    st = current_state()
    try:
        card_uuid = st.explain_links.card_uuid(request.args.get("token", ""))
    except InvalidLink:
        log.info("explanation page: 403 (link not valid)")
        return _error(403)
    try:
        # Bounded like every request's database step: a hung database gets a 503 in time, and
        # a pooled connection lost to a server restart is replaced, not shown as an error.
        explanation = st.database.bounded(load_explanation, st.database, st.knowledge, card_uuid)
    except SQLAlchemyError as exc:
        log.error("explanation page: audit record not readable (%s)", type(exc).__name__)
        return _error(503)
    if explanation is None:
        log.info("explanation page: 404 (no audit record of the card)")
        return _error(404)
    return _html("explain/page.html", 200, e=explanation)
