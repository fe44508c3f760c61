# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv with the pinned dependencies on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
FULL := $(VENV)/.installed-full

# The simulator alone (what `make demo` needs): no torch.
$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

# Everything the tests exercise: dev tools and the live runtime (torch 2.13.0 CPU, fastapi, uvicorn, redis).
$(FULL): $(BASE)
	$(PY) -m pip install --quiet -e '.[dev,live]'
	touch $(FULL)

demo: $(BASE)
	$(VENV)/bin/odhsim run

test: $(FULL)
	$(VENV)/bin/ruff check odhsim policies runtime tests notebooks
	$(PY) -m pytest -n 2 --durations=15

lint: $(FULL)
	$(VENV)/bin/ruff check odhsim policies runtime tests notebooks
	$(VENV)/bin/ruff format --check odhsim policies runtime tests

bench: $(FULL)
	$(VENV)/bin/odhsim bench --out bench.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
