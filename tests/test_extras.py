"""Optional features without their extra installed: a clear error naming the extra, no traceback."""

from __future__ import annotations

import sys

import pytest
from conftest import make_app
from dbsupport import TEST_HMAC_KEY

from cds_service.extras import MissingExtraError
from cds_service.ops.cli import main as cli_main
from cds_service.store.report import build_report, render_html, render_table

PG_URL = "postgresql+psycopg://cds:pw@127.0.0.1:5432/cds"


@pytest.fixture()
def without(monkeypatch):
    """``without("psycopg")``: the module cannot be imported, as when its extra is not installed."""
    return lambda module: monkeypatch.setitem(sys.modules, module, None)


def test_html_report_without_the_report_extra_names_it(database, without):
    report = build_report(database)
    assert "appropriate" in render_table(report)  # the text report needs no extra
    without("matplotlib")
    with pytest.raises(MissingExtraError) as err:
        render_html(report)
    assert err.value.extra == "report"
    assert "pip install 'vcf-cds-hooks[report]'" in str(err.value)


def test_postgresql_without_the_postgresql_extra_names_it(without, monkeypatch, capsys):
    without("psycopg")
    with pytest.raises(MissingExtraError, match=r"PostgreSQL .*pip install 'vcf-cds-hooks\[postgresql\]'"):
        make_app(DATABASE_URL=PG_URL, AUDIT_HMAC_KEY=TEST_HMAC_KEY)
    monkeypatch.setenv("VCF_CDS_DATABASE_URL", PG_URL)
    assert cli_main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert "'postgresql' extra" in err and "pw@" not in err and "Traceback" not in err
