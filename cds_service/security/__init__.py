"""Trust: client JWT verification (CDS Hooks 2.0 §Trusting CDS Clients), the ``jti`` replay
cache interface and its per-process implementation, and signed "Why this advice?" links.
No Flask and no database (the database cache lives in :mod:`cds_service.store`)."""
