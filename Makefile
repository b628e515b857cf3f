# Set-up and the two everyday commands. Both create .venv when it is missing.
#   make demo   install the package and run the main job (offline, on sklearn's digits)
#   make test   install with the dev extras and run the default test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -c constraints.txt
PYTEST_ARGS ?=

.PHONY: demo test test-slow install install-dev lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Installs are stamped so repeated runs are instant; they redo themselves when the
# dependency files change.
$(VENV)/.installed: $(PY) pyproject.toml constraints.txt
	$(PIP) -q torch
	$(PIP) -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-peers.txt
	$(PIP) -q -e ".[dev]"
	$(PIP) -q --no-deps -r requirements-peers.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/fisherscope demo

test: install-dev
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install-dev
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install-dev
	$(PY) -m ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache build dist
