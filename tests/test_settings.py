"""Settings as an operator meets them: ``VCF_CDS_*`` variables, or the mapping given to ``create_app``."""

from __future__ import annotations

import os
import re

import pytest
from conftest import ROOT

from cds_service.settings import Settings, SettingsError

SECRET = "s3cret-" + "x" * 40
PASSWORD_URL = f"postgresql+psycopg://cds:{SECRET}@db.internal:5432/cds"


def test_environment_variables_with_the_prefix(monkeypatch):
    monkeypatch.setenv("VCF_CDS_MAX_BODY_BYTES", "5000")
    monkeypatch.setenv("VCF_CDS_AUTH", "off")
    monkeypatch.setenv("vcf_cds_qcdsm", "site-qcdsm")  # names are not case-sensitive
    monkeypatch.setenv("VCF_CDS_NOT_A_SETTING", "ignored")
    monkeypatch.setenv("MAX_BODY_BYTES", "1")  # without the prefix: not a setting
    settings = Settings.load()
    assert (settings.max_body_bytes, settings.auth, settings.qcdsm) == (5000, False, "site-qcdsm")


def test_a_config_mapping_is_complete_without_the_environment(monkeypatch):
    monkeypatch.setenv("VCF_CDS_MAX_BODY_BYTES", "5000")
    settings = Settings.load({"MAX_JSON_DEPTH": 50, "auth": "off"})
    assert (settings.max_json_depth, settings.auth) == (50, False)
    assert settings.max_body_bytes == 8 * 1024 * 1024  # the default, not the environment's value


def test_defaults_are_the_embedded_local_ones(monkeypatch):
    for name in [n for n in os.environ if n.upper().startswith("VCF_CDS_")]:
        monkeypatch.delenv(name)
    settings = Settings.load()
    assert settings.auth is True and settings.database_url is None and str(settings.data_dir) == "var"
    assert settings.audit_hmac_key is None and settings.explain_link_secret is None


def test_secrets_never_show_in_repr_or_errors():
    settings = Settings.load({"DATABASE_URL": PASSWORD_URL, "AUDIT_HMAC_KEY": SECRET, "EXPLAIN_LINK_SECRET": SECRET})
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    assert settings.database_url is not None and settings.database_url.get_secret_value() == PASSWORD_URL
    with pytest.raises(SettingsError) as err:
        Settings.load({"AUDIT_HMAC_KEY": "short-secret"})
    assert str(err.value) == "setting VCF_CDS_AUDIT_HMAC_KEY: must be at least 32 characters"
    with pytest.raises(SettingsError) as err:
        Settings.load({"DATABASE_URL": PASSWORD_URL, "MAX_BODY_BYTES": "lots"})
    assert "VCF_CDS_MAX_BODY_BYTES" in str(err.value) and SECRET not in str(err.value) and "lots" not in str(err.value)


@pytest.mark.parametrize("key,value,named", [
    ("AUTH", "maybe", "VCF_CDS_AUTH"),
    ("MAX_JSON_DEPTH", "5", "VCF_CDS_MAX_JSON_DEPTH"),
    ("EXPLAIN_LINK_SECRET", "too short", "VCF_CDS_EXPLAIN_LINK_SECRET"),
    ("DATABASE_URL", "", "VCF_CDS_DATABASE_URL"),
    ("FHIR_ALLOWLIST", "http://ehr.example.org/fhir", "VCF_CDS_FHIR_ALLOWLIST"),
])
def test_a_bad_value_is_refused_naming_the_setting(monkeypatch, key, value, named):
    with pytest.raises(SettingsError, match=f"^setting {named}: "):
        Settings.load({key: value})
    monkeypatch.setenv(f"VCF_CDS_{key}", value)
    with pytest.raises(SettingsError, match=f"^setting {named}: "):
        Settings.load()


def test_settings_are_frozen():
    settings = Settings.load({})
    with pytest.raises(ValueError):
        settings.auth = False  # type: ignore[misc]


def test_the_readme_table_lists_every_setting():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}
