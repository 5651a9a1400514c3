"""Service settings: from a mapping passed to ``create_app``, else ``VCF_CDS_*`` variables.

Keys are the field names in upper case (``KNOWLEDGE_DIR``); environment variables add the
``VCF_CDS_`` prefix (``VCF_CDS_KNOWLEDGE_DIR``). Invalid values raise
:class:`SettingsError` naming the setting, at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    data_dir: Path = Field(Path("var"), description="embedded database and generated audit key; relative to the working directory")
    database_url: str | None = Field(None, min_length=1, repr=False, description="SQLAlchemy URL; default: SQLite file in DATA_DIR")
    audit_hmac_key: str | None = Field(None, min_length=32, repr=False, description="secret keying the patient id hash in audit records")
    audit_retention_days: int = Field(365, ge=1, description="vcf-cds purge deletes audit records and feedback older than this")

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
            name = ENV_PREFIX + ".".join(str(p) for p in err["loc"]).upper()
            raise SettingsError(f"setting {name}: {err['msg']}") from None
