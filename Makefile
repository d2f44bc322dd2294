# The README's two commands: `make run` and `make test`. Both create the environment first.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTHON ?= python3
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-fast bench bench-filter bench-preprocess lint ui docs clean system-packages

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## the whole pipeline on the default corpus, through the Prefect flow
	$(BIN)/lmp run

# Two pytest-xdist lanes of whole modules (tests/conftest.py's scheduler): on 2 cores the suite
# took 16 to 20 min against 27 in one process when it was smaller, much of a test's time being
# start-ups and waits. More cores: make test PYTEST_ARGS="-n 4". One process: PYTEST_ARGS="-n 0".
# The fast tier in two lanes too: about 3 min against 6 in one process on a 2-core AMD EPYC.
PYTEST_ARGS ?= -n 2
FAST_ARGS ?= -n 2

test: $(STAMP) system-packages  ## the test suite (real Ray, MLflow, Prefect, DVC, Great Expectations)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the inner loop: unit and architecture tests, no services (about 1.5 to 3 minutes on 2 cores)
	$(BIN)/pytest $(FAST_ARGS) tests/unit tests/test_architecture.py

system-packages:  ## PostgreSQL and Chromium for the production and browser tests (Debian packages)
	infra/dev/system-packages.sh

bench: $(STAMP)  ## side-by-side measurements -> benchmarks/results.json
	$(BIN)/python -m benchmarks.run

bench-filter: $(STAMP)  ## the filter stage vs datatrove at 100 MB, its memory at 1 GB (about 30 minutes)
	$(BIN)/python -m benchmarks.filter

bench-preprocess: $(STAMP)  ## preprocessing at 10 MB, 100 MB, 1 GB vs a naive loop (about 5 minutes)
	$(BIN)/python -m benchmarks.preprocess

lint: $(STAMP)
	$(BIN)/ruff check lm_pipeline flows tests benchmarks

ui: $(STAMP)  ## the MLflow UI on the configured store (mlflow.tracking_uri, or MLFLOW_TRACKING_URI)
	@uri=$$($(BIN)/python -c "from lm_pipeline import tracking; from lm_pipeline.config import load_config; \
	print(tracking.tracking_uri(load_config()))") && case "$$uri" in \
	  http://*|https://*) echo "the tracking server serves its own UI: $$uri" ;; \
	  *) $(BIN)/mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port 5000 ;; esac

docs: $(STAMP)  ## the documentation site (docs/, mkdocs.yml) into site/, links and pages checked
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:  ## remove pipeline outputs (keeps the MLflow store and the environment)
	rm -rf data models reports checkpoints
