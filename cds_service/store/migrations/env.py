"""Alembic environment for the service's schema (run through ``vcf-cds db upgrade``).

``cds_service.store.db.Database.upgrade`` hands over an open connection in
``config.attributes["connection"]``; the ``alembic`` command line (``-x url=...`` or
``sqlalchemy.url``) is supported for a DBA who prefers it, and offline mode prints SQL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from cds_service.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database URL: alembic -x url=postgresql+psycopg://... upgrade head")
    return url


def _run(connection) -> None:
    # Batch mode lets later migrations alter SQLite tables (copy-and-move).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    _run(config.attributes["connection"])
else:
    engine = create_engine(_url())
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
