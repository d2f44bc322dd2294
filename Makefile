# The README's two commands: `make run` and `make test`. Both create the environment first.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTHON ?= python3
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-fast bench bench-preprocess lint ui clean system-packages

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## the whole pipeline on the default corpus, through the Prefect flow
	$(BIN)/lmp run

# Two pytest-xdist lanes of whole modules (tests/conftest.py's scheduler): on 2 cores the suite
# took 16 to 20 min against 27 in one process, much of a test's time being start-ups and waits. More
# cores: make test PYTEST_ARGS="-n 4". One process: make test PYTEST_ARGS="-n 0".
PYTEST_ARGS ?= -n 2
FAST_ARGS ?=

test: $(STAMP) system-packages  ## the test suite (real Ray, MLflow, Prefect, DVC, Great Expectations)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the inner loop: unit and architecture tests, no services (about a minute)
	$(BIN)/pytest $(FAST_ARGS) tests/unit tests/test_architecture.py

system-packages:  ## PostgreSQL and Chromium for the production and browser tests (Debian packages)
	infra/dev/system-packages.sh

bench: $(STAMP)  ## side-by-side measurements -> benchmarks/results.json
	$(BIN)/python -m benchmarks.run

bench-preprocess: $(STAMP)  ## preprocessing at 10 MB, 100 MB, 1 GB vs a naive loop (about 5 minutes)
	$(BIN)/python -m benchmarks.preprocess

lint: $(STAMP)
	$(BIN)/ruff check lm_pipeline flows tests benchmarks

ui: $(STAMP)  ## the MLflow UI on the project's store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:  ## remove pipeline outputs (keeps the MLflow store and the environment)
	rm -rf data models reports checkpoints
