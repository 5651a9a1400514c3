"""The clinical core, pure: knowledge loaded from ``data/`` (value sets, ACR rating tables,
card text) and checked against what the code names; terminology; facts from the record;
ACR variant choice; the decision per order; rendering it as CDS Hooks cards. No I/O beyond
reading the knowledge directory; no Flask, SQLAlchemy or requests."""
