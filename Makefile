# Setup and run targets. Every target creates the virtualenv and installs first, so each
# README command works alone on a fresh machine with Python 3.11 and make.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Tests, lint and benchmarks: every optional feature, since the suite covers them all.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,report,postgresql]"
	@touch $(STAMP)

# `make run` installs only what serving needs: the service, plus the psycopg driver (the
# `postgresql` extra) when VCF_CDS_DATABASE_URL names a PostgreSQL database.
RUN_EXTRA := $(if $(filter postgresql%,$(VCF_CDS_DATABASE_URL)),postgresql)
RUN_STAMP := $(VENV)/.installed-run$(if $(RUN_EXTRA),-$(RUN_EXTRA))
$(RUN_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".$(if $(RUN_EXTRA),[$(RUN_EXTRA)])"
	@touch $(RUN_STAMP)

# Local use: client authentication off unless VCF_CDS_AUTH=on is given (off is logged as a
# warning), bound to this machine only. `make run PORT=9000 HOST=0.0.0.0` changes where it
# listens; CORS_ORIGINS=http://127.0.0.1:8000 lets a browser EHR on that origin (a local CDS
# Hooks sandbox) call it. HOST and PORT are set with `=`, not `?=`: some shells export HOST.
VCF_CDS_AUTH ?= off
HOST = 127.0.0.1
PORT = 8080
CORS_ORIGINS =
run: $(RUN_STAMP)
	VCF_CDS_AUTH=$(VCF_CDS_AUTH) $(if $(CORS_ORIGINS),VCF_CDS_CORS_ORIGINS=$(CORS_ORIGINS)) \
	  $(BIN)/vcf-cds serve --host $(HOST) --port $(PORT)

# An open FHIR R4 server on loopback with the fixture patients (fhir_fixtures/ehr_server.py):
# the FHIR server of a local CDS Hooks sandbox. CORS allows any origin (test data only).
EHR_PORT = 8081
.PHONY: sandbox-ehr
sandbox-ehr: $(RUN_STAMP)
	$(BIN)/python fhir_fixtures/ehr_server.py --host 127.0.0.1 --port $(EHR_PORT)

# Static checks first (import contracts, lint, types): they fail in seconds, the suite in minutes.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check cds_service tests bench scripts fhir_fixtures
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# The fuzz tests of `make test`, with FUZZ_EXAMPLES (default 2000) cases per test instead of 50.
FUZZ_EXAMPLES ?= 2000
.PHONY: fuzz
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_fuzz.py

# The fault-injection suite of `make test` (tests/test_chaos.py), with CHAOS_ROUNDS (default
# 40) requests of each kind per fault instead of 3.
CHAOS_ROUNDS ?= 40
.PHONY: chaos
chaos: $(STAMP)
	CHAOS_ROUNDS=$(CHAOS_ROUNDS) $(BIN)/python -m pytest tests/test_chaos.py

# Load benchmark (not part of test/CI): installs wrk from Debian when missing. The production
# configuration's PostgreSQL is a throwaway cluster the benchmark starts on loopback with
# initdb/pg_ctl (Debian's postgresql package); without them that row is skipped, with a message.
# BENCH_ARGS="--duration 2 --rounds 1" for a quick look; bench/run.py --help for the rest.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || $(SUDO) apt-get install -y wrk || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
