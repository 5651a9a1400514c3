"""Database layer: migrations, settings, the audit key and the shared JWT replay cache."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import TEST_APP_CONFIG, make_app
from dbsupport import run_in_processes
from sqlalchemy import inspect, text

from cds_service.app import state_of
from cds_service.ops.cli import main
from cds_service.settings import Settings, SettingsError
from cds_service.store.audit import CallRecord, TokenReplayed, write_record
from cds_service.store.db import Database, DatabaseError, DatabaseReplayCache, head_revision
from cds_service.store.tables import Base

TABLES = {"audit_call", "audit_order", "audit_card", "feedback", "jwt_replay"}


# ------------------------------------------------------------------------ migrations


def test_app_start_leaves_the_schema_at_the_newest_migration(database):
    assert database.revision() == head_revision()
    assert set(inspect(database.engine).get_table_names()) >= TABLES
    database.check_schema()


def test_migrated_schema_matches_the_models(database):
    with database.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == []


def test_upgrade_twice_changes_nothing(database):
    database.upgrade()
    database.upgrade()
    assert database.revision() == head_revision()


def test_embedded_database_is_a_wal_sqlite_file_in_the_data_dir(tmp_path):
    database = state_of(make_app()).database
    assert database.embedded and database.backend == "sqlite"
    assert (tmp_path / "var" / "vcf-cds.sqlite3").is_file()
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    with database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_start_up_migration_waits_out_another_process_holding_the_sqlite_file(tmp_path):
    # Two services starting on one DATA_DIR: the second migrates once the first lets go of
    # the file, though that takes longer than a request's database step may wait.
    import sqlite3
    import threading

    data_dir = tmp_path / "shared"
    data_dir.mkdir(mode=0o700)
    holder = sqlite3.connect(data_dir / "vcf-cds.sqlite3", check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, holder.commit)
    release.start()
    try:
        app = make_app(DATA_DIR=str(data_dir), DB_TIMEOUT_SECONDS=0.5)
        assert state_of(app).database.revision() == head_revision()
    finally:
        release.join()
        holder.close()


def test_db_upgrade_command_migrates_a_configured_database(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'ops.sqlite3'}"
    monkeypatch.setenv("VCF_CDS_DATABASE_URL", url)
    assert main(["db", "upgrade"]) == 0
    assert f"none -> {head_revision()}" in capsys.readouterr().out
    db = Database.from_settings(Settings.load({"DATABASE_URL": url}))
    assert db.revision() == head_revision()
    db.dispose()


def test_commands_refuse_a_configured_database_that_was_never_migrated(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VCF_CDS_DATABASE_URL", f"sqlite:///{tmp_path / 'new.sqlite3'}")
    monkeypatch.setenv("VCF_CDS_AUDIT_HMAC_KEY", "k" * 32)
    assert main(["report"]) == 2
    assert "vcf-cds db upgrade" in capsys.readouterr().err


def test_app_with_a_configured_database_behind_the_code_still_starts(tmp_path, caplog):
    db_file = tmp_path / "old.sqlite3"
    app = make_app(DATABASE_URL=f"sqlite:///{db_file}", AUDIT_HMAC_KEY="k" * 32)
    assert any("vcf-cds db upgrade" in r.getMessage() for r in caplog.records)
    assert app.test_client().get("/cds-services").status_code == 200
    state_of(app).database.dispose()


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize("url,message", [
    ("not a url at all", "not a SQLAlchemy database URL"),
    ("mysql+pymysql://u:hunter2@db/x", "backend 'mysql' is not supported"),
    ("postgresql+psycopg2://u:hunter2@db/x", "use the psycopg driver"),
])
def test_unusable_database_url_is_refused_without_echoing_it(url, message):
    with pytest.raises(SettingsError) as err:
        make_app(DATABASE_URL=url, AUDIT_HMAC_KEY="k" * 32)
    assert message in str(err.value)
    assert "hunter2" not in str(err.value)
    assert "VCF_CDS_DATABASE_URL" in str(err.value)


def test_configured_database_needs_a_configured_audit_key(tmp_path):
    with pytest.raises(SettingsError, match="VCF_CDS_AUDIT_HMAC_KEY"):
        make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")


def test_short_audit_key_is_refused():
    with pytest.raises(SettingsError, match="VCF_CDS_AUDIT_HMAC_KEY"):
        make_app(AUDIT_HMAC_KEY="short")


def test_embedded_audit_key_is_generated_once_private_and_reused(tmp_path):
    first = make_app()
    key_file = tmp_path / "var" / "audit-hmac.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = make_app()
    assert state_of(first).audit.key == state_of(second).audit.key
    assert len(state_of(first).audit.key) >= 64
    other = make_app(DATA_DIR=str(tmp_path / "elsewhere"))
    assert state_of(other).audit.key != state_of(first).audit.key


def test_audit_key_file_readable_by_others_is_refused(tmp_path):
    make_app()
    key_file = tmp_path / "var" / "audit-hmac.key"
    os.chmod(key_file, 0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        make_app()


def test_tests_never_use_the_working_directory_data_dir():
    assert TEST_APP_CONFIG["DATA_DIR"] != "var"
    assert Settings.load(TEST_APP_CONFIG).data_dir.is_absolute()


# ----------------------------------------------------------------------- replay cache


def test_replay_cache_tells_first_use_from_replay(database):
    cache = DatabaseReplayCache(database)
    later = time.time() + 300
    assert cache.remember("https://ehr.example.org|jti-1", later) is True
    assert cache.remember("https://ehr.example.org|jti-1", later) is False
    assert cache.remember("https://ehr.example.org|jti-1", later + 60) is False
    # The same jti from another issuer is another token.
    assert cache.remember("https://other.example.org|jti-1", later) is True


def test_replay_cache_forgets_expired_entries(database):
    cache = DatabaseReplayCache(database)
    assert cache.remember("iss|old", time.time() - 1) is True
    # Expired: may be recorded again (the entry is replaced, now with a future expiry).
    assert cache.remember("iss|old", time.time() + 300) is True
    assert cache.remember("iss|old", time.time() + 300) is False
    assert cache.remember("iss|gone", time.time() - 10) is True
    assert cache.purge_expired() == 1
    assert cache.remember("iss|old", time.time() + 300) is False


def test_replay_cache_keys_of_any_length(database):
    cache = DatabaseReplayCache(database)
    long_key = "https://ehr.example.org/" + "x" * 5000
    assert cache.remember(long_key, time.time() + 60) is True
    assert cache.remember(long_key, time.time() + 60) is False
    assert cache.remember(long_key[:-1], time.time() + 60) is True


def test_replay_cache_admits_a_token_once_across_processes(database):
    """Several workers see the same token at the same moment: exactly one accepts it."""
    database.dispose()

    def remember(key: str) -> bool:
        database.engine.dispose(close=False)  # never reuse the parent's pooled connections
        return DatabaseReplayCache(database).remember(key, time.time() + 300)

    results = run_in_processes(remember, ["iss|raced"] * 4)
    assert sorted(results) == [False, False, False, True]


def test_racing_calls_with_one_jti_keep_one_audit_record(database):
    """Workers writing their calls' audit records with the same jti at the same moment: one
    transaction wins, the others are refused as replays and leave nothing behind."""
    database.dispose()

    def write(n: int) -> bool:
        database.engine.dispose(close=False)  # never reuse the parent's pooled connections
        call = {"called_at": datetime.now(UTC), "service_id": "vcf-order-select", "hook_instance": f"call-{n}",
                "patient_hmac": None, "status": 200, "issue_code": None, "latency_ms": 1.0,
                "knowledge_version": "test"}
        try:
            write_record(database, CallRecord(call), ("iss|raced", time.time() + 300))
        except TokenReplayed:
            return False
        return True

    assert sorted(run_in_processes(write, [0, 1, 2, 3])) == [False, False, False, True]
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_call")).scalar_one() == 1
    assert DatabaseReplayCache(database).remember("iss|raced", time.time() + 300) is False


def test_replay_cache_refuses_when_the_database_is_down():
    settings = Settings.load({"DATABASE_URL": "postgresql+psycopg://u:p@127.0.0.1:1/none", "AUDIT_HMAC_KEY": "k" * 32})
    cache = DatabaseReplayCache(Database.from_settings(settings))
    from sqlalchemy.exc import SQLAlchemyError

    with pytest.raises(SQLAlchemyError):
        cache.remember("iss|x", time.time() + 60)


def test_schema_is_private_to_each_test(database):
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_call")).scalar_one() == 0


def test_check_schema_names_the_command_to_run(database):
    with database.transaction() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    with pytest.raises(DatabaseError, match="vcf-cds db upgrade"):
        database.check_schema()
    with database.transaction() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()})
