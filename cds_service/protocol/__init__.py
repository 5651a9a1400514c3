"""The CDS Hooks 2.0 wire format: pydantic models of requests and responses with the spec's
rules, request envelope and context parsing (JSON Schemas in ``schemas/``), and the errors a
request can raise, as FHIR OperationOutcomes. No Flask, SQLAlchemy or requests."""
