# afhost: `make run` serves the product, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export DEBUG ?= true

.PHONY: run test lint fmt migrations-check worker dev

$(VENV)/installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Serve the product: ASGI server (daphne) and a django-q2 worker together; Ctrl-C stops both.
run: $(VENV)/installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py setup_schedules
	@echo "Local API key (Authorization: Bearer ...):"
	@$(PY) manage.py ensure_dev_api_key
	@echo "Serving on http://127.0.0.1:$(PORT)/ (admin at /admin/, Responses API at /v1/responses)"
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

fmt: $(VENV)/installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

migrations-check: $(VENV)/installed
	$(PY) manage.py makemigrations --check --dry-run
