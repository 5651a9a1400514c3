"""Everything persisted: the database (SQLAlchemy engine, Alembic migrations), its tables, the
audit trail of every hook call, stored feedback, the shared ``jti`` replay cache table, the
report, and the explanation view model read back from the audit record. No Flask."""
