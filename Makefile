# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
# Each creates .venv with pip if it is missing and re-installs only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_ARGS ?=

.PHONY: setup demo demo-quick test test-fast lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# the build backend itself, for tests/test_package.py (builds the wheel without network, --no-build-isolation);
	# a fresh venv of Python 3.11 bundles setuptools 65, too old for this pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check 'setuptools>=77'
	# torchxrayvision ships real public metadata (CheXpert, RSNA, SIIM, OpenI) used by tests;
	# --no-deps because it would pull a torchvision that breaks this torch. It is never imported.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torchxrayvision==1.5.7
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/reclf demo $(DEMO_ARGS)

demo-quick: setup
	$(VENV)/bin/reclf demo --quick $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# mypy on src/reclf, settings in pyproject.toml ([tool.mypy]); a warm cache makes it a few seconds
typecheck: setup
	$(PY) -m mypy

test: setup lint typecheck
	$(PY) -m pytest -q

# the inner loop: everything but the tests marked `slow` (end-to-end training, DDP, presets)
test-fast: setup lint typecheck
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) out runs .pytest_cache .mypy_cache
