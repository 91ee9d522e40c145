# Two entry points for a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export MPLBACKEND := Agg

.PHONY: install quickstart test test-fast benchmark notebooks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev,notebooks,export]"
	touch $(STAMP)

install: $(STAMP)

# Trains a baseline and a MASS ResNet-20 with the same schedule and prints their comparison.
quickstart: $(STAMP)
	$(BIN)/python -m mass_lightning.cli.quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15

benchmark: $(STAMP)
	$(BIN)/python -m pip install -e ".[benchmarks]"
	$(BIN)/python benchmarks/speed.py

# Rebuilds and runs the notebooks, storing their outputs (the tests check them against a fresh run).
notebooks: $(STAMP)
	$(BIN)/python notebooks/make_notebooks.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow"

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache
