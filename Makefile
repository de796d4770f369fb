# Two entry points for a new user: `make book` builds the study, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs/default

.PHONY: book test env study pilot comparison workshop benchmark clean

# The virtual environment, rebuilt when the requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	touch $(STAMP)

env: $(STAMP)

# The default study: every run of the preset that is not complete yet (an interrupted sweep resumes).
study: env
	$(BIN)/lrstudy -v sweep --preset default --runs-dir $(RUNS)

# The book, from the runs in $(RUNS); warnings and failing cells fail the build.
book: study
	LRSTUDY_RUNS_DIR=$(abspath $(RUNS)) $(BIN)/jupyter-book build . --all --warningiserror --keep-going

test: env
	$(BIN)/python -m pytest

# The pilot sweep behind the methods page; its table is committed in book/data.
pilot: env
	$(BIN)/lrstudy -v sweep --preset pilot --runs-dir runs/pilot
	$(BIN)/lrstudy table --runs-dir runs/pilot --output book/data/pilot_results.csv

# LR against the other knobs (136 runs, about an hour on 2 cores); its table is committed in book/data
# and the book's comparison chapter reads it, so `make book` does not run this sweep.
comparison: env
	$(BIN)/lrstudy -v sweep --preset comparison --runs-dir runs/comparison
	$(BIN)/lrstudy table --runs-dir runs/comparison --output book/data/comparison_results.csv

# Prepare a workshop machine: install everything and pre-run the quick preset once, so the
# environment, the digit caches and the quick runs are ready before participants arrive.
workshop: env
	$(BIN)/lrstudy -v sweep --preset quick --runs-dir runs/quick

benchmark: env
	$(BIN)/python benchmarks/benchmark.py

clean:
	rm -rf _build
