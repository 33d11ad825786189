# opsgate — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# `make run DB=postgresql`: two roles. The owner (PG_OWNER_URL, e.g. postgres) creates the
# database, migrates it and creates the app role, which owns nothing and only reads and writes
# rows (docs/operations.md, "Running on PostgreSQL").
DB ?= sqlite
ifeq ($(DB),postgresql)
PG_OWNER_URL ?= postgresql://postgres@127.0.0.1:5432
PG_DATABASE ?= opsgate
export OPSGATE_MIGRATION_DATABASE_URL ?= $(PG_OWNER_URL)/$(PG_DATABASE)
export OPSGATE_DATABASE_URL ?= postgresql://opsgate_app:opsgate-app-dev-password@127.0.0.1:5432/$(PG_DATABASE)
else
export OPSGATE_DATABASE_URL ?= sqlite:///./opsgate.db
endif
# The PostgreSQL half of the suite; `make test` skips it (saying so) when nothing answers here.
export OPSGATE_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml demo/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./demo
	@touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv and install opsgate with its development tools

# `make run LEDGER=1` also starts the demo ledger as its own service (port 8100, ./ledger.db,
# a dev secret generated once into $(LEDGER_SECRET_FILE)) and runs the money-moving actions there.
LEDGER_SECRET_FILE := .opsgate-ledger-secret
.PHONY: run
run: $(STAMP) ## Migrate, seed demo data and serve on http://$(HOST):$(PORT) (SQLite; DB=postgresql: two roles)
ifeq ($(DB),postgresql)
	$(BIN)/python -c 'import sys, psycopg; c = psycopg.connect(sys.argv[1] + "/postgres", autocommit=True); n = sys.argv[2]; c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (n,)).fetchone() or c.execute(f"CREATE DATABASE \"{n}\"")' "$(PG_OWNER_URL)" "$(PG_DATABASE)"
endif
	$(BIN)/opsgate db upgrade
	$(BIN)/opsgate demo seed --tokens --demo-passwords
	@echo
	@echo "opsgate on http://$(HOST):$(PORT)  (console: sign in as alice, rita, olga or audrey with the demo password above)"
	@echo "API docs:   http://$(HOST):$(PORT)/api/v1/docs"
	@echo "More tokens: $(BIN)/opsgate tokens create <username>   e.g. alice, rita, olga, audrey"
	@echo 'Try:        curl -H "Authorization: Bearer <token>" http://$(HOST):$(PORT)/api/v1/actions'
	@echo
ifdef LEDGER
	@test -s $(LEDGER_SECRET_FILE) || (umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(48))' > $(LEDGER_SECRET_FILE))
	$(BIN)/opsgate demo ledger-service init --from $(OPSGATE_DATABASE_URL)
	@echo "ledger service on http://127.0.0.1:8100: payment.reverse and account.adjust_balance run there"
	@export OPSGATE_LEDGER_SECRET="$$(cat $(LEDGER_SECRET_FILE))"; \
	$(BIN)/opsgate demo ledger-service serve --port 8100 & ledger=$$!; \
	trap 'kill $$ledger 2>/dev/null; wait $$ledger 2>/dev/null' EXIT INT TERM; \
	OPSGATE_INTEGRATIONS=demo/src/opsgate_demo/integrations.toml $(BIN)/opsgate serve --host $(HOST) --port $(PORT)
else
	$(BIN)/opsgate serve --host $(HOST) --port $(PORT)
endif

.PHONY: lint
lint: $(STAMP) ## ruff (lint and format check), mypy and the import contracts (lint-imports)
	$(BIN)/ruff check src demo/src tests bench
	$(BIN)/ruff format --check src demo/src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: fmt
fmt: $(STAMP) ## Format and auto-fix
	$(BIN)/ruff format src demo/src tests bench
	$(BIN)/ruff check --fix src demo/src tests bench

# The browser tests (tests/browser) need Chromium: `apt-get install -y chromium`, or
# OPSGATE_CHROMIUM=/path/to/chromium; without it they are skipped, saying so. Their screenshots
# land in test-output/screenshots/. Never `playwright install`: it downloads a browser.
# Independent tests run in parallel workers; a file's tests stay on one worker, so its module
# fixtures (servers, browsers) start once. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 3
.PHONY: test
test: lint ## Lint, then the whole suite on SQLite and PostgreSQL (and in Chromium)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Mixed traffic over 3 processes on PostgreSQL and the ledger service, servers and the ledger
# killed at random, then the invariant checker (tests/soak). The suite runs a 30 s version.
SOAK_SECONDS ?= 1200
.PHONY: soak
soak: $(STAMP) ## Soak: SOAK_SECONDS of traffic with random kills, then check every invariant
	OPSGATE_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest tests/soak -k postgresql -p no:cacheprovider -q
	@cat test-output/soak.json

.PHONY: bench
bench: $(STAMP) ## Benchmarks (governed vs bare action path on SQLite and PostgreSQL)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Schemathesis against the API's OpenAPI schema on SQLite and PostgreSQL (a seeded server per
# database): fails on any 5xx. Over 20,000 cases a database; FUZZ_ARGS='--max-examples 50' is
# a quick look. Reports in test-output/fuzz/<backend>/.
.PHONY: fuzz
fuzz: $(STAMP) ## Fuzz the API from its OpenAPI schema on both databases (no 5xx allowed)
	OPSGATE_BENCH_POSTGRES_URL=$(OPSGATE_TEST_POSTGRES_URL) $(BIN)/python -m bench.fuzz $(FUZZ_ARGS)

.PHONY: clean
clean: ## Remove the virtualenv, caches and the local SQLite database
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache opsgate.db opsgate.db-wal opsgate.db-shm ledger.db ledger.db-wal ledger.db-shm audit-anchors
