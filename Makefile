# afhost: `make run` serves the product, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export DEBUG ?= true
# Recipes run in bash, with a failing command anywhere in a pipe failing the recipe.
SHELL := bash
.SHELLFLAGS := -o pipefail -ec

.PHONY: run test lint fmt migrations-check worker dev

# The first run installs some 150 packages: it shows each as it is fetched.
$(VENV)/installed: requirements.txt requirements-dev.txt
	@echo "==> Installing the requirements into $(VENV) (the first time takes a few minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install --progress-bar off -r requirements-dev.txt \
	  | awk '/^Collecting / { printf "    %3d  %s\n", ++n, $$2; fflush() } \
	         /^Processing / { k = split($$2, p, "/"); printf "    %3d  %s\n", ++n, p[k]; fflush() } \
	         /^Successfully installed/ { print "    done: " NF - 2 " package(s) installed" }'
	@touch $@

# Serve the product: ASGI server (daphne) and a django-q2 worker together (and the Telegram
# poller when TELEGRAM_BOT_TOKEN is set); a banner says where once it answers. Ctrl-C stops all.
run: $(VENV)/installed
	@echo "==> Migrating the database"
	@$(PY) manage.py migrate --noinput -v 0
	@$(PY) manage.py setup_schedules
	@echo "==> Starting the server on port $(PORT) and a worker"
	@PY=$(PY) PORT=$(PORT) bash scripts/run.sh

# The whole test suite: DATABASE_URL if set, SQLite otherwise.
test: $(VENV)/installed
	DEBUG=false $(PY) -m pytest

dev: $(VENV)/installed
	$(PY) manage.py runserver 127.0.0.1:$(PORT)

worker: $(VENV)/installed
	$(PY) manage.py worker

lint: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(VENV)/installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

migrations-check: $(VENV)/installed
	$(PY) manage.py makemigrations --check --dry-run
