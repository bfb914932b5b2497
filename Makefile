# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-couchbase test-services lint format bench soak soak-cluster clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# A development run: dev settings (DEBUG on, no secrets needed) unless the environment names
# others. Without any, manage.py and the WSGI app use the production settings, which need secrets.
run: export DJANGO_SETTINGS_MODULE ?= config.settings.dev
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py init_docstore
	$(BIN)/python manage.py collectstatic --noinput -v 0
	bin/serve

# The suite runs on TEST_WORKERS processes (pytest-xdist; `auto` is one per core, 0 runs it in
# this process). pytest exits 5 when it collects no tests; that is not a failure of the suite.
TEST_WORKERS ?= auto
export TEST_WORKERS
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# The whole suite on Couchbase: gocaves on loopback, or the cluster at COUCHBASE_CONNSTR.
test-couchbase: install
	bin/test-couchbase

# Sign-in, sessions, the user cache and the rate limits again on a real Redis and PostgreSQL,
# started on loopback by the run (skipped, saying so, without redis-server or PostgreSQL).
test-services: install
	bin/test-services

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var staticfiles

bench:
	bench/run $(BENCH_ARGS)
	.venv/bin/python bench/keys_and_deposits.py
	.venv/bin/python bench/stats_flush.py

soak:
	bench/soak $(SOAK_ARGS)

# The soak on the production topology: gocaves, Redis, PostgreSQL, two web nodes, two worker nodes,
# node kills and (as root, with iptables) network faults; SOAK_MINUTES long (default 5). Skipped,
# saying so, without gocaves, redis-server or PostgreSQL.
SOAK_MINUTES ?= 5
soak-cluster: install
	SOAK_MINUTES=$(SOAK_MINUTES) SOAK_ARGS="$(SOAK_ARGS)" bench/soak-cluster
