"""The CDS Hooks 2.0 wire format: pydantic models of requests and responses with the spec's
rules (whose JSON Schemas the OpenAPI document publishes), request envelope and context
parsing (JSON Schemas in ``schemas/``), prefetch read into typed FHIR R4B resources, and the
errors a request can raise, as FHIR OperationOutcomes. No Flask, SQLAlchemy or requests, no
network I/O and no clinical knowledge."""
