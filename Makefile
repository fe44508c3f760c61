# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv with the pinned dependencies on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,live]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/odhsim run

test: $(STAMP)
	$(VENV)/bin/ruff check odhsim policies runtime tests notebooks
	$(PY) -m pytest -n 2 --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check odhsim policies runtime tests notebooks
	$(VENV)/bin/ruff format --check odhsim policies runtime tests

bench: $(STAMP)
	$(VENV)/bin/odhsim bench --out bench.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
