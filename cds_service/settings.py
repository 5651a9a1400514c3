"""Service settings: from a mapping passed to ``create_app``, else ``VCF_CDS_*`` variables.

Keys are the field names in upper case (``KNOWLEDGE_DIR``); environment variables add the
``VCF_CDS_`` prefix (``VCF_CDS_KNOWLEDGE_DIR``). Invalid values raise
:class:`SettingsError` naming the setting, at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .fhir_client import FetchPolicy, parse_allowlist

ENV_PREFIX = "VCF_CDS_"


class SettingsError(Exception):
    """A setting with an unusable value; the message names it."""


class Settings(BaseModel):
    """All settings with their defaults (the embedded, local-use defaults)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    knowledge_dir: Path | None = Field(None, description="ACR table, value sets and card text; default: the bundled data")
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=1024, description="413 above this request size")
    argonaut_system_actions: bool = Field(True, description="also send ratings under extension.systemActions")
    qcdsm: str = Field("vcf-cds-hooks", min_length=1, description="pama-rating-qcdsm-consulted value")
    max_json_depth: int = Field(100, ge=10, le=1000, description="400 for deeper JSON nesting")
    fhir_allowlist: str = Field("", description="comma-separated FHIR base URLs the service may fetch from; "
                                "empty: never fetch, a request lacking prefetch gets 412")
    allow_http_loopback: bool = Field(False, description="allow http:// allowlist entries on loopback hosts")
    fhir_budget_seconds: float = Field(2.0, gt=0, le=30, description="total time for fetching one call's prefetch")
    fhir_connect_timeout_seconds: float = Field(1.0, gt=0, le=30, description="TCP connect timeout per request")
    fhir_page_size: int = Field(100, ge=1, le=1000, description="_count added to prefetch searches")
    fhir_max_pages: int = Field(10, ge=1, le=1000, description="Bundle pages read per prefetch key")
    fhir_max_resources: int = Field(1000, ge=1, le=100000, description="resources read per prefetch key")
    fhir_max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="size cap of one FHIR response")
    metrics_enabled: bool = Field(True, description="serve Prometheus metrics at GET /metrics (unauthenticated)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="vcf-cds serve log level")

    @model_validator(mode="after")
    def _check_allowlist(self) -> "Settings":
        try:
            parse_allowlist(self.fhir_allowlist, allow_http_loopback=self.allow_http_loopback)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}FHIR_ALLOWLIST: {exc}") from None
        return self

    def fetch_policy(self) -> FetchPolicy:
        """The limits for fetching missing prefetch (see :mod:`cds_service.fhir_client`)."""
        return FetchPolicy(
            allowlist=parse_allowlist(self.fhir_allowlist, allow_http_loopback=self.allow_http_loopback),
            budget_seconds=self.fhir_budget_seconds,
            connect_timeout_seconds=self.fhir_connect_timeout_seconds,
            page_size=self.fhir_page_size,
            max_pages=self.fhir_max_pages,
            max_resources=self.fhir_max_resources,
            max_response_bytes=self.fhir_max_response_bytes,
        )

    @classmethod
    def load(cls, config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> "Settings":
        """Settings from ``config`` (keys like ``KNOWLEDGE_DIR``) when given, else from
        ``environ`` (default ``os.environ``) with the ``VCF_CDS_`` prefix."""
        if config is not None:
            values = {k.lower(): v for k, v in config.items() if k.lower() in cls.model_fields}
        else:
            env = os.environ if environ is None else environ
            values = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                      if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() in cls.model_fields}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            if not err["loc"]:  # a check across settings: its message names them
                raise SettingsError(f"setting {err['msg'].removeprefix('Value error, ')}") from None
            name = ENV_PREFIX + ".".join(str(p) for p in err["loc"]).upper()
            raise SettingsError(f"setting {name}: {err['msg']}") from None
