# Harvest: the two front-door commands are `make run` (demo) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: run stop status test lint format bench compose-env airflow-env clean

# The venv is (re)built whenever the lock or the dev requirements change.
$(STAMP): requirements.lock requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-dev.txt
	touch $(STAMP)

## run: set everything up, start the local Airflow + Celery stack, run Harvest on the demo, print the summary
run: $(STAMP)
	$(PY) -m scripts.demo

## stop: stop exactly the processes `make run` started (by pid)
stop:
	@if [ -x $(PY) ]; then $(PY) -m scripts.stack stop; else echo "nothing to stop"; fi

status: $(STAMP)
	$(PY) -m scripts.stack status

## test: set everything up, then lint, type-check and run the whole test suite (end to end included);
## ARGS narrows it, e.g. make test ARGS=tests/cluster/test_faults.py
test: $(STAMP) lint $(CHROMIUM)
	$(PY) -m pytest $(ARGS)

# The browser tests (tests/e2e/test_ui.py) drive Debian's chromium through Playwright. Installed by
# package name when missing, as bench/nginx.py installs nginx: non-interactive, as root (or with
# sudo -n), `apt-get update` only if the first install fails.
$(CHROMIUM):
	@echo "chromium not found: installing Debian's chromium package with apt-get"
	@SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); export DEBIAN_FRONTEND=noninteractive; \
	$$SUDO apt-get install -y --no-install-recommends chromium \
		|| { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }
	@test -x $(CHROMIUM) || { echo "chromium could not be installed: install it (apt-get install chromium) and retry"; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## bench: the end-to-end benchmark (not part of `make test`); ARGS="--quick" for a short run
bench: $(STAMP)
	$(PY) -m bench.e2e $(ARGS)

## compose-env: generate the git-ignored .env (secrets) that docker-compose.yaml reads
compose-env:
	python3 scripts/compose_env.py

## airflow-env: print the exports that point the `airflow` CLI at the local stack
airflow-env: $(STAMP)
	@$(PY) -m scripts.stack env

clean: stop
	rm -rf .airflow data/storage data/work
