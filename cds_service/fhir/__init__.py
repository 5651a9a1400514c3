"""The FHIR client: fetches the prefetch a request lacks from the EHR's FHIR server
(CDS Hooks 2.0 §Prefetch Template), within a time budget and an SSRF allowlist. The only
code that makes outbound HTTP requests."""
