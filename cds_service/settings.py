"""Service settings (pydantic-settings): from a mapping passed to ``create_app``, else ``VCF_CDS_*`` variables.

Keys are the field names in upper case (``KNOWLEDGE_DIR``); environment variables add the
``VCF_CDS_`` prefix (``VCF_CDS_KNOWLEDGE_DIR``). Invalid values raise
:class:`SettingsError` naming the setting, at start-up. Secrets (``DATABASE_URL``, which
may hold a password, ``AUDIT_HMAC_KEY``, ``EXPLAIN_LINK_SECRET``) are
:class:`pydantic.SecretStr`: their value is read with ``get_secret_value()`` and never
shows in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cds_service.fhir.policy import FetchPolicy, parse_allowlist

ENV_PREFIX = "VCF_CDS_"
MIN_SECRET_CHARS = 32
_BASE_URL = re.compile(r"https?://[^/?#\s]+(/[^?#\s]*)?")
_ORIGIN = re.compile(r"https?://[^/?#\s]+")


class SettingsError(Exception):
    """A setting with an unusable value; the message names it."""


class Settings(BaseSettings):
    """All settings with their defaults (the embedded, local-use defaults); frozen.

    Build it with :meth:`load`. The names, defaults and meanings are the README's settings table.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False, frozen=True, extra="ignore")

    knowledge_dir: Path | None = Field(None, description="ACR table, value sets and card text; default: the bundled data")
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=1024, description="413 above this request size")
    argonaut_system_actions: bool = Field(True, description="also send ratings under extension.systemActions")
    qcdsm: str = Field("vcf-cds-hooks", min_length=1, description="pama-rating-qcdsm-consulted value")
    pama_official_only: bool = Field(False, description="send PAMA ratings only for cells of the ACR's own published "
                                     "table (OFFICIAL); none for SEED or SECONDARY cells")
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
    def _check_allowlist(self) -> Settings:
        try:
            parse_allowlist(self.fhir_allowlist, allow_http_loopback=self.allow_http_loopback)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}FHIR_ALLOWLIST: {exc}") from None
        return self

    def fetch_policy(self) -> FetchPolicy:
        """The limits for fetching missing prefetch (see :mod:`cds_service.fhir.client`)."""
        return FetchPolicy(
            allowlist=parse_allowlist(self.fhir_allowlist, allow_http_loopback=self.allow_http_loopback),
            budget_seconds=self.fhir_budget_seconds,
            connect_timeout_seconds=self.fhir_connect_timeout_seconds,
            page_size=self.fhir_page_size,
            max_pages=self.fhir_max_pages,
            max_resources=self.fhir_max_resources,
            max_response_bytes=self.fhir_max_response_bytes,
        )
    data_dir: Path = Field(Path("var"), description="embedded database and generated audit key; relative to the working directory")
    database_url: SecretStr | None = Field(None, description="SQLAlchemy URL; default: SQLite file in DATA_DIR")
    audit_hmac_key: SecretStr | None = Field(None, description="secret keying the patient id hash in audit records")
    audit_retention_days: int = Field(365, ge=1, description="vcf-cds purge deletes audit records and feedback older than this")
    max_draft_orders: int = Field(50, ge=1, le=10_000, description="413 for more context.draftOrders entries")
    max_prefetch_entries: int = Field(5000, ge=1, le=1_000_000, description="413 for more Bundle entries in all of prefetch")
    max_record_read: int = Field(200, ge=1, le=1_000_000, description="prefetched Conditions (and, apart, Procedures) "
                                 "with a code the decision reads, read per request; the rest are listed under "
                                 "skippedResources")
    auth: bool = Field(True, description="verify the CDS Client's bearer JWT (on|off); off only for local use")
    trusted_issuers: Path | None = Field(None, description="JSON file of trusted issuers; required while auth is on")
    public_base_url: str | None = Field(None, description="base URL clients call (behind a proxy); the JWT aud is checked against it")
    jwt_leeway_seconds: int = Field(30, ge=0, le=300, description="clock skew allowed on exp, iat and nbf")
    cors_origins: str = Field("", description="comma-separated browser origins allowed by CORS; empty: no CORS headers")

    @field_validator("database_url")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty (unset it for the embedded database)")
        return value

    @field_validator("audit_hmac_key", "explain_link_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SECRET_CHARS} characters")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not _BASE_URL.fullmatch(value):
            raise ValueError("must be an http(s) URL without query or fragment, e.g. https://cds.example.org/hooks")
        return value.rstrip("/")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",") if o.strip()):
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"'{origin}' is not an origin (scheme://host[:port], no path), nor '*'")
        return value

    @property
    def request_limits(self) -> dict[str, int]:
        """The parser limits, as keyword arguments of :func:`cds_service.pipeline.evaluate`."""
        return {"max_depth": self.max_json_depth, "max_draft_orders": self.max_draft_orders,
                "max_prefetch_entries": self.max_prefetch_entries, "max_record_read": self.max_record_read}

    @property
    def cors_origin_list(self) -> list[str]:
        """``cors_origins`` split into origins (``["*"]``, ``["https://a.example", ...]`` or ``[]``)."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
    explain_link_secret: SecretStr | None = Field(None, description="secret signing 'Why this advice?' links; "
                                                  "default: derived from the audit key")
    explain_link_ttl_seconds: int = Field(3600, ge=1, le=86400, description="lifetime of a 'Why this advice?' link")
    # Reliability bounds (README "Deployment and limits").
    db_timeout_seconds: float = Field(1.0, gt=0, le=30, description="longest one database step holds a hook call, "
                                      "feedback or /readyz (then: fallback, 503); also the PostgreSQL lock_timeout")
    db_statement_timeout_seconds: float = Field(5.0, gt=0, le=600, description="PostgreSQL statement_timeout of the "
                                                "service's connections")
    jwt_max_lifetime_seconds: int = Field(3600, ge=60, le=86400, description="401 for a client JWT whose exp is "
                                          "further than this after its iat")

    @classmethod
    def load(cls, config: Mapping[str, Any] | None = None) -> Settings:
        """Settings from ``config`` (keys like ``KNOWLEDGE_DIR``, any case; other keys are
        ignored) when given, and then nothing from the environment; else from the
        ``VCF_CDS_*`` environment variables.

        Raises :class:`SettingsError` naming the first unusable setting (never its value).
        """
        try:
            if config is not None:
                return _FromMapping(**{str(k).lower(): v for k, v in config.items() if str(k).lower() in cls.model_fields})
            return cls()
        except ValidationError as exc:
            err = exc.errors(include_input=False)[0]
            message = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a check across settings: its message names them
                raise SettingsError(f"setting {message}") from None
            name = ENV_PREFIX + ".".join(str(p) for p in err["loc"]).upper()
            raise SettingsError(f"setting {name}: {message}") from None


class _FromMapping(Settings):
    """The same settings, read only from the keyword arguments (the mapping handed to
    :meth:`Settings.load`): a config mapping is complete, the environment is not consulted."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    def __repr_name__(self) -> str:
        return "Settings"
